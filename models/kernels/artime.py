"""ARTime per slot: adaptive-resonance anomaly detection (NAB's best published detector) in fixed arrays.

Each slot downsamples its values, discretises them against a running median, and turns the last 8
into features (their Haar wavelet and the values). A dual-vigilance fuzzy ART network learns
categories of these features; a feature vector no category resonates with is an anomaly, scored by
how far below the vigilance its best match is. The vigilance follows the similarity trend. The
first ``calib`` values (NAB's probationary rows) set the value range, widened by ``margin``, and
score 0: the original reads the whole file's min and max before the first row.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np
from numba import njit

from core import kernel_flags
from models.state import SlotState, SlotStateful, as_batch

WINDOW = 8  # values per feature window (the Haar transform needs a power of two)
LIMIT = 1e300  # larger finite values are clipped to it (hostile input must not overflow the range)


@njit(cache=kernel_flags.CACHE, fastmath=kernel_flags.EXACT_MATH)
def _train(
    x: np.ndarray, learning: bool, W: np.ndarray, labels: np.ndarray, n: np.ndarray, k: int,
    rho_lb: float, rho_ub: float, M: np.ndarray, es: np.ndarray, em: np.ndarray,
) -> tuple[int, float, float]:  # fmt: skip
    """One complement-coded sample ``x`` through the DVFA of row ``k`` of ``W``/``labels``/``n``.

    ``n[k, 0]`` categories, ``n[k, 1]`` clusters. Returns (label, best match, its energy match).
    """
    dc = x.shape[0]
    cap = W.shape[1]
    if n[k, 0] == 0:
        for j in range(dc):
            W[k, 0, j] = 1.0
        labels[k, 0] = 1
        n[k, 0] = 1
        n[k, 1] = 1
        return 1, 0.0, 0.0
    ei = dc // 2 - 1
    nc = n[k, 0]
    for c in range(nc):
        num = 0.0
        nw = 0.0
        for j in range(dc):
            w = W[k, c, j]
            e = x[j] if x[j] < w else w
            em[c, j] = e
            num += e
            nw += w
        if nw == 0.0:
            nw = 0.001
        fs = num / nw
        en = (em[c, ei] + em[c, dc - 1]) / (W[k, c, ei] + W[k, c, dc - 1])
        M[c] = fs * fs * fs * (en * en)
        es[c] = en
    order = np.argsort(-M[:nc], kind="mergesort")  # stable: ties keep category order
    mismatch = True
    label = -1
    max_bmu = 0.0
    max_bmue = 0.0
    newcat = False
    for r in range(nc):
        b = order[r]
        if M[b] > max_bmu:
            max_bmue = es[b]
            max_bmu = M[b]
        if not learning:
            continue
        if M[b] >= rho_ub:
            for j in range(dc):
                W[k, b, j] = em[b, j]
            if M[b] >= max_bmu:
                label = labels[k, b]
            mismatch = False
        elif M[b] >= rho_lb and mismatch:
            if M[b] >= max_bmu:
                label = labels[k, b]
            newcat = True
            mismatch = False
            break
        else:
            break
    if newcat and n[k, 0] < cap:
        c = n[k, 0]
        labels[k, c] = label
        for j in range(dc):
            W[k, c, j] = x[j]
        n[k, 0] = c + 1
    if mismatch and learning:
        label = -1
        if n[k, 0] < cap:
            c = n[k, 0]
            labels[k, c] = n[k, 1] + 1
            for j in range(dc):
                W[k, c, j] = x[j]
            n[k, 0] = c + 1
            n[k, 1] += 1
    return label, max_bmu, max_bmue


@njit(cache=kernel_flags.CACHE, fastmath=kernel_flags.EXACT_MATH)
def _features(fw: np.ndarray, dsi: int, out: np.ndarray) -> None:
    """Haar wavelet of the min-max scaled window, min-max scaled, then the window itself."""
    w = fw.shape[0]
    for j in range(2 * w):
        out[j] = 0.0
    if dsi < w:
        return
    lo = fw[0]
    for j in range(w):
        lo = min(lo, fw[j])
    a = np.empty(w)
    hi = 0.0
    for j in range(w):
        a[j] = fw[j] - lo
        hi = max(hi, a[j])
    if hi != 0.0:
        for j in range(w):
            a[j] = a[j] / hi
    r = math.sqrt(2.0)
    # In place, coarsest last: out = [approximation, coarsest detail, ..., finest details].
    m = w
    while m > 1:
        half = m // 2
        for j in range(half):
            out[half + j] = (a[2 * j] - a[2 * j + 1]) / r
        for j in range(half):
            a[j] = (a[2 * j] + a[2 * j + 1]) / r
        m = half
    out[0] = a[0]
    lo = out[0]
    for j in range(w):
        lo = min(lo, out[j])
    hi = out[0] - lo
    for j in range(w):
        out[j] = out[j] - lo
        hi = max(hi, out[j])
    if hi != 0.0:
        for j in range(w):
            out[j] = out[j] / hi
    for j in range(w):
        out[w + j] = fw[j]


@njit(cache=kernel_flags.CACHE, fastmath=kernel_flags.EXACT_MATH)
def _init_rho(
    X: np.ndarray, tw: int, initial_rho: float, cap: int, M: np.ndarray, es: np.ndarray,
    em: np.ndarray,
) -> float:  # fmt: skip
    """Vigilance that the calibration features, most typical last, resonate at."""
    m = X.shape[0]
    d = X.shape[1]
    norms = np.empty(m)
    for i in range(m):
        t = 0.0
        for j in range(d):
            t += X[i, j] * X[i, j]
        norms[i] = math.sqrt(t)
    S = np.ones((m, m))
    for i in range(m):
        for j in range(i):
            if norms[i] == 0.0:
                v = 1.0 - norms[j]
            elif norms[j] == 0.0:
                v = 1.0 - norms[i]
            else:
                t = 0.0
                for q in range(d):
                    t += X[i, q] * X[j, q]
                v = t / (norms[i] * norms[j])
            S[i, j] = v
            S[j, i] = v
    sums = np.empty(m)
    for j in range(m):
        t = 0.0
        for i in range(m):
            t += S[i, j]
        sums[j] = t
    order = np.argsort(sums, kind="mergesort")
    W = np.zeros((1, cap, 2 * d))
    labels = np.zeros((1, cap), np.int64)
    n = np.zeros((1, 2), np.int64)
    x = np.empty(2 * d)
    A = np.empty(m)
    for r in range(m):
        for j in range(d):
            x[j] = X[order[r], j]
            x[d + j] = 1.0 - X[order[r], j]
        _lab, a, _ae = _train(x, True, W, labels, n, 0, initial_rho, initial_rho, M, es, em)
        A[r] = a
    t = 0.0
    first = tw // 2 - 1
    for r in range(first, m):
        t += A[r]
    return t / (m - first)


@njit(cache=kernel_flags.CACHE, fastmath=kernel_flags.EXACT_MATH)
def _detect(
    s: int, f: np.ndarray, i: int, tw: int,
    W: np.ndarray, labels: np.ndarray, ncat: np.ndarray, rho: np.ndarray, ints: np.ndarray,
    flts: np.ndarray, simw: np.ndarray, simd: np.ndarray,
    x: np.ndarray, M: np.ndarray, es: np.ndarray, em: np.ndarray,
) -> float:  # fmt: skip
    # ints: last anomaly i, last rho update i, mask after category, rows without a new
    # category, anomalies, ring position of simw, of simd; flts: last anomaly similarity,
    # sum of all similarities, their count, sum of anomaly similarities, the last one.
    mask_rho = WINDOW * 1.5
    upd_after = (i - ints[s, 0]) == mask_rho
    upd_trend = (i - ints[s, 1]) >= tw // 2
    mask_after = (i - ints[s, 0]) <= mask_rho
    if i > tw + mask_rho and ints[s, 2] == 1 and ints[s, 3] >= mask_rho:
        ints[s, 2] = 0
    d = f.shape[0]
    for j in range(d):
        x[j] = f[j]
        x[d + j] = 1.0 - f[j]
    if i < WINDOW:
        _lab, a, ae = _train(x, False, W, labels, ncat, s, rho[s, 0], rho[s, 1], M, es, em)
        cat = -1
    else:
        cat, a, ae = _train(x, True, W, labels, ncat, s, rho[s, 0], rho[s, 1], M, es, em)
    ints[s, 3] = 0 if cat == -1 else ints[s, 3] + 1
    flts[s, 1] += a
    flts[s, 2] += 1.0
    nw = simw.shape[1]
    simw[s, ints[s, 5]] = a
    ints[s, 5] = (ints[s, 5] + 1) % nw
    nd = simd.shape[1]
    simd[s, ints[s, 6]] = rho[s, 1] - a
    ints[s, 6] = (ints[s, 6] + 1) % nd
    if (i - ints[s, 0]) < mask_rho and ints[s, 4] > 0 and a < flts[s, 4]:
        flts[s, 3] += a - flts[s, 4]
        flts[s, 4] = a
    masking = ints[s, 2] == 1 or mask_after
    below_last = a < flts[s, 0] * (0.90 if mask_after else 0.70)
    anomaly = 0.0
    if i > tw and cat == -1 and (not masking or below_last):
        fs = min(0.999, a)
        ub = ((1.0 - fs) - (1.0 - rho[s, 1])) / (1.0 - fs)
        lb = ((1.0 - fs) - (1.0 - rho[s, 0])) / (1.0 - fs)
        anomaly = min(1.0, ub * 0.35 + lb * 0.65 + (1.0 - ae) * 1.5)
        flts[s, 3] += a
        ints[s, 4] += 1
        flts[s, 4] = a
        flts[s, 0] = a
        ints[s, 0] = i
    if cat == -1:
        ints[s, 2] = 1
    if i > tw and (upd_after or upd_trend):
        mins = simw[s, 0]
        for j in range(nw):
            mins = min(mins, simw[s, j])
        new_ub = min(0.97, flts[s, 1] / flts[s, 2])
        prev = rho[s, 0]
        if prev <= mins:
            new_lb = prev + (mins - prev) * 0.19
        else:
            decr = 0.0
            if i > tw * 2:
                t = 0.0
                c = 0
                for j in range(nd):  # oldest first, as the history was appended
                    v = simd[s, (ints[s, 6] + j) % nd]
                    if v > 0.05:
                        t += min(0.37, v)
                        c += 1
                if c > 0:
                    decr = t / c
            decr = max(0.01, decr)
            new_lb = prev - decr / 2.0
            if ints[s, 4] > 0:
                new_lb = max(flts[s, 3] / ints[s, 4], new_lb)
        rho[s, 0] = min(new_ub, new_lb)
        rho[s, 1] = new_ub
        ints[s, 1] = i
        ints[s, 2] = 1
    return anomaly


@njit(cache=kernel_flags.CACHE, fastmath=kernel_flags.EXACT_MATH)
def _ingest(
    s: int, v: float, sstep: int, tw: int, nlevels: int, chomp: float, initial_rho: float,
    dmin: np.ndarray, dmax: np.ndarray, dsw: np.ndarray, dsma: np.ndarray, dsi: np.ndarray,
    rowi: np.ndarray, medbin: np.ndarray, med: np.ndarray, fwin: np.ndarray, trend: np.ndarray,
    W: np.ndarray, labels: np.ndarray, ncat: np.ndarray, rho: np.ndarray, ints: np.ndarray,
    flts: np.ndarray, simw: np.ndarray, simd: np.ndarray,
    feats: np.ndarray, x: np.ndarray, M: np.ndarray, es: np.ndarray, em: np.ndarray,
) -> float:  # fmt: skip
    """One value of slot ``s`` (its range known): downsample, discretise, features, detect."""
    for j in range(sstep - 1):
        dsw[s, j] = dsw[s, j + 1]
    dsw[s, sstep - 1] = v
    rowi[s] += 1
    if rowi[s] % sstep != 0:
        return 0.0
    k = dsi[s]
    t = 0.0
    mx = dsw[s, 0]
    mn = dsw[s, 0]
    for j in range(sstep):
        t += dsw[s, j]
        mx = max(mx, dsw[s, j])
        mn = min(mn, dsw[s, j])
    mean = t / sstep
    if k == 1:
        dsma[s] = mean
    dsma[s] = (dsma[s] + mean) / 2.0
    ds = mx
    if abs(mx - dsma[s]) < abs(mn - dsma[s]):
        ds = mn
    if abs(ds - mean) < 0.1 * mean:
        ds = mean
    ds = ds - dmin[s]
    if dmax[s] - dmin[s] != 0.0:
        ds = ds / (dmax[s] - dmin[s])
    lf = np.rint(ds * nlevels)
    if lf != lf:  # NaN from inf - inf (a range at the float limit): never an index
        lf = 0.0
    level = int(min(max(lf, 0.0), float(nlevels)))
    ds = level / nlevels
    # A running median of the levels (ARTime's "close enough" one), 0 below, 1 above, 2 level.
    medbin[s, level] += 1
    medpos = k // 2
    if k == 1:
        med[s, 2] = level
    if med[s, 2] > level:
        med[s, 0] += 1
    elif med[s, 2] < level:
        med[s, 1] += 1
    if medpos < med[s, 1]:
        med[s, 0] += medbin[s, med[s, 2]]
        med[s, 2] += 1
        while medbin[s, med[s, 2]] == 0:
            med[s, 2] += 1
        med[s, 1] -= medbin[s, med[s, 2]]
    elif medpos < med[s, 0]:
        med[s, 1] += medbin[s, med[s, 2]]
        med[s, 2] -= 1
        while medbin[s, med[s, 2]] == 0:
            med[s, 2] -= 1
        med[s, 0] -= medbin[s, med[s, 2]]
    m_ = med[s, 2] / nlevels
    if abs(ds - m_) < chomp:
        ds = m_
    for j in range(WINDOW - 1):
        fwin[s, j] = fwin[s, j + 1]
    fwin[s, WINDOW - 1] = ds
    _features(fwin[s], k, feats)
    out = 0.0
    if k <= tw:
        for j in range(feats.shape[0]):
            trend[s, k - 1, j] = feats[j]
        if k == tw:
            rho0 = _init_rho(trend[s, WINDOW - 1 : tw], tw, initial_rho, W.shape[1], M, es, em)
            rho[s, 0] = rho0
            rho[s, 1] = rho0
            for fi in range(tw):
                _detect(s, trend[s, fi], fi + 1, tw, W, labels, ncat, rho, ints, flts, simw, simd,
                        x, M, es, em)  # fmt: skip
    else:
        out = _detect(s, feats, k, tw, W, labels, ncat, rho, ints, flts, simw, simd, x, M, es, em)
    dsi[s] = k + 1
    return out


@njit(cache=kernel_flags.CACHE, fastmath=kernel_flags.EXACT_MATH)
def _artime_loop(
    slots: np.ndarray, xv: np.ndarray, calib: int, margin: float, sstep: int, tw: int,
    nlevels: int, chomp: float, initial_rho: float,
    count: np.ndarray, buf: np.ndarray,
    dmin: np.ndarray, dmax: np.ndarray, dsw: np.ndarray, dsma: np.ndarray, dsi: np.ndarray,
    rowi: np.ndarray, medbin: np.ndarray, med: np.ndarray, fwin: np.ndarray, trend: np.ndarray,
    W: np.ndarray, labels: np.ndarray, ncat: np.ndarray, rho: np.ndarray, ints: np.ndarray,
    flts: np.ndarray, simw: np.ndarray, simd: np.ndarray, out: np.ndarray,
) -> int:  # fmt: skip
    cap = W.shape[1]
    d = 2 * WINDOW
    feats = np.zeros(d)
    x = np.zeros(2 * d)
    M = np.zeros(cap)
    es = np.zeros(cap)
    em = np.zeros((cap, 2 * d))
    dropped = 0
    for i in range(slots.shape[0]):
        s = slots[i]
        v = xv[i]
        if not math.isfinite(v):
            out[i] = np.nan
            dropped += 1
            continue
        # Finite values past +-LIMIT are taken as +-LIMIT so sums and ranges stay finite.
        v = min(max(v, -LIMIT), LIMIT)
        c = count[s]
        count[s] = c + 1
        out[i] = 0.0
        if c < calib:
            # Calibration: keep the value; at the last one set the range and replay them all.
            buf[s, c] = v
            if c + 1 < calib:
                continue
            lo = buf[s, 0]
            hi = buf[s, 0]
            for j in range(calib):
                lo = min(lo, buf[s, j])
                hi = max(hi, buf[s, j])
            span = hi - lo
            dmin[s] = lo - margin * span
            dmax[s] = hi + margin * span
            for j in range(calib):
                _ingest(s, buf[s, j], sstep, tw, nlevels, chomp, initial_rho, dmin, dmax, dsw,
                        dsma, dsi, rowi, medbin, med, fwin, trend, W, labels, ncat, rho, ints,
                        flts, simw, simd, feats, x, M, es, em)  # fmt: skip
            continue
        out[i] = _ingest(s, v, sstep, tw, nlevels, chomp, initial_rho, dmin, dmax, dsw, dsma,
                         dsi, rowi, medbin, med, fwin, trend, W, labels, ncat, rho, ints, flts,
                         simw, simd, feats, x, M, es, em)  # fmt: skip
    return dropped


@dataclass(frozen=True)
class ARTimeParams:
    """Settings of :class:`ARTime` (ARTime's published values unless said otherwise)."""

    calib: int = 750  # values that set the range (NAB's probationary rows, made even), score 0
    margin: float = 0.5  # the calibrated range widened by this fraction of itself on each side
    windows_per_calib: int = 13  # feature windows per calibration period (sets the downsampling)
    nlevels: int = 80  # discretisation levels over the range
    chomp: float = 0.075  # a level this close to the running median is the median
    initial_rho: float = 0.8  # vigilance of the calibration pass
    max_categories: int = 1024  # memory cap per slot: categories learned beyond it are not kept


class ARTime(SlotStateful):
    """ARTime (adaptive resonance anomaly detection) for many slots at once.

    ``score_learn_many`` scores each sample against what its slot learned before it, then learns
    it. Only every ``sstep``-th sample (the downsampling step) can score above 0.
    """

    kind = "artime"

    def __init__(self, n_slots: int = 1, **params: Any) -> None:
        p = ARTimeParams(**params)
        if p.calib < 32 or p.windows_per_calib < 1 or p.nlevels < 1 or p.max_categories < 2:
            raise ValueError(f"invalid ARTime parameters: {asdict(p)}")
        self.params = p
        self.calib = p.calib - p.calib % 2
        self.sstep = max(1, self.calib // (WINDOW * p.windows_per_calib))
        self.tw = self.calib // self.sstep
        self.dropped = 0
        n, cap, tw = n_slots, p.max_categories, self.tw
        self.state = SlotState(
            self.kind,
            asdict(p),
            {
                "count": np.zeros(n, np.int64),
                "buf": np.zeros((n, self.calib)),
                "dmin": np.zeros(n),
                "dmax": np.zeros(n),
                "dsw": np.zeros((n, self.sstep)),
                "dsma": np.zeros(n),
                "dsi": np.ones(n, np.int64),
                "rowi": np.zeros(n, np.int64),
                "medbin": np.zeros((n, p.nlevels + 1), np.int64),
                "med": np.zeros((n, 3), np.int64),
                "fwin": np.zeros((n, WINDOW)),
                "trend": np.zeros((n, tw, 2 * WINDOW)),
                "W": np.zeros((n, cap, 4 * WINDOW)),
                "labels": np.zeros((n, cap), np.int64),
                "ncat": np.zeros((n, 2), np.int64),
                "rho": np.zeros((n, 2)),
                "ints": np.zeros((n, 7), np.int64),
                "flts": np.zeros((n, 5)),
                "simw": np.ones((n, tw // 2 + 1)),
                "simd": np.zeros((n, tw + 1)),
            },
            fill={"dsi": 1.0, "simw": 1.0},
        )

    def score_learn_many(self, slots: Any, x: Any, ts: Any = None) -> np.ndarray:
        s, v, _t = as_batch(slots, x, ts)
        if s.size:
            self.state.ensure(int(s.max()) + 1)
        out = np.empty(s.shape[0])
        p, st = self.params, self.state
        self.dropped += _artime_loop(
            s, v, self.calib, p.margin, self.sstep, self.tw, p.nlevels, p.chomp, p.initial_rho,
            st["count"], st["buf"], st["dmin"], st["dmax"], st["dsw"], st["dsma"], st["dsi"],
            st["rowi"], st["medbin"], st["med"], st["fwin"], st["trend"], st["W"], st["labels"],
            st["ncat"], st["rho"], st["ints"], st["flts"], st["simw"], st["simd"], out,
        )  # fmt: skip
        return out

    def score_learn_one(self, x: float, slot: int = 0) -> float:
        return float(self.score_learn_many([slot], [x])[0])

    def categories(self, slot: int = 0) -> int:
        """Categories a slot has learned (how full its memory is)."""
        return int(self.state["ncat"][slot, 0]) if slot < self.state.n_slots else 0
