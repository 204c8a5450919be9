"""``carpulse eval nab``: run our detectors on the Numenta Anomaly Benchmark and score them as NAB does."""

from __future__ import annotations

import argparse
import csv
import json
import logging
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from carpulse.evals.nab_scorer import (
    PROFILES,
    FileSweep,
    probation_length,
    score_at,
    score_corpus,
    sweep_file,
)
from core.errors import ConfigError
from models.kernels import Cusum, HalfSpaceTrees, PageHinkley, RobustZScore
from models.kernels.artime import ARTime
from models.kernels.context import ContextOSE
from models.kernels.gaussian import windowed_gaussian
from models.kernels.likelihood import AnomalyLikelihood
from models.kernels.neighbour import NNLikelihood, nn_likelihood
from models.kernels.spatial import SpatialAnomaly

log = logging.getLogger(__name__)


@dataclass
class NabFile:
    rel: str  # "<category>/<file>.csv" as in NAB's label files
    timestamps: np.ndarray  # datetime64[s]
    ts_text: list[str]
    values: np.ndarray


def read_nab_csv(path: Path, rel: str) -> tuple[NabFile | None, list[str]]:
    """Read ``timestamp,value``; bad rows are dropped and reported with file and line."""
    problems: list[str] = []
    ts_text: list[str] = []
    vals: list[float] = []
    last: Any = np.datetime64("NaT")
    with path.open(newline="") as fh:
        reader = csv.reader(fh)
        header = next(reader, None)
        if header is None or [h.strip() for h in header[:2]] != ["timestamp", "value"]:
            return None, [f"{path}:1: header must be 'timestamp,value', got {header}"]
        for line, row in enumerate(reader, start=2):
            try:
                t = np.datetime64(row[0].strip(), "s")
                v = float(row[1])
            except (IndexError, ValueError) as err:
                problems.append(f"{path}:{line}: bad row {row!r}: {err}")
                continue
            if ts_text and t < last:
                # A streaming detector cannot take a sample from the past: drop it, say where.
                problems.append(f"{path}:{line}: timestamp {row[0]} is before the previous row")
                continue
            last = t
            ts_text.append(row[0].strip())
            vals.append(v)
    ts = np.array(ts_text, "datetime64[s]")
    return NabFile(rel, ts, ts_text, np.array(vals)), problems


def load_corpus(
    data: Path, labels: Path
) -> tuple[list[NabFile], dict[str, list[list[str]]], list[str]]:
    """Every CSV under ``data`` (``<category>/<file>.csv``) that the labels file knows."""
    if not data.is_dir():
        raise ConfigError(f"NAB data folder {data} does not exist")
    try:
        windows = json.loads(labels.read_text())
    except (OSError, ValueError) as err:
        raise ConfigError(f"cannot read NAB labels {labels}: {err}") from err
    files: list[NabFile] = []
    problems: list[str] = []
    for path in sorted(data.rglob("*.csv")):
        rel = path.relative_to(data).as_posix()
        if rel not in windows:
            problems.append(f"{path}: not in {labels.name}, skipped")
            continue
        f, probs = read_nab_csv(path, rel)
        problems.extend(probs)
        if f is not None and f.values.size:
            files.append(f)
    if not files:
        raise ConfigError(f"no labelled NAB CSV files under {data}")
    return files, windows, problems


def _corpus_batch(files: list[NabFile], arrays: list[np.ndarray]) -> tuple[np.ndarray, np.ndarray]:
    """All files as one micro-batch: slot = file, so one kernel call runs the whole corpus."""
    slots = np.concatenate([np.full(a.shape[0], k, np.int64) for k, a in enumerate(arrays)])
    return slots, np.concatenate(arrays)


def _split(files: list[NabFile], out: np.ndarray) -> list[np.ndarray]:
    return np.split(out, np.cumsum([f.values.size for f in files])[:-1])


def _standardise(f: NabFile) -> np.ndarray:
    """Scale by the probationary part only (what a streaming detector may know at that point)."""
    p = max(int(probation_length(f.values.size)), 2)
    head = f.values[:p]
    lo, hi = np.min(head), np.max(head)
    span = hi - lo if hi > lo else max(abs(hi), 1.0)
    return (f.values - lo) / span


def _likelihood(
    files: list[NabFile], raw: list[np.ndarray], short_alpha: float = 0.2
) -> list[np.ndarray]:
    slots, v = _corpus_batch(files, raw)
    lik = AnomalyLikelihood(
        long_alpha=2e-3, short_alpha=short_alpha, warmup=100, n_slots=len(files)
    )
    return _split(files, lik.score_learn_many(slots, v))


def det_zscore(files: list[NabFile]) -> list[np.ndarray]:
    slots, v = _corpus_batch(files, [_standardise(f) for f in files])
    z = RobustZScore(alpha=0.01, clip=3.0, warmup=50, n_slots=len(files)).score_learn_many(slots, v)
    return _likelihood(files, _split(files, np.abs(z)))


def det_cusum(files: list[NabFile]) -> list[np.ndarray]:
    slots, v = _corpus_batch(files, [_standardise(f) for f in files])
    g = Cusum(alpha=0.005, k=0.5, h=8.0, warmup=50, n_slots=len(files)).score_learn_many(slots, v)
    return _likelihood(files, _split(files, np.minimum(g, 1.0)))


def det_page_hinkley(files: list[NabFile]) -> list[np.ndarray]:
    slots, v = _corpus_batch(files, [_standardise(f) for f in files])
    ph = PageHinkley(min_instances=50, delta=0.005, threshold=10.0, n_slots=len(files))
    return _split(files, np.clip(ph.update_many(slots, v), 0.0, None) / 2.0)


def det_hst(files: list[NabFile]) -> list[np.ndarray]:
    feats = []
    for f in files:
        x = _standardise(f)
        feats.append(np.c_[x, np.r_[0.0, np.diff(x)]])
    slots, v = _corpus_batch(files, feats)
    hst = HalfSpaceTrees(2, n_trees=25, height=10, window_size=250,
                         limits=[(-1.0, 2.0), (-1.5, 1.5)], seed=42, n_slots=len(files))  # fmt: skip
    return _likelihood(files, _split(files, hst.score_learn_many(slots, v)))


def det_ensemble(files: list[NabFile]) -> list[np.ndarray]:
    parts = [det_zscore(files), det_hst(files), det_cusum(files)]
    return [np.maximum.reduce([p[k] for p in parts]) for k in range(len(files))]


def _offsets(files: list[NabFile]) -> np.ndarray:
    return np.r_[0, np.cumsum([f.values.size for f in files])].astype(np.int64)


def det_windowed_gaussian(files: list[NabFile]) -> list[np.ndarray]:
    """NAB's own ``windowedGaussian`` (published 39.6 on the full corpus), as a check of the scoring."""
    return _split(
        files, windowed_gaussian(np.concatenate([f.values for f in files]), _offsets(files))
    )


def det_nn_likelihood(files: list[NabFile]) -> list[np.ndarray]:
    # The distance scale is taken from each file's probationary rows only (never scored).
    calib = np.array([int(probation_length(f.values.size)) for f in files], np.int64)
    x = np.concatenate([f.values for f in files])
    return _split(files, nn_likelihood(x, _offsets(files), calib))


# Range margin of the contextOSE port: chosen on the tune split only (0.25, 0.5, 0.75, 1.0 tried:
# tune standard 44.3, 60.1, 59.3, 54.2); NAB's original reads the whole file's min/max instead.
CONTEXT_MARGIN = 0.5
CONTEXT_CAP = (
    65536  # contexts per slot in the eval (``--context-cap``); the stream's default is 4096
)
_cap = [CONTEXT_CAP]  # set by ``evaluate`` for the length of one detector run


def _by_probation(files: list[NabFile], make: Callable[[int, int, int], Any]) -> list[np.ndarray]:
    """Files with the same probation share one streaming detector (one slot each), fed in one call.

    ``make(n_slots, calib, rest)`` builds the detector: calib = NAB's probationary rows (15% of
    the file, at most 750), rest = a fifth of them, as NAB gives its detectors.
    """
    out: list[np.ndarray] = [np.zeros(0)] * len(files)
    groups: dict[tuple[int, int], list[int]] = {}
    for k, f in enumerate(files):
        p = probation_length(f.values.size)
        groups.setdefault((max(int(p), 1), max(int(p / 5.0), 1)), []).append(k)
    for (calib, rest), idx in groups.items():
        det = make(len(idx), calib, rest)
        slots, v = _corpus_batch([files[k] for k in idx], [files[k].values for k in idx])
        res = _split([files[k] for k in idx], det.score_learn_many(slots, v))
        for k, r in zip(idx, res, strict=True):
            out[k] = r
    return out


def det_nn_stream(files: list[NabFile]) -> list[np.ndarray]:
    """The NN likelihood as the stream runs it: per slot, calibrated on the probationary rows."""
    return _by_probation(files, lambda n, calib, _rest: NNLikelihood(calib=calib, n_slots=n))


def det_context_ose(files: list[NabFile]) -> list[np.ndarray]:
    """NAB's contextOSE (CAD-OSE) without its look-ahead: the range comes from the probation rows.

    NAB's protocol gives the detector the probationary length (15% of the file, at most 750 rows)
    and a rest period of a fifth of it; files with the same lengths share one detector, one slot each.
    """
    return _by_probation(
        files,
        lambda n, calib, rest: ContextOSE(
            n_slots=n, calib=calib, rest=rest, margin=CONTEXT_MARGIN,
            max_contexts=_cap[0], max_semis=_cap[0],
        ),
    )  # fmt: skip


def det_context_nn(files: list[NabFile]) -> list[np.ndarray]:
    """Mean of contextOSE and the NN likelihood (mean, max and rescaled forms compared on tune)."""
    return [
        (a + b) / 2.0 for a, b in zip(det_context_ose(files), det_nn_likelihood(files), strict=True)
    ]


def det_context_ensemble(files: list[NabFile]) -> list[np.ndarray]:
    """Mean of contextOSE, the NN likelihood and the robust z-score likelihood (three views: context
    novelty, shape discords, level excursions), each already in [0, 1]."""
    parts = [det_context_ose(files), det_nn_stream(files), det_zscore(files)]
    return [(a + b + c) / 3.0 for a, b, c in zip(*parts, strict=True)]


def det_artime(files: list[NabFile]) -> list[np.ndarray]:
    """ARTime without its look-ahead: the range from the probation rows widened by half of itself
    (margin 0, 0.25, 0.5, 1.0 tried: tune standard 54.2, 62.3, 71.3, 68.7 with the plain reference)."""
    return _by_probation(files, lambda n, calib, _rest: ARTime(n_slots=n, calib=calib, margin=0.5))


def det_artime_ensemble(files: list[NabFile]) -> list[np.ndarray]:
    """The larger of ARTime and the context ensemble: ARTime fires rarely and late-ish, the context
    ensemble often and early; either one alone is enough to alert."""
    return [
        np.maximum(a, b)
        for a, b in zip(det_artime(files), det_context_ensemble(files), strict=True)
    ]


def det_artime_nn(files: list[NabFile]) -> list[np.ndarray]:
    """Mean of ARTime and the NN likelihood: most of the ensemble's quality at a fraction of its
    cost (no contextOSE)."""
    return [(a + b) / 2.0 for a, b in zip(det_artime(files), det_nn_stream(files), strict=True)]


# NAB's SPATIAL_TOLERANCE (nab/detectors/numenta), not tuned: 0.02/0.03/0.05/0.08 give tune
# standard 78.35/78.33/78.83/75.15 for ARTime + spatial anomaly.
SPATIAL_TOLERANCE = 0.05


def det_spatial(files: list[NabFile]) -> list[np.ndarray]:
    """NAB's HTM "spatial anomaly" alone: 1 when a value leaves the range seen so far by 5% of it
    (the probationary rows only set the range, as the stream's calibration rows do)."""
    return _by_probation(
        files,
        lambda n, calib, _rest: SpatialAnomaly(
            tolerance=SPATIAL_TOLERANCE, warmup=calib, n_slots=n
        ),
    )


def det_artime_spatial(files: list[NabFile]) -> list[np.ndarray]:
    """The larger of ARTime and the spatial anomaly: ARTime clips values beyond its calibrated
    range, the spatial anomaly fires on exactly those (as NAB's HTM wrapper does for HTM)."""
    return [np.maximum(a, b) for a, b in zip(det_artime(files), det_spatial(files), strict=True)]


DETECTORS: dict[str, Callable[[list[NabFile]], list[np.ndarray]]] = {
    "carpulse_artime_spatial": det_artime_spatial,
    "carpulse_artime_ensemble": det_artime_ensemble,
    "carpulse_artime_nn": det_artime_nn,
    "carpulse_artime": det_artime,
    "carpulse_context_ensemble": det_context_ensemble,
    "carpulse_context_nn": det_context_nn,
    "carpulse_context_ose": det_context_ose,
    "carpulse_nn_likelihood": det_nn_likelihood,
    "nab_windowed_gaussian": det_windowed_gaussian,
    "carpulse_zscore": det_zscore,
    "carpulse_spatial": det_spatial,
    "carpulse_cusum": det_cusum,
    "carpulse_page_hinkley": det_page_hinkley,
    "carpulse_hst": det_hst,
    "carpulse_ensemble": det_ensemble,
}


def write_results(
    out: Path,
    detector: str,
    files: list[NabFile],
    sweeps: list[FileSweep],
    scores: list[np.ndarray],
) -> None:
    """NAB's results layout, so NAB's own scorer can be run on our detections."""
    for f, sw, sc in zip(files, sweeps, scores, strict=True):
        category, name = f.rel.split("/", 1)
        folder = out / detector / category
        folder.mkdir(parents=True, exist_ok=True)
        with (folder / f"{detector}_{name}").open("w", newline="") as fh:
            w = csv.writer(fh)
            w.writerow(["timestamp", "value", "anomaly_score", "label"])
            label = (sw.window >= 0).astype(int)
            for t, v, s, lab in zip(
                f.ts_text, f.values.tolist(), sc.tolist(), label.tolist(), strict=True
            ):
                w.writerow([t, repr(v), f"{s:.12g}", lab])


def plot_results(
    out: Path,
    detector: str,
    files: list[NabFile],
    sweeps: list[FileSweep],
    scores: list[np.ndarray],
    threshold: float,
) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    cols = 3
    rows = (len(files) + cols - 1) // cols
    fig, axes = plt.subplots(rows, cols, figsize=(5 * cols, 2.2 * rows), squeeze=False)
    for ax, f, sw, sc in zip(axes.flat, files, sweeps, scores, strict=False):
        ax.plot(f.timestamps, f.values, lw=0.5, color="0.3")
        for k in np.unique(sw.window[sw.window >= 0]):
            idx = np.nonzero(sw.window == k)[0]
            ax.axvspan(f.timestamps[idx[0]], f.timestamps[idx[-1]], color="tab:orange", alpha=0.25)
        hit = sc >= threshold
        ax.plot(f.timestamps[hit], f.values[hit], "r.", ms=3)
        ax.set_title(f.rel, fontsize=7)
        ax.tick_params(labelsize=5)
    for ax in axes.flat[len(files) :]:
        ax.axis("off")
    fig.suptitle(f"{detector}: windows (orange), detections at the standard threshold (red)")
    fig.tight_layout()
    path = out / f"{detector}_nab.png"
    fig.savefig(path, dpi=80)
    plt.close(fig)
    return path


def tune_split(files: list[NabFile]) -> tuple[list[int], list[int]]:
    """Files 0, 2, 4... of each category (sorted by name) to tune on; the others held out."""
    by_cat: dict[str, list[int]] = {}
    for k, f in enumerate(files):
        by_cat.setdefault(f.rel.split("/", 1)[0], []).append(k)
    tune = sorted(k for ks in by_cat.values() for k in ks[0::2])
    return tune, sorted(set(range(len(files))) - set(tune))


def split_scores(
    files: list[NabFile], sweeps: list[FileSweep], scores: list[np.ndarray]
) -> dict[str, dict[str, float]]:
    """Scores on the tuning half and on the held-out half, each with its own optimised threshold."""
    out: dict[str, dict[str, float]] = {}
    tuned: dict[str, float] = {}
    for part, idx in zip(("tune", "holdout"), tune_split(files), strict=True):
        if not any(sweeps[k].n_windows for k in idx):
            continue  # no window to find: normalisation is undefined
        res = score_corpus([sweeps[k] for k in idx], [scores[k] for k in idx])
        out[part] = {
            "files": len(idx),
            "score_standard": round(res["standard"].score, 2),
            "score_low_fp": round(res["reward_low_FP_rate"].score, 2),
            "score_low_fn": round(res["reward_low_FN_rate"].score, 2),
        }
        if part == "tune":
            tuned = {name: r.threshold for name, r in res.items()}
        elif tuned:
            # The held-out files at the thresholds chosen on the tune files: nothing of the
            # held-out half chose anything.
            for key, name in (("standard", "standard"), ("low_fp", "reward_low_FP_rate"),
                              ("low_fn", "reward_low_FN_rate")):  # fmt: skip
                r, w = res[name], PROFILES[name]
                raw = sum(score_at(sweeps[k], scores[k], tuned[name], w) for k in idx)
                norm = 100.0 * (raw - r.null) / (r.perfect - r.null)
                out[part][f"score_{key}_at_tune_threshold"] = round(norm, 2)
    return out


def evaluate(
    data: Path,
    labels: Path,
    out: Path | None,
    detector: str,
    plots: bool = True,
    context_cap: int = CONTEXT_CAP,
) -> dict[str, Any]:
    files, windows, problems = load_corpus(data, labels)
    for p in problems:
        log.warning("%s", p)
    sweeps = [sweep_file(f.rel, f.timestamps, [tuple(w) for w in windows[f.rel]]) for f in files]  # type: ignore[misc]
    names = list(DETECTORS) if detector == "all" else [detector]
    results: dict[str, Any] = {}
    for name in names:
        if name not in DETECTORS:
            raise ConfigError(f"unknown NAB detector {name!r}; known: {', '.join(DETECTORS)}, all")
        _cap[0] = context_cap
        try:
            scores = DETECTORS[name](files)
        finally:
            _cap[0] = CONTEXT_CAP
        res = score_corpus(sweeps, scores)
        if out is not None:
            write_results(out, name, files, sweeps, scores)
            if plots:
                plot_results(out, name, files, sweeps, scores, res["standard"].threshold)
        results[name] = {
            "detector": name,
            "score_standard": round(res["standard"].score, 2),
            "score_low_fp": round(res["reward_low_FP_rate"].score, 2),
            "score_low_fn": round(res["reward_low_FN_rate"].score, 2),
            "files": len(files),
            "windows": int(sum(sw.n_windows for sw in sweeps)),
            "thresholds": {k: round(v.threshold, 6) for k, v in res.items()},
            "raw": {k: round(v.raw, 4) for k, v in res.items()},
            "split": split_scores(files, sweeps, scores),
        }
    best = max(results.values(), key=lambda r: r["score_standard"])
    report = dict(best) if detector == "all" else results[names[0]]
    if detector == "all":
        report["all"] = {
            k: {m: v[m] for m in ("score_standard", "score_low_fp", "score_low_fn")}
            for k, v in results.items()
        }
    report["bad_input"] = len(problems)
    report["note"] = "partial NAB corpus: an estimate of the full-corpus score, not the same number"
    return report


def main(argv: list[str]) -> dict[str, Any]:
    from core.datasets import shared_data_dir

    ap = argparse.ArgumentParser(prog="carpulse eval nab")
    ap.add_argument("--data", type=Path, default=shared_data_dir() / "nab" / "data")
    ap.add_argument(
        "--labels", type=Path, default=None, help="combined_windows.json (default beside --data)"
    )
    ap.add_argument(
        "--out", type=Path, default=None, help="results folder (NAB layout) and PNG plots"
    )
    ap.add_argument(
        "--detector", default="carpulse_artime_spatial", help=f"{', '.join(DETECTORS)} or all"
    )
    ap.add_argument("--no-plots", action="store_true")
    ap.add_argument(
        "--context-cap", type=int, default=CONTEXT_CAP,
        help="contexts per file kept by contextOSE (memory cap; the stream uses 4096)",
    )  # fmt: skip
    args = ap.parse_args(argv)
    if args.context_cap < 1:
        raise ConfigError(f"--context-cap must be >= 1, got {args.context_cap}")
    labels = args.labels or args.data.parent / "combined_windows.json"
    return evaluate(
        args.data, labels, args.out, args.detector, plots=not args.no_plots,
        context_cap=args.context_cap,
    )  # fmt: skip
