"""Plain Python contextual anomaly detector (the CAD-OSE algorithm NAB ships as contextOSE), one series.

Written from the algorithm's description for clarity, with dicts and sets; the numba kernel in
``models.kernels.context`` must give the same scores. Choices where the published Python 2 code
depends on its interpreter or has no limit: contexts are visited in creation order (the original
walks a dict of dicts), active contexts with equal activation counts are ranked by context id (the
original ranks by the Python 2 hash of their facts), and memory is capped (no new context or
semi-context once a cap is reached). The value range comes from the first ``calib`` values, which
score 0 (NAB's probationary rows); the original reads the whole file's min and max up front.
"""

from __future__ import annotations

import math
from fractions import Fraction

Facts = tuple[int, ...]


def sensor_facts(value: float, lo: float, step: float, bits: int, max_bits: int) -> Facts:
    """Binary code of the value's bin as facts 2k + bit; above the range more bits, below one fact."""
    b = math.floor((value - lo) / step)
    if b < 0:
        return (2 * max_bits,)
    b = min(b, (1 << max_bits) - 1)
    nb = max(bits, int(b).bit_length())
    return tuple(2 * k + ((int(b) >> k) & 1) for k in range(nb))


class ContextOSERef:
    def __init__(
        self,
        lo: float,
        hi: float,
        rest: int,
        threshold: float = 0.75,
        max_left: int = 7,
        max_active: int = 15,
        bits: int = 3,
        max_bits: int = 6,
        max_contexts: int = 1 << 30,
        max_semis: int = 1 << 30,
        max_right: int = 1 << 30,
    ) -> None:
        self.bits, self.max_bits = bits, max_bits
        top = 2.0**bits - 1.0
        self.lo, self.step = lo, (hi - lo if hi > lo else top) / top
        self.rest, self.threshold = rest, threshold
        self.max_left, self.max_active = max_left, max_active
        self.max_contexts, self.max_semis, self.max_right = max_contexts, max_semis, max_right
        self.neuron0 = 2 * max_bits + 1  # fact id of context 0 as a neuron
        self.left_group: Facts = ()
        self.predicted: set[int] = set()
        self.since_high = 0  # scores appended since the last one >= threshold (the start counts)
        self.semi: list[list[Facts]] = [[], []]  # facts of each semi-context, left and right
        self.index: list[dict[Facts, int]] = [{}, {}]
        self.crossed: list[list[Facts]] = [[], []]  # its facts found in the last crossing
        self.ctx_of: dict[tuple[int, int], int] = {}
        # per context: left semi, right semi, seen, predicted weight, activations, zero level
        self.ctx: list[list[int]] = []
        self.new_ctx = 0  # the original's ``False``, which equals context id 0

    def _add(self, left: Facts, right: Facts, zero: bool) -> bool:
        ls, rs = self.index[0].get(left), self.index[1].get(right)
        cid = self.ctx_of.get((ls, rs)) if ls is not None and rs is not None else None
        if cid is not None:
            if zero:
                self.ctx[cid][5] = 1
            return False
        if (
            len(self.ctx) >= self.max_contexts
            or (ls is None and len(self.semi[0]) >= self.max_semis)
            or (rs is None and len(self.semi[1]) >= self.max_right)
        ):
            return False
        if ls is None:
            ls = self.index[0][left] = len(self.semi[0])
            self.semi[0].append(left)
            self.crossed[0].append(())
        if rs is None:
            rs = self.index[1][right] = len(self.semi[1])
            self.semi[1].append(right)
            self.crossed[1].append(())
        cid = self.ctx_of[ls, rs] = len(self.ctx)
        self.ctx.append([ls, rs, 0, 0, 0, int(zero)])
        if zero:
            self.new_ctx = cid
        return True

    def _cross(self, side: int, facts: Facts) -> None:
        fs = set(facts)
        for sid, semi in enumerate(self.semi[side]):
            self.crossed[side][sid] = tuple(f for f in semi if f in fs)

    def _step(self, sens: Facts) -> tuple[set[int], float, float]:
        pot: set[tuple[Facts, Facts]] = set()
        new_flag = False
        if self.left_group:
            pot.add((self.left_group, sens))
            new_flag = self._add(self.left_group, sens, True)
        # Left semi-contexts keep their crossing with the previous left group; right ones are
        # crossed with the new sensor facts.
        self._cross(1, sens)
        active: list[tuple[int, int]] = []
        selected = 0
        new_pot: list[tuple[Facts, Facts]] = []
        for cid, c in enumerate(self.ctx):
            ls, rs = c[0], c[1]
            l_hit, r_hit = self.crossed[0][ls], self.crossed[1][rs]
            if not l_hit or cid == self.new_ctx:
                continue
            r_len = len(self.semi[1][rs])
            if len(l_hit) == len(self.semi[0][ls]):
                selected += 1
                c[2] += r_len
                if r_hit:
                    c[3] += len(r_hit)
                    if len(r_hit) == r_len:
                        c[4] += 1
                        active.append((c[4], cid))
                        continue  # a fully matched context is not grown
            if c[5] and new_flag and r_hit and len(l_hit) <= self.max_left:
                new_pot.append((l_hit, r_hit))
        self.new_ctx = 0
        pot.update(new_pot)
        a1 = len(active) / selected if selected else 0.0
        top = sorted(active)[-self.max_active :] if self.max_active else []
        neurons = sorted(self.neuron0 + cid for _n, cid in top)
        self.left_group = tuple(sorted(sens)) + tuple(neurons)
        added = sum(self._add(left, right, False) for left, right in new_pot)
        self._cross(0, self.left_group)
        best = Fraction(0)
        pred: set[int] = set()
        for c in self.ctx:
            ls = c[0]
            if len(self.crossed[0][ls]) != len(self.semi[0][ls]):
                continue
            w = Fraction(c[3], c[2]) if c[2] > 0 else Fraction(0)
            if w > best:
                best, pred = w, set(self.semi[1][c[1]])
            elif w == best:
                pred.update(self.semi[1][c[1]])
        added += 1 if new_flag else 0
        a2 = added / len(pot) if new_flag and pot else 0.0
        return pred, a1, a2

    def score_one(self, value: float) -> float:
        sens = sensor_facts(value, self.lo, self.step, self.bits, self.max_bits)
        error = any(f not in self.predicted for f in sens)
        self.predicted, a1, a2 = self._step(sens)
        current = (1.0 - a1 + a2) / 2.0 if error else 0.0
        out = current if self.since_high >= self.rest else 0.0
        self.since_high = 0 if current >= self.threshold else self.since_high + 1
        return out


def context_ose_ref(
    x: list[float], calib: int, rest: int, margin: float = 0.0, **kw: int | float
) -> list[float]:
    """Scores of one series: the first ``calib`` values set the range and score 0, then replay."""
    if not x:
        return []
    c = min(max(calib, 1), len(x))
    a, b = min(x[:c]), max(x[:c])
    span = b - a
    det = ContextOSERef(a - margin * span, b + margin * span, rest, **kw)  # type: ignore[arg-type]
    out = [det.score_one(v) for v in x]
    return [0.0] * c + out[c:]
