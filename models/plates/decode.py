"""CTC decoding of plate text: greedy, and best path constrained to the plate syntax (numba Viterbi)."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from numba import njit

from core import kernel_flags
from models.plates.syntax import TEMPLATE_KINDS, TEMPLATES, kinds_for_colour, template_masks

NEG = -1e30
# Printed between the region code and the serial, or read in gaps: they count as "no character".
BLANK_LIKE = ("·", "•", ".", "-", " ", ":", "：", "'")
# Plates never use I or O: a reader that sees them means 1 or 0, so their mass counts there.
FOLDS = (("O", "0"), ("o", "0"), ("I", "1"), ("i", "1"), ("l", "1"))


def plate_chars() -> frozenset[str]:
    """Every character a ``PlateDecoder(plate_only=True)`` reads a class of: the plates' own,
    the blank-like separators and the folded look-alikes. Its readings depend on these classes
    only, so a recogniser may leave the others out (``PaddleOcr(narrow=...)``)."""
    chars = {ch for tmpl in TEMPLATES for pos in tmpl for ch in pos}
    return frozenset(chars | set(BLANK_LIKE) | {c for pair in FOLDS for c in pair})


@njit(cache=kernel_flags.CACHE, fastmath=kernel_flags.FASTMATH)
def _template_viterbi(lp, blank, mask, length, out_cls, out_lp):  # type: ignore[no-untyped-def]
    """Best CTC path through ``length`` characters, position ``p`` restricted to ``mask[p]``.

    ``lp[t, c]``: log-probabilities of the kept classes; ``blank[t]``: log-probability of "no
    character". Writes the classes (into ``out_cls``) and each character's best frame
    log-probability (``out_lp``); returns the path log-probability (``NEG`` if impossible).
    """
    n_t, n_c = lp.shape
    k_max = length + 1
    b = np.full(k_max, NEG)
    s = np.full((k_max, n_c), NEG)
    nb = np.empty(k_max)
    ns = np.empty((k_max, n_c))
    # Back-pointers: for S, -2 = stayed, -1 = came from blank, c >= 0 = came from S[k-1, c].
    bp_s = np.empty((n_t, k_max, n_c), dtype=np.int32)
    # For B: -1 = stayed in blank, c >= 0 = came from S[k, c].
    bp_b = np.empty((n_t, k_max), dtype=np.int32)
    b[0] = 0.0
    for t in range(n_t):
        for k in range(k_max):
            best, arg = b[k], -1
            for c in range(n_c):
                if s[k, c] > best:
                    best, arg = s[k, c], c
            nb[k] = best + blank[t] if best > NEG else NEG
            bp_b[t, k] = arg
        for k in range(k_max):
            for c in range(n_c):
                ns[k, c] = NEG
                bp_s[t, k, c] = -2
        for k in range(1, k_max):
            # Best and second-best previous character state, for "new character right after another".
            m1, a1, m2 = NEG, -1, NEG
            for c in range(n_c):
                v = s[k - 1, c]
                if v > m1:
                    m2 = m1
                    m1, a1 = v, c
                elif v > m2:
                    m2 = v
            for c in range(n_c):
                if not mask[k - 1, c]:
                    continue
                best, arg = s[k, c], -2
                if b[k - 1] > best:
                    best, arg = b[k - 1], -1
                other, oarg = (m2, -3) if a1 == c else (m1, a1)
                if other > best:
                    best, arg = other, oarg
                if arg == -3:  # second best: find its index (rare)
                    for c2 in range(n_c):
                        if c2 != c and s[k - 1, c2] == m2:
                            arg = c2
                            break
                if best > NEG:
                    ns[k, c] = best + lp[t, c]
                    bp_s[t, k, c] = arg
        for k in range(k_max):
            b[k] = nb[k]
            for c in range(n_c):
                s[k, c] = ns[k, c]
    # End in blank or in a character of the last position.
    k = length
    best, state = b[k], -1
    for c in range(n_c):
        if s[k, c] > best:
            best, state = s[k, c], c
    if best <= NEG / 2:
        return NEG
    for p in range(length):
        out_lp[p] = NEG
    for t in range(n_t - 1, -1, -1):
        if state == -1:
            prev = bp_b[t, k]
            state = prev  # -1 stays blank, else we were in S[k, prev] at t-1
        else:
            pos = k - 1
            out_cls[pos] = state
            if lp[t, state] > out_lp[pos]:
                out_lp[pos] = lp[t, state]
            prev = bp_s[t, k, state]
            if prev == -2:
                pass
            elif prev == -1:
                k -= 1
                state = -1
            else:
                k -= 1
                state = prev
    return best


@dataclass(frozen=True, slots=True)
class Decoded:
    """A decoded reading: ``text`` and per-character probabilities (``char_probs``)."""

    text: str
    score: float  # path log-probability
    char_probs: tuple[float, ...]

    @property
    def confidence(self) -> float:
        return min(self.char_probs) if self.char_probs else 0.0


class PlateDecoder:
    """Decodes PP-OCR CTC outputs over an alphabet (``alphabet[0]`` is the CTC blank)."""

    def __init__(self, alphabet: list[str], plate_only: bool = False) -> None:
        self.alphabet = alphabet
        # Characters' probabilities among the plate alphabet and blank only (the mass a frame
        # gives characters no plate holds, 排 for 挂 or 字 for 学, is dropped): the best path
        # is the same, each frame's classes scaled alike; only ``char_probs`` change.
        self.plate_only = plate_only
        wanted = sorted({ch for tmpl in TEMPLATES for pos in tmpl for ch in pos})
        index = {ch: i for i, ch in enumerate(alphabet)}
        self.keep = np.array([index[ch] for ch in wanted if ch in index], dtype=np.int64)
        self.blank_like = np.array(
            [0] + [index[ch] for ch in BLANK_LIKE if ch in index], dtype=np.int64
        )
        self.folds = [
            (index[dst], index[src]) for src, dst in FOLDS if src in index and dst in index
        ]
        sub = [alphabet[i] for i in self.keep.tolist()]
        self.sub_alphabet = sub
        self.masks, self.lengths = template_masks(sub)
        self._flat_masks = self.masks.reshape(-1, self.masks.shape[2]).astype(np.float64)
        self.min_presence = 1e-3
        # Per set of kinds, which templates a plate of those kinds may fill.
        self._kinds_ok: dict[frozenset[str], list[bool]] = {}

    def _allowed(self, kinds: frozenset[str] | None) -> list[bool] | None:
        """Which templates a plate of one of ``kinds`` may fill (``None``: all)."""
        if kinds is None:
            return None
        if kinds not in self._kinds_ok:
            self._kinds_ok[kinds] = [k in kinds for k in TEMPLATE_KINDS]
        return self._kinds_ok[kinds]

    def greedy(self, probs: np.ndarray) -> str:
        """Plain best-path decoding (what off-the-shelf OCR prints)."""
        best = probs.argmax(axis=1)
        keep = np.ones(len(best), dtype=bool)
        keep[1:] = best[1:] != best[:-1]
        keep &= best != 0
        return "".join(self.alphabet[i] for i in best[keep].tolist())

    def constrained(
        self, probs: np.ndarray, colour: str | None = None, kinds: frozenset[str] | None = None
    ) -> Decoded | None:
        """The most probable reading that is a valid plate, or ``None`` if no template fits;
        ``colour``: the plate's background colour or red mark, if known (only its kinds are
        tried, ``syntax.kinds_for_colour``); ``kinds``: only these kinds (instead of
        ``colour``'s)."""
        probs = np.array(probs, dtype=np.float64)
        for dst, src in self.folds:
            probs[:, dst] += probs[:, src]
        if self.plate_only:
            total = probs[:, self.keep].sum(axis=1) + probs[:, self.blank_like].sum(axis=1)
            probs = probs / np.maximum(total, 1e-30)[:, None]
        with np.errstate(divide="ignore"):
            lp = np.log(np.maximum(probs[:, self.keep], 1e-30))
            blank = np.log(np.maximum(probs[:, self.blank_like].sum(axis=1), 1e-30))
        best: Decoded | None = None
        n = self.masks.shape[1]
        # A template is tried only if each of its positions is plausible somewhere in the line
        # (no frame gives 使, 应 or W any mass: skip those kinds without running the Viterbi).
        kept = probs[:, self.keep]
        presence = (kept @ self._flat_masks.T).max(axis=0).reshape(self.masks.shape[:2])
        if kinds is None and colour is not None:
            kinds = kinds_for_colour(colour)
        allowed = self._allowed(kinds)
        for t, length in enumerate(self.lengths):
            if allowed is not None and not allowed[t]:
                continue
            if presence[t, :length].min() < self.min_presence:
                continue
            out_cls = np.zeros(n, dtype=np.int32)
            out_lp = np.zeros(n, dtype=np.float64)
            score = _template_viterbi(lp, blank, self.masks[t], length, out_cls, out_lp)
            if score <= NEG / 2 or (best is not None and score <= best.score):
                continue
            text = "".join(self.sub_alphabet[c] for c in out_cls[:length].tolist())
            best = Decoded(text, float(score), tuple(np.exp(out_lp[:length]).tolist()))
        return best
