"""Plain Python ARTime (adaptive resonance, NAB's best published detector), one series, for clarity.

Written from the algorithm's description (markNZed/ARTimeNAB.jl): downsample, discretise against a
running median, Haar wavelet features of the last 8 values, dual-vigilance fuzzy ART whose
vigilance follows the similarity trend; a value with no resonant category is an anomaly. The
numba kernel in ``models.kernels.artime`` must give the same scores. Differences from the original:
the value range comes from the probationary rows widened by ``margin`` (the original reads the
file's min and max up front), levels outside it are clipped, and categories are capped.
"""

from __future__ import annotations

import math

import numpy as np


def _sum(xs) -> float:
    """Left to right, as the kernel adds (NumPy's pairwise sums round differently)."""
    t = 0.0
    for v in xs:
        t += float(v)
    return t


class DVFA:
    """Dual-vigilance fuzzy ART (complement-coded), categories capped at ``cap``."""

    def __init__(self, dim, cap=1 << 30):
        self.cap = cap
        self.dc = 2 * dim
        self.W: list[list[float]] = []
        self.labels: list[int] = []
        self.A: list[float] = []
        self.Ae: list[float] = []
        self.n_clusters = 0
        self.rho_lb = 0.0
        self.rho_ub = 0.0

    def train(self, f, learning=True):
        x = [float(v) for v in f] + [1.0 - float(v) for v in f]
        if not self.W:
            self.W = [[1.0] * self.dc]
            self.labels = [1]
            self.n_clusters = 1
            self.A.append(0.0)
            self.Ae.append(0.0)
            return 1
        ei = self.dc // 2 - 1
        em, M, es = [], [], []
        for w in self.W:
            e = [min(a, b) for a, b in zip(x, w, strict=True)]
            nw = _sum(w)
            nw = 0.001 if nw == 0 else nw
            fs = _sum(e) / nw
            en = (e[ei] + e[-1]) / (w[ei] + w[-1])
            em.append(e)
            M.append(fs * fs * fs * (en * en))
            es.append(en)
        order = sorted(range(len(M)), key=lambda j: -M[j])  # stable: ties keep category order
        mismatch = True
        label = -1
        max_bmu = 0.0
        max_bmue = 0.0
        newcat = False
        for bmu in order:
            if M[bmu] > max_bmu:
                max_bmue = es[bmu]
                max_bmu = M[bmu]
            if not learning:
                continue
            if M[bmu] >= self.rho_ub:
                self.W[bmu] = em[bmu]
                if M[bmu] >= max_bmu:
                    label = self.labels[bmu]
                mismatch = False
            elif M[bmu] >= self.rho_lb and mismatch:
                if M[bmu] >= max_bmu:
                    label = self.labels[bmu]
                newcat = True
                mismatch = False
                break
            else:
                break
        if newcat and len(self.W) < self.cap:
            self.labels.append(label)
            self.W.append(x)
        self.A.append(max_bmu)
        self.Ae.append(max_bmue)
        if mismatch and learning:
            label = -1
            if len(self.W) < self.cap:
                self.labels.append(self.n_clusters + 1)
                self.W.append(x)
                self.n_clusters += 1
        return label


def haar(v):
    """Full Haar decomposition of 8 values: [approximation, coarsest detail, ..., finest details]."""
    r = math.sqrt(2.0)
    out: list[float] = []
    a = list(v)
    while len(a) > 1:
        d = [(a[k] - a[k + 1]) / r for k in range(0, len(a), 2)]
        a = [(a[k] + a[k + 1]) / r for k in range(0, len(a), 2)]
        out = d + out
    return a + out


def similarity(t1, t2):
    n1 = math.sqrt(_sum(v * v for v in t1))
    n2 = math.sqrt(_sum(v * v for v in t2))
    if n1 == 0:
        return 1 - n2
    if n2 == 0:
        return 1 - n1
    return _sum(a * b for a, b in zip(t1, t2, strict=True)) / (n1 * n2)


def artime_ref(
    values,
    calib,
    margin=0.5,
    full=False,
    window=8,
    wpb=13,
    nlevels=80,
    chomp=0.075,
    initial_rho=0.8,
    max_categories=1 << 30,
):
    values = np.clip(values, -1e300, 1e300)  # the kernel's LIMIT
    n = values.size
    pp = calib - calib % 2  # ARTime makes the probationary period even
    if n < pp:
        return [0.0] * n  # never calibrated
    head = values[:pp]
    span = head.max() - head.min()
    dmin, dmax = head.min() - margin * span, head.max() + margin * span
    if full:
        dmin, dmax = values.min(), values.max()
    sstep = max(1, round(pp // (window * wpb)))
    tw = pp // sstep
    mask_rho = window * 1.5
    art = DVFA(2 * window, max_categories)
    st = dict(
        last_anomaly_i=0,
        last_anomaly_sim=0.0,
        last_rho_update_i=0,
        mask_after_cat=False,
        no_new_cat=0,
    )
    hist = {"sum": 0.0, "n": 0, "last": 0.0}
    sim_window = list(np.ones(tw // 2 + 1))
    sim_diff = list(np.zeros(tw + 1))
    ub_sum = 0.0
    ub_n = 0
    ds_window = np.zeros(sstep)
    medbin = np.zeros(nlevels + 1, int)
    f_window = np.zeros(window)
    med = dict(level=0, below=0, above=0, dsma=0.0)
    trend_f = []
    out = np.zeros(n)

    def detect(f, i):
        nonlocal ub_sum, ub_n, sim_window, sim_diff
        upd_after = (i - st["last_anomaly_i"]) == mask_rho
        upd_trend = (i - st["last_rho_update_i"]) >= tw // 2
        mask_after = (i - st["last_anomaly_i"]) <= mask_rho
        if i > tw + mask_rho and st["mask_after_cat"] and st["no_new_cat"] >= mask_rho:
            st["mask_after_cat"] = False
        if i < window:
            art.train(f, learning=False)
            cat = -1
        else:
            cat = art.train(f)
        st["no_new_cat"] = 0 if cat == -1 else st["no_new_cat"] + 1
        a = art.A[i - 1]
        ae = art.Ae[i - 1]
        ub_sum += a
        ub_n += 1
        sim_window = [*sim_window[1:], a]
        sim_diff = [*sim_diff[1:], art.rho_ub - a]
        if (i - st["last_anomaly_i"]) < mask_rho and hist["n"] and a < hist["last"]:
            hist["sum"] += a - hist["last"]
            hist["last"] = a
        masking = st["mask_after_cat"] or mask_after
        below_last = a < st["last_anomaly_sim"] * (0.90 if mask_after else 0.70)
        anomaly = 0.0
        if i > tw and cat == -1 and (not masking or below_last):
            fs = min(0.999, a)
            ub = ((1 - fs) - (1 - art.rho_ub)) / (1 - fs)
            lb = ((1 - fs) - (1 - art.rho_lb)) / (1 - fs)
            anomaly = min(1.0, ub * 0.35 + lb * 0.65 + (1 - ae) * 1.5)
            hist["sum"] += a
            hist["n"] += 1
            hist["last"] = a
            st["last_anomaly_sim"] = a
            st["last_anomaly_i"] = i
        st["mask_after_cat"] = cat == -1 or st["mask_after_cat"]
        if i > tw and (upd_after or upd_trend):
            mins = min(sim_window)
            new_ub = min(0.97, ub_sum / ub_n)
            prev = art.rho_lb
            if prev <= mins:
                new_lb = prev + (mins - prev) * 0.19
            else:
                decr = 0.0
                if i > tw * 2:
                    below = [min(0.37, x) for x in sim_diff if x > 0.05]
                    if below:
                        decr = _sum(below) / len(below)
                decr = max(0.01, decr)
                new_lb = prev - decr / 2
                if hist["n"]:
                    new_lb = max(hist["sum"] / hist["n"], new_lb)
            art.rho_lb = min(new_ub, new_lb)
            art.rho_ub = new_ub
            st["last_rho_update_i"] = i
            st["mask_after_cat"] = True
        return anomaly

    def init_rho(X):
        m = X.shape[0]
        S = np.ones((m, m))
        for i in range(m):
            for j in range(i):
                S[i, j] = S[j, i] = similarity(X[i], X[j])
        sums = [_sum(S[:, j]) for j in range(m)]
        order = sorted(range(m), key=lambda j: sums[j])
        a2 = DVFA(2 * window, max_categories)
        a2.rho_lb = a2.rho_ub = initial_rho
        for row in X[order]:
            a2.train(row)
        tail = a2.A[tw // 2 - 1 :]
        return _sum(tail) / len(tail)

    dsi = 1
    for idx in range(n):
        i = idx + 1
        ds_window = np.r_[ds_window[1:], values[idx]]
        if i % sstep:
            continue
        mean = _sum(ds_window) / sstep
        mx = ds_window.max()
        mn = ds_window.min()
        if dsi == 1:
            med["dsma"] = mean
        med["dsma"] = (med["dsma"] + mean) / 2
        ds = mx
        if abs(mx - med["dsma"]) < abs(mn - med["dsma"]):
            ds = mn
        if abs(ds - mean) < 0.1 * mean:
            ds = mean
        ds = ds - dmin
        if dmax - dmin != 0:
            ds = ds / (dmax - dmin)
        lf = ds * nlevels
        level = 0 if math.isnan(lf) else int(min(max(round(lf), 0), nlevels))
        ds = level / nlevels
        medbin[level] += 1
        medpos = dsi // 2
        if dsi == 1:
            med["level"] = level
        if med["level"] > level:
            med["below"] += 1
        elif med["level"] < level:
            med["above"] += 1
        if medpos < med["above"]:
            med["below"] += medbin[med["level"]]
            med["level"] += 1
            while medbin[med["level"]] == 0:
                med["level"] += 1
            med["above"] -= medbin[med["level"]]
        elif medpos < med["below"]:
            med["above"] += medbin[med["level"]]
            med["level"] -= 1
            while medbin[med["level"]] == 0:
                med["level"] -= 1
            med["below"] -= medbin[med["level"]]
        m_ = med["level"] / nlevels
        if abs(ds - m_) < chomp:
            ds = m_
        f_window = np.r_[f_window[1:], ds]
        feats = np.zeros(2 * window)
        if dsi >= window:
            dw = f_window - f_window.min()
            if dw.max() != 0:
                dw = dw / dw.max()
            fw = np.array(haar(dw))
            fw = fw - fw.min()
            if fw.max() != 0:
                fw = fw / fw.max()
            feats = np.r_[fw, f_window]
        if dsi <= tw:
            trend_f.append(feats)
            if dsi == tw:
                X = np.array(trend_f)
                rho = init_rho(X[window - 1 : tw])
                art.rho_lb = art.rho_ub = rho
                for fi, ff in enumerate(X, start=1):
                    detect(ff, fi)
        else:
            out[idx] = detect(feats, dsi)
        dsi += 1
    out[:pp] = 0.0  # the calibration rows only set the range
    return out.tolist()
