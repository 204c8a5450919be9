"""Contextual anomaly detector per slot: the CAD-OSE context operator (NAB's contextOSE) in fixed arrays.

Each value is binned (3 bits over the calibrated range) into sensor facts. A context is a pair of
semi-contexts: a left set of facts (the previous sensor facts plus the "neurons", the contexts
active one step earlier) and a right set (the sensor facts that followed). Contexts whose left side
matches predict their right side; the anomaly score is high when few selected contexts became
active and many new contexts had to be learned. Every slot keeps its own contexts in capped arrays
with open-addressing hash tables, so one call runs the whole fleet and the state is plain bytes.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np
from numba import njit

from core import kernel_flags
from models.state import SlotState, SlotStateful, as_batch

_MASK = (1 << 61) - 1
_FNV = 1469598103934665603
_PRIME = 1099511628211


@njit(cache=kernel_flags.CACHE, fastmath=kernel_flags.FASTMATH)
def _hash(facts: np.ndarray, n: int) -> int:
    h = _FNV
    for k in range(n):
        h = ((h ^ (int(facts[k]) + 1)) * _PRIME) & _MASK
    return h


@njit(cache=kernel_flags.CACHE, fastmath=kernel_flags.FASTMATH)
def _find_semi(
    tab: np.ndarray,
    hashes: np.ndarray,
    facts: np.ndarray,
    lens: np.ndarray,
    key: np.ndarray,
    n: int,
    h: int,
) -> tuple[int, int]:
    """(semi id or -1, table position where it is or would go)."""
    mask = tab.shape[0] - 1
    pos = h & mask
    while True:
        sid = tab[pos]
        if sid < 0:
            return -1, pos
        if hashes[sid] == h and lens[sid] == n:
            same = True
            for k in range(n):
                if facts[sid, k] != key[k]:
                    same = False
                    break
            if same:
                return sid, pos
        pos = (pos + 1) & mask


@njit(cache=kernel_flags.CACHE, fastmath=kernel_flags.FASTMATH)
def _find_ctx(
    tab: np.ndarray, ctx_l: np.ndarray, ctx_r: np.ndarray, ls: int, rs: int
) -> tuple[int, int]:
    mask = tab.shape[0] - 1
    pos = ((int(ls) * 1000003 + int(rs)) * 2654435761) & mask
    while True:
        cid = tab[pos]
        if cid < 0 or (ctx_l[cid] == ls and ctx_r[cid] == rs):
            return cid, pos
        pos = (pos + 1) & mask


@njit(cache=kernel_flags.CACHE, fastmath=kernel_flags.FASTMATH)
def _add_context(
    s: int,
    left: np.ndarray,
    n_left: int,
    right: np.ndarray,
    n_right: int,
    zero: bool,
    l_facts: np.ndarray, l_len: np.ndarray, l_hash: np.ndarray, l_tab: np.ndarray, n_l: np.ndarray,
    r_facts: np.ndarray, r_len: np.ndarray, r_hash: np.ndarray, r_tab: np.ndarray, n_r: np.ndarray,
    ctx_l: np.ndarray, ctx_r: np.ndarray, ctx_seen: np.ndarray, ctx_hit: np.ndarray,
    ctx_act: np.ndarray, ctx_zero: np.ndarray, c_tab: np.ndarray, n_ctx: np.ndarray,
) -> int:  # fmt: skip
    """Context id if a new one was stored, -1 if it existed (or no room is left)."""
    hl = _hash(left, n_left)
    hr = _hash(right, n_right)
    ls, lpos = _find_semi(l_tab[s], l_hash[s], l_facts[s], l_len[s], left, n_left, hl)
    rs, rpos = _find_semi(r_tab[s], r_hash[s], r_facts[s], r_len[s], right, n_right, hr)
    if ls >= 0 and rs >= 0:
        cid, cpos = _find_ctx(c_tab[s], ctx_l[s], ctx_r[s], ls, rs)
        if cid >= 0:
            if zero:
                ctx_zero[s, cid] = 1
            return -1
    full_l = ls < 0 and n_l[s] >= l_len.shape[1]
    if n_ctx[s] >= ctx_l.shape[1] or full_l or (rs < 0 and n_r[s] >= r_len.shape[1]):
        return -1
    if ls < 0:
        ls = n_l[s]
        n_l[s] = ls + 1
        l_tab[s, lpos] = ls
        l_hash[s, ls] = hl
        l_len[s, ls] = n_left
        l_facts[s, ls, :n_left] = left[:n_left]
    if rs < 0:
        rs = n_r[s]
        n_r[s] = rs + 1
        r_tab[s, rpos] = rs
        r_hash[s, rs] = hr
        r_len[s, rs] = n_right
        r_facts[s, rs, :n_right] = right[:n_right]
    cid, cpos = _find_ctx(c_tab[s], ctx_l[s], ctx_r[s], ls, rs)
    cid = n_ctx[s]
    n_ctx[s] = cid + 1
    c_tab[s, cpos] = cid
    ctx_l[s, cid] = ls
    ctx_r[s, cid] = rs
    ctx_seen[s, cid] = 0
    ctx_hit[s, cid] = 0
    ctx_act[s, cid] = 0
    ctx_zero[s, cid] = 1 if zero else 0
    return cid


@njit(cache=kernel_flags.CACHE, fastmath=kernel_flags.FASTMATH)
def _crossed(facts: np.ndarray, n: int, mask: np.ndarray, out: np.ndarray) -> int:
    """The facts of a semi-context present in ``mask``, in order, into ``out``; returns how many."""
    m = 0
    for k in range(n):
        f = facts[k]
        if mask[f]:
            out[m] = f
            m += 1
    return m


@njit(cache=kernel_flags.CACHE, fastmath=kernel_flags.EXACT_MATH)
def _context_step(
    s: int,
    v: float,
    bits: int, max_bits: int, max_left: int, max_active: int, rest: int, threshold: float,
    lo: np.ndarray, step: np.ndarray, left_group: np.ndarray, lg_len: np.ndarray,
    predicted: np.ndarray, since_high: np.ndarray,
    l_facts: np.ndarray, l_len: np.ndarray, l_hash: np.ndarray, l_tab: np.ndarray, n_l: np.ndarray,
    l_hit: np.ndarray,
    r_facts: np.ndarray, r_len: np.ndarray, r_hash: np.ndarray, r_tab: np.ndarray, n_r: np.ndarray,
    ctx_l: np.ndarray, ctx_r: np.ndarray, ctx_seen: np.ndarray, ctx_hit: np.ndarray,
    ctx_act: np.ndarray, ctx_zero: np.ndarray, c_tab: np.ndarray, n_ctx: np.ndarray,
    sens: np.ndarray, smask: np.ndarray, lmask: np.ndarray, r_hit: np.ndarray,
    pot_l: np.ndarray, pot_ll: np.ndarray, pot_r: np.ndarray, pot_rl: np.ndarray,
    pot_hash: np.ndarray, act_key: np.ndarray, new_lg: np.ndarray,
) -> float:  # fmt: skip
    # Sensor facts: bit k of the value's bin is fact 2k + bit; below the range, one fact of its own.
    q = (v - lo[s]) / step[s]
    if q < 0.0:
        sens[0] = 2 * max_bits
        ns = 1
    else:
        b = math.floor(min(q, float((1 << max_bits) - 1)))
        nb = bits
        while (b >> nb) > 0:
            nb += 1
        for k in range(nb):
            sens[k] = 2 * k + ((b >> k) & 1)
        ns = nb
    error = False
    for k in range(ns):
        if not predicted[s, sens[k]]:
            error = True
    neuron0 = 2 * max_bits + 1
    npot = 0
    new_flag = False
    new_ctx = 0  # the original's "no new context" is False, which equals context id 0
    ng = lg_len[s]
    if ng > 0:
        pot_hash[npot] = ((_hash(left_group[s], ng) * 1000003) ^ _hash(sens, ns)) & _MASK
        npot += 1
        cid = _add_context(
            s, left_group[s], ng, sens, ns, True,
            l_facts, l_len, l_hash, l_tab, n_l, r_facts, r_len, r_hash, r_tab, n_r,
            ctx_l, ctx_r, ctx_seen, ctx_hit, ctx_act, ctx_zero, c_tab, n_ctx,
        )  # fmt: skip
        if cid >= 0:
            new_flag = True
            new_ctx = cid
    # Right semi-contexts crossed with the new sensor facts; left ones keep the previous crossing.
    for k in range(ns):
        smask[sens[k]] = 1
    for rs in range(n_r[s]):
        c = 0
        for k in range(r_len[s, rs]):
            c += smask[r_facts[s, rs, k]]
        r_hit[rs] = c
    for k in range(ng):
        lmask[left_group[s, k]] = 1
    selected = 0
    nact = 0
    nnew = 0
    for cid in range(n_ctx[s]):
        ls = ctx_l[s, cid]
        lh = l_hit[s, ls]
        if lh == 0 or cid == new_ctx:
            continue
        rs = ctx_r[s, cid]
        rh = r_hit[rs]
        rl = r_len[s, rs]
        if lh == l_len[s, ls]:
            selected += 1
            ctx_seen[s, cid] += rl
            if rh > 0:
                ctx_hit[s, cid] += rh
                if rh == rl:
                    ctx_act[s, cid] += 1
                    act_key[nact] = (ctx_act[s, cid] << 32) + cid
                    nact += 1
                    continue  # a fully matched context is not grown
        if ctx_zero[s, cid] and new_flag and rh > 0 and lh <= max_left:
            a = _crossed(l_facts[s, ls], l_len[s, ls], lmask, pot_l[nnew])
            b2 = _crossed(r_facts[s, rs], rl, smask, pot_r[nnew])
            pot_ll[nnew] = a
            pot_rl[nnew] = b2
            pot_hash[npot] = ((_hash(pot_l[nnew], a) * 1000003) ^ _hash(pot_r[nnew], b2)) & _MASK
            npot += 1
            nnew += 1
    for k in range(ng):
        lmask[left_group[s, k]] = 0
    for k in range(ns):
        smask[sens[k]] = 0
    a1 = nact / selected if selected > 0 else 0.0
    # The most often activated contexts (ties: the newest) become the neurons of the next step.
    keys = act_key[:nact]
    keys.sort()  # in place: no allocation per sample
    first = max(nact - max_active, 0) if max_active > 0 else nact
    nn = nact - first
    for k in range(nn):
        new_lg[k] = neuron0 + (keys[first + k] & 0xFFFFFFFF)
    neurons = new_lg[:nn]
    neurons.sort()
    for k in range(ns):
        left_group[s, k] = sens[k]
    for k in range(nn):
        left_group[s, ns + k] = neurons[k]
    ng = ns + nn
    lg_len[s] = ng
    added = 0
    for k in range(nnew):
        cid = _add_context(
            s, pot_l[k], pot_ll[k], pot_r[k], pot_rl[k], False,
            l_facts, l_len, l_hash, l_tab, n_l, r_facts, r_len, r_hash, r_tab, n_r,
            ctx_l, ctx_r, ctx_seen, ctx_hit, ctx_act, ctx_zero, c_tab, n_ctx,
        )  # fmt: skip
        if cid >= 0:
            added += 1
    for k in range(ng):
        lmask[left_group[s, k]] = 1
    for ls in range(n_l[s]):
        c = 0
        for k in range(l_len[s, ls]):
            c += lmask[l_facts[s, ls, k]]
        l_hit[s, ls] = c
    for k in range(ng):
        lmask[left_group[s, k]] = 0
    # Prediction: the right facts of the contexts with the best hit ratio whose left side matches.
    best_hit = 0  # the best hit ratio so far, as a fraction (exact ties, whatever the flags)
    best_seen = 1
    predicted[s, :] = 0
    for cid in range(n_ctx[s]):
        ls = ctx_l[s, cid]
        if l_hit[s, ls] != l_len[s, ls]:
            continue
        seen = ctx_seen[s, cid]
        hit = ctx_hit[s, cid] if seen > 0 else 0
        seen = seen if seen > 0 else 1
        if hit * best_seen > best_hit * seen:
            best_hit = hit
            best_seen = seen
            predicted[s, :] = 0
        if hit * best_seen >= best_hit * seen:
            rs = ctx_r[s, cid]
            for k in range(r_len[s, rs]):
                predicted[s, r_facts[s, rs, k]] = 1
    if new_flag:
        added += 1
    uniq = 0
    if npot > 0:
        hs = pot_hash[:npot]
        hs.sort()
        uniq = 1
        for k in range(1, npot):
            if hs[k] != hs[k - 1]:
                uniq += 1
    a2 = added / uniq if new_flag and uniq > 0 else 0.0
    current = (1.0 - a1 + a2) / 2.0 if error else 0.0
    out = current if since_high[s] >= rest else 0.0
    since_high[s] = 0 if current >= threshold else since_high[s] + 1
    return out


@njit(cache=kernel_flags.CACHE, fastmath=kernel_flags.EXACT_MATH)
def _context_loop(
    slots: np.ndarray,
    x: np.ndarray,
    bits: int, max_bits: int, max_left: int, max_active: int, rest: int, threshold: float,
    calib: int, margin: float,
    count: np.ndarray, buf: np.ndarray,
    lo: np.ndarray, step: np.ndarray, left_group: np.ndarray, lg_len: np.ndarray,
    predicted: np.ndarray, since_high: np.ndarray,
    l_facts: np.ndarray, l_len: np.ndarray, l_hash: np.ndarray, l_tab: np.ndarray, n_l: np.ndarray,
    l_hit: np.ndarray,
    r_facts: np.ndarray, r_len: np.ndarray, r_hash: np.ndarray, r_tab: np.ndarray, n_r: np.ndarray,
    ctx_l: np.ndarray, ctx_r: np.ndarray, ctx_seen: np.ndarray, ctx_hit: np.ndarray,
    ctx_act: np.ndarray, ctx_zero: np.ndarray, c_tab: np.ndarray, n_ctx: np.ndarray,
    out: np.ndarray,
) -> int:  # fmt: skip
    n_ctx_cap = ctx_l.shape[1]
    width = left_group.shape[1]
    neuron0 = 2 * max_bits + 1
    sens = np.zeros(max_bits, np.int32)
    smask = np.zeros(neuron0 + n_ctx_cap, np.int32)
    lmask = np.zeros(neuron0 + n_ctx_cap, np.int32)
    r_hit = np.zeros(r_len.shape[1], np.int32)
    pot_l = np.zeros((n_ctx_cap, width), np.int32)
    pot_ll = np.zeros(n_ctx_cap, np.int32)
    pot_r = np.zeros((n_ctx_cap, max_bits), np.int32)
    pot_rl = np.zeros(n_ctx_cap, np.int32)
    pot_hash = np.zeros(n_ctx_cap + 1, np.int64)
    act_key = np.zeros(n_ctx_cap, np.int64)
    new_lg = np.zeros(max(max_active, 1), np.int64)
    top = float((1 << bits) - 1)
    dropped = 0
    for i in range(slots.shape[0]):
        s = slots[i]
        v = x[i]
        if not math.isfinite(v):
            out[i] = np.nan
            dropped += 1
            continue
        c = count[s]
        count[s] = c + 1
        if c < calib:
            # Calibration: keep the value; at the last one set the range and replay them all.
            out[i] = 0.0
            buf[s, c] = v
            if c + 1 < calib:
                continue
            a = buf[s, 0]
            b = buf[s, 0]
            for k in range(calib):
                a = min(a, buf[s, k])
                b = max(b, buf[s, k])
            span = b - a
            a = a - margin * span
            b = b + margin * span
            lo[s] = a
            step[s] = (b - a if b > a else top) / top
            todo = calib
        else:
            todo = 0
        for k in range(todo + 1 if todo == 0 else todo):
            val = buf[s, k] if todo > 0 else v
            r = _context_step(
                s, val, bits, max_bits, max_left, max_active, rest, threshold,
                lo, step, left_group, lg_len, predicted, since_high,
                l_facts, l_len, l_hash, l_tab, n_l, l_hit,
                r_facts, r_len, r_hash, r_tab, n_r,
                ctx_l, ctx_r, ctx_seen, ctx_hit, ctx_act, ctx_zero, c_tab, n_ctx,
                sens, smask, lmask, r_hit, pot_l, pot_ll, pot_r, pot_rl, pot_hash, act_key, new_lg,
            )  # fmt: skip
            if todo == 0:
                out[i] = r
    return dropped


@dataclass(frozen=True)
class ContextParams:
    """Settings of :class:`ContextOSE` (NAB's contextOSE values unless said otherwise)."""

    calib: int = 750  # values that set the range (NAB's probationary rows, at most 750), score 0
    rest: int = 150  # a score is 0 when one of the previous ``rest`` scores was >= threshold
    threshold: float = 0.75  # what counts as an alert for the rest period
    max_left: int = 7  # largest left semi-context grown by crossing
    max_active: int = 15  # active contexts fed back as neurons
    bits: int = 3  # bits of the value's bin (8 bins over the calibrated range)
    max_bits: int = 6  # bins above the range extend the code up to this many bits
    margin: float = 0.0  # the calibrated range is widened by this fraction of itself on each side
    max_contexts: int = 4096  # memory cap per slot: no context learned beyond it
    max_semis: int = 4096  # memory cap per slot: left semi-contexts (previous facts and neurons)
    max_right: int = 256  # memory cap per slot: right semi-contexts (subsets of one value's bits)


def _pow2(n: int) -> int:
    return 1 << max(int(2 * n - 1).bit_length(), 1)


class ContextOSE(SlotStateful):
    """Contextual anomaly detector (CAD-OSE, NAB's ``contextOSE``) for many slots at once.

    ``score_learn_many`` scores every sample against the contexts learned so far, then learns it.
    The first ``calib`` samples of a slot only set its value range (they score 0); the context
    memory of a slot is capped at ``max_contexts`` contexts, ``max_semis`` left and ``max_right``
    right semi-contexts (no new context once a cap is reached).
    """

    kind = "context_ose"

    def __init__(self, n_slots: int = 1, **params: Any) -> None:
        p = ContextParams(**params)
        caps = (p.max_contexts, p.max_semis, p.max_right)
        if min(p.calib, p.rest, p.bits, *caps) < 1 or p.max_bits < p.bits:
            raise ValueError(f"invalid contextOSE parameters: {asdict(p)}")
        if p.max_contexts >= 1 << 31 or p.max_bits > 30 or p.max_active < 0:
            raise ValueError(f"invalid contextOSE parameters: {asdict(p)}")
        self.params = p
        self.dropped = 0
        w = p.max_bits + p.max_active
        m, c, mr = p.max_semis, p.max_contexts, p.max_right
        # Facts are bit codes and context ids: 16 bits hold them for up to 32,754 contexts.
        fdt = np.int16 if 2 * p.max_bits + 1 + c <= np.iinfo(np.int16).max else np.int32
        n = n_slots
        self.state = SlotState(
            self.kind,
            asdict(p),
            {
                "count": np.zeros(n, np.int64),
                "buf": np.zeros((n, p.calib)),
                "lo": np.zeros(n),
                "step": np.ones(n),
                "left_group": np.zeros((n, w), fdt),
                "lg_len": np.zeros(n, np.int32),
                "predicted": np.zeros((n, 2 * p.max_bits + 1), np.uint8),
                "since_high": np.zeros(n, np.int64),
                "l_facts": np.zeros((n, m, w), fdt),
                "l_len": np.zeros((n, m), np.int32),
                "l_hash": np.zeros((n, m), np.int64),
                "l_tab": np.full((n, _pow2(m)), -1, np.int32),
                "n_l": np.zeros(n, np.int32),
                "l_hit": np.zeros((n, m), np.int32),
                "r_facts": np.zeros((n, mr, p.max_bits), fdt),
                "r_len": np.zeros((n, mr), np.int32),
                "r_hash": np.zeros((n, mr), np.int64),
                "r_tab": np.full((n, _pow2(mr)), -1, np.int32),
                "n_r": np.zeros(n, np.int32),
                "ctx_l": np.zeros((n, c), np.int32),
                "ctx_r": np.zeros((n, c), np.int32),
                "ctx_seen": np.zeros((n, c), np.int64),
                "ctx_hit": np.zeros((n, c), np.int64),
                "ctx_act": np.zeros((n, c), np.int64),
                "ctx_zero": np.zeros((n, c), np.uint8),
                "c_tab": np.full((n, _pow2(c)), -1, np.int32),
                "n_ctx": np.zeros(n, np.int32),
            },
            fill={"step": 1.0, "l_tab": -1, "r_tab": -1, "c_tab": -1},
        )

    @classmethod
    def from_bytes(cls, data: bytes) -> ContextOSE:
        st = SlotState.from_bytes(data, cls.kind)
        det = cls(n_slots=0, **st.params)
        det.state = st
        return det

    def score_learn_many(self, slots: Any, x: Any, ts: Any = None) -> np.ndarray:
        """Score a micro-batch in order (each sample against what its slot learned before it)."""
        s, v, _t = as_batch(slots, x, ts)
        if s.size:
            self.state.ensure(int(s.max()) + 1)
        out = np.empty(s.shape[0])
        p, st = self.params, self.state
        self.dropped += _context_loop(
            s, v, p.bits, p.max_bits, p.max_left, p.max_active, p.rest, p.threshold, p.calib,
            p.margin,
            st["count"], st["buf"], st["lo"], st["step"], st["left_group"], st["lg_len"],
            st["predicted"], st["since_high"],
            st["l_facts"], st["l_len"], st["l_hash"], st["l_tab"], st["n_l"], st["l_hit"],
            st["r_facts"], st["r_len"], st["r_hash"], st["r_tab"], st["n_r"],
            st["ctx_l"], st["ctx_r"], st["ctx_seen"], st["ctx_hit"], st["ctx_act"], st["ctx_zero"],
            st["c_tab"], st["n_ctx"], out,
        )  # fmt: skip
        return out

    def score_learn_one(self, x: float, slot: int = 0) -> float:
        return float(self.score_learn_many([slot], [x])[0])

    def contexts(self, slot: int = 0) -> int:
        """Contexts learned by a slot (how full its memory is)."""
        return int(self.state["n_ctx"][slot]) if slot < self.state.n_slots else 0
