"""``carpulse bench kernels``: samples/s of each detector kernel against River and vectorised NumPy."""

from __future__ import annotations

import argparse
import time
from collections.abc import Callable
from typing import Any

import numpy as np

from carpulse.bench import median_of
from core.argtypes import count


def _rate(fn: Callable[[], object], n: int, repeat: int) -> float:
    def once() -> float:
        t0 = time.perf_counter()
        fn()
        return n / (time.perf_counter() - t0)

    return median_of(once, repeat)


def _cold(fn: Callable[[], object]) -> float:
    t0 = time.perf_counter()
    fn()
    return round(time.perf_counter() - t0, 3)


def _cold_and_rate(
    make: Callable[[], Any], slots: np.ndarray, x: np.ndarray, n: int, repeat: int
) -> tuple[float, float, Any]:
    """A fresh detector from ``make`` scores and learns ``x`` per run: the first run's seconds
    (compiling), samples/s (median of ``repeat``), and the last run's detector (its state)."""
    last: list[Any] = []

    def run() -> None:
        det = make()
        det.score_learn_many(slots, x)
        last[:] = [det]

    compile_s = _cold(run)
    return compile_s, _rate(run, n, repeat), last[0]


def bench_kernels(argv: list[str]) -> dict[str, Any]:
    """Per detector: samples/s (median of --repeat runs), River's and NumPy's in the same run."""
    ap = argparse.ArgumentParser(prog="carpulse bench kernels")
    ap.add_argument("--slots", type=count(), default=4096, help="entities (vehicle x signal)")
    ap.add_argument(
        "--samples", type=count(), default=4_000_000, help="samples per z-score/CUSUM run"
    )
    ap.add_argument("--hst-samples", type=count(), default=400_000)
    ap.add_argument("--river-samples", type=count(), default=20_000)
    ap.add_argument("--repeat", type=count(), default=5)
    ap.add_argument("--seed", type=count(0), default=0)
    ap.add_argument(
        "--nab-samples", type=count(), default=40_000, help="samples per NAB detector run"
    )
    ap.add_argument("--nab-slots", type=count(), default=16, help="slots of the contextOSE run")
    ap.add_argument("--only-nab", action="store_true", help="only the NAB detectors (quicker)")
    args = ap.parse_args(argv)
    if args.only_nab:
        return {"slots": args.nab_slots, "repeat": args.repeat, **bench_nab(args)}
    if args.samples < args.slots:  # each run steps every slot at least once
        ap.error(f"--samples {args.samples} is below --slots {args.slots}")

    from models.kernels import CrossSignalResidual, Cusum, HalfSpaceTrees, PageHinkley, RobustZScore
    from models.kernels.hst import hst_numpy
    from models.kernels.zscore import zscore_numpy

    rng = np.random.default_rng(args.seed)
    n, n_slots, rep = args.samples, args.slots, args.repeat
    steps = n // n_slots
    n = steps * n_slots
    slots = np.tile(np.arange(n_slots, dtype=np.int64), steps)
    x = rng.normal(size=n)
    small = (slots[:1000], x[:1000])
    out: dict[str, Any] = {"slots": n_slots, "repeat": rep, "compile_s": {}}

    # Cold start: the first call of each kernel compiles it (cache off: CARPULSE_NUMBA_CACHE=0).
    comp = out["compile_s"]
    comp["robust_zscore"] = _cold(lambda: RobustZScore().score_learn_many(*small))
    comp["cusum"] = _cold(lambda: Cusum().score_learn_many(*small))
    comp["page_hinkley"] = _cold(lambda: PageHinkley().update_many(*small))
    comp["half_space_trees"] = _cold(
        lambda: HalfSpaceTrees(3, seed=1).score_learn_many(small[0], rng.random((1000, 3)))
    )
    comp["cross_signal_residual"] = _cold(
        lambda: CrossSignalResidual(2).score_learn_many(
            small[0], rng.normal(size=(1000, 2)), small[1]
        )
    )

    # Robust z-score: ours, NumPy over all slots per step, River EWMean/EWVar per sample.
    z = RobustZScore(alpha=0.01, n_slots=n_slots)
    ours = _rate(lambda: z.score_learn_many(slots, x), n, rep)
    xm = x.reshape(steps, n_slots)
    npy = _rate(lambda: zscore_numpy(xm, 0.01, 3.0, 30), n, max(1, rep // 2))
    from river import stats

    def river_z() -> None:
        m, v = stats.EWMean(0.01), stats.EWVar(0.01)
        for val in x[: args.river_samples].tolist():
            sd = v.get() ** 0.5
            _ = (val - m.get()) / sd if sd > 0 else 0.0
            m.update(val)
            v.update(val)

    riv = _rate(river_z, args.river_samples, max(1, rep // 2))
    out["robust_zscore"] = _row(ours, riv, npy, z.state.bytes_per_slot())

    c = Cusum(n_slots=n_slots)
    out["cusum"] = _row(_rate(lambda: c.score_learn_many(slots, x), n, rep), None, None,
                        c.state.bytes_per_slot())  # fmt: skip

    ph = PageHinkley(n_slots=n_slots)
    ours = _rate(lambda: ph.update_many(slots, x), n, rep)
    from river import drift

    def river_ph() -> None:
        d = drift.PageHinkley()
        for val in x[: args.river_samples].tolist():
            d.update(val)

    riv = _rate(river_ph, args.river_samples, max(1, rep // 2))
    out["page_hinkley"] = _row(ours, riv, None, ph.state.bytes_per_slot())

    # Half-Space Trees with River's defaults (10 trees, height 8, window 250), 3 features.
    nh = args.hst_samples
    xh = rng.random((nh, 3))
    h1 = HalfSpaceTrees(3, seed=7)
    ours1 = _rate(lambda: h1.score_learn_many(np.zeros(nh, np.int64), xh), nh, rep)
    hs_slots = 256
    hsteps = nh // hs_slots
    hm = HalfSpaceTrees(3, seed=7, n_slots=hs_slots)
    hsl = np.tile(np.arange(hs_slots, dtype=np.int64), hsteps)
    xhm = xh[: hsteps * hs_slots]
    ours_m = _rate(lambda: hm.score_learn_many(hsl, xhm), hsteps * hs_slots, rep)
    xnp = xhm.reshape(hsteps, hs_slots, 3)[:300]
    npy = _rate(lambda: hst_numpy(xnp, hm.feature, hm.threshold, 8, 250), 300 * hs_slots, 1)
    from river import anomaly

    rows = [{"a": a, "b": b, "c": cc} for a, b, cc in xh[: args.river_samples].tolist()]

    def river_hst() -> None:
        model = anomaly.HalfSpaceTrees(seed=7)
        for r in rows:
            model.score_one(r)
            model.learn_one(r)

    riv = _rate(river_hst, len(rows), max(1, rep // 2))
    out["half_space_trees"] = _row(ours1, riv, npy, hm.state.bytes_per_slot())
    out["half_space_trees"]["samples_per_s_256_slots"] = round(ours_m)
    out["half_space_trees"]["speedup_vs_numpy"] = round(ours_m / npy, 1)

    r = CrossSignalResidual(3, n_slots=64)
    rs = slots[: n // 8] % 64
    xr = rng.normal(size=(rs.size, 3))
    out["cross_signal_residual"] = _row(
        _rate(lambda: r.score_learn_many(rs, xr, x[: rs.size]), rs.size, rep), None, None,
        r.state.bytes_per_slot(),
    )  # fmt: skip
    nab = bench_nab(args)
    comp.update(nab.pop("compile_s"))
    out.update(nab)
    return out


def _nab_series(n: int, n_slots: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Slot-interleaved series shaped like NAB's: a daily cycle at 5-minute steps, noise, steps."""
    rng = np.random.default_rng(seed)
    steps = n // n_slots
    t = np.arange(steps)[:, None]
    phase = rng.uniform(0, 2 * np.pi, n_slots)[None, :]
    level = np.cumsum(rng.random((steps, n_slots)) < 0.001, axis=0) * 2.0
    x = np.sin(2 * np.pi * t / 288 + phase) * 10 + level + rng.normal(0, 0.5, (steps, n_slots))
    slots = np.tile(np.arange(n_slots, dtype=np.int64), steps)
    return slots, np.round(x, 2).reshape(-1)


def bench_nab(args: argparse.Namespace) -> dict[str, Any]:
    """The NAB detectors' cost: samples/s per core and state bytes per slot (what the stream pays).

    contextOSE's speed falls as a slot learns contexts, so a run starts from empty detectors and
    covers ``--nab-samples`` samples over ``--nab-slots`` slots (whole-run rate, NAB-sized series).
    """
    from carpulse.evals.nab import CONTEXT_CAP, CONTEXT_MARGIN
    from models.kernels import RobustZScore
    from models.kernels.artime import ARTime
    from models.kernels.context import ContextOSE
    from models.kernels.likelihood import AnomalyLikelihood
    from models.kernels.neighbour import NNLikelihood
    from models.kernels.spatial import SpatialAnomaly

    n_slots, rep = args.nab_slots, max(1, args.repeat // 2)
    slots, x = _nab_series(args.nab_samples, n_slots, args.seed)
    n = slots.size
    out: dict[str, Any] = {
        "nab_series": {"samples": n, "slots": n_slots, "rows_per_slot": n // n_slots}
    }
    per_slot = {}
    out["compile_s"] = {
        "context_ose": _cold(
            lambda: ContextOSE(calib=50, rest=10).score_learn_many(slots[:2000] % 2, x[:2000])
        )
    }
    for name, cap in (("context_ose", 4096), ("context_ose_eval_cap", CONTEXT_CAP)):
        kw = {"calib": 750, "rest": 150, "margin": CONTEXT_MARGIN, "max_contexts": cap,
              "max_semis": cap}  # fmt: skip
        last: list[ContextOSE] = []

        def run(kw: dict[str, Any] = kw, last: list[ContextOSE] = last) -> None:
            det = ContextOSE(n_slots=n_slots, **kw)
            det.score_learn_many(slots, x)
            last[:] = [det]

        rate = _rate(run, n, rep)
        ctx = [last[0].contexts(k) for k in range(n_slots)]
        out[name] = {
            "samples_per_s": round(rate),
            "state_bytes_per_entity": last[0].state.bytes_per_slot(),
            "max_contexts": cap,
            "contexts_learned_max": int(max(ctx)),
        }
        per_slot[name] = (rate, last[0].state.bytes_per_slot())

    # The NN likelihood and the z-score likelihood as the stream runs them: per slot, one call.
    def nn_run() -> None:
        NNLikelihood(calib=750, n_slots=n_slots).score_learn_many(slots, x)

    NNLikelihood(calib=30).score_learn_many(slots[:200] % 2, x[:200])  # compile outside timing
    rate_nn = _rate(nn_run, n, rep)
    nn_bytes = NNLikelihood(calib=750).state.bytes_per_slot()
    out["nn_likelihood"] = {"samples_per_s": round(rate_nn), "state_bytes_per_entity": nn_bytes}

    def z_run() -> None:
        z = RobustZScore(alpha=0.01, clip=3.0, warmup=50, n_slots=n_slots)
        lik = AnomalyLikelihood(long_alpha=2e-3, short_alpha=0.2, warmup=100, n_slots=n_slots)
        lik.score_learn_many(slots, np.abs(z.score_learn_many(slots, x)))

    z_run()
    rate_z = _rate(z_run, n, rep)
    z_bytes = RobustZScore().state.bytes_per_slot() + AnomalyLikelihood().state.bytes_per_slot()
    out["zscore_likelihood"] = {"samples_per_s": round(rate_z), "state_bytes_per_entity": z_bytes}

    out["compile_s"]["artime"], rate_a, art = _cold_and_rate(
        lambda: ARTime(calib=750, n_slots=n_slots), slots, x, n, rep
    )
    a_bytes = art.state.bytes_per_slot()
    out["artime"] = {
        "samples_per_s": round(rate_a),
        "state_bytes_per_entity": a_bytes,
        "max_categories": art.params.max_categories,
        "categories_learned_max": max(art.categories(k) for k in range(n_slots)),
    }
    out["compile_s"]["spatial"], rate_s, sp = _cold_and_rate(
        lambda: SpatialAnomaly(warmup=750, n_slots=n_slots), slots, x, n, rep
    )
    s_bytes = sp.state.bytes_per_slot()
    out["spatial"] = {"samples_per_s": round(rate_s), "state_bytes_per_entity": s_bytes}
    out["artime_spatial"] = {
        "samples_per_s": round(1.0 / (1.0 / rate_a + 1.0 / rate_s)),
        "state_bytes_per_entity": a_bytes + s_bytes,
        "note": "ARTime and the spatial anomaly on every sample",
    }
    for name, key in (("context_ensemble", "context_ose"),
                      ("context_ensemble_eval_cap", "context_ose_eval_cap")):  # fmt: skip
        rate_c, bytes_c = per_slot[key]
        out[name] = {
            "samples_per_s": round(1.0 / (1.0 / rate_c + 1.0 / rate_nn + 1.0 / rate_z)),
            "state_bytes_per_entity": bytes_c + nn_bytes + z_bytes,
            "note": "all three parts run on every sample: 1/rate and state add up",
        }
    rate_c, bytes_c = per_slot["context_ose"]
    out["artime_nn"] = {
        "samples_per_s": round(1.0 / (1.0 / rate_nn + 1.0 / rate_a)),
        "state_bytes_per_entity": nn_bytes + a_bytes,
        "note": "ARTime and the NN likelihood on every sample",
    }
    out["artime_ensemble"] = {
        "samples_per_s": round(1.0 / (1.0 / rate_c + 1.0 / rate_nn + 1.0 / rate_z + 1.0 / rate_a)),
        "state_bytes_per_entity": bytes_c + nn_bytes + z_bytes + a_bytes,
        "note": "ARTime and the context ensemble (cap 4096) on every sample",
    }
    return out


def _row(
    ours: float, river: float | None, numpy_rate: float | None, state_bytes: int
) -> dict[str, Any]:
    row: dict[str, Any] = {"samples_per_s": round(ours), "state_bytes_per_entity": state_bytes}
    if river is not None:
        row["river_samples_per_s"] = round(river)
        row["speedup_vs_river"] = round(ours / river, 1)
    if numpy_rate is not None:
        row["numpy_samples_per_s"] = round(numpy_rate)
        row["speedup_vs_numpy"] = round(ours / numpy_rate, 1)
    return row
