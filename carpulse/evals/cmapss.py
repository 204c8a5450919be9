"""``carpulse eval cmapss``: RMSE and NASA score of the RUL model on C-MAPSS FD001 (test files or held-out engines)."""

from __future__ import annotations

import argparse
import logging
import time
from pathlib import Path
from typing import Any

import numpy as np

from core.errors import ConfigError
from models.rul.data import Series, last_rows, read_rul, read_series
from models.rul.features import window_features
from models.rul.model import BASELINE, RUL_CAP, WINDOW, nasa_score, rmse, rul_features
from models.rul.train import (
    BASELINE_NAME,
    MODEL_NAME,
    default_train_file,
    fit,
    fit_baseline,
    to_onnx,
)

log = logging.getLogger(__name__)

# Official FD001 test series stop 31 or more cycles into a life, with true RUL 7..145.
MIN_SEEN = 31
RUL_LO, RUL_HI = 7, 145
# Engines kept out of all tuning (issue 20): the first HOLDOUT of a permutation seeded HOLDOUT_SEED.
HOLDOUT, HOLDOUT_SEED = 20, 20


def _onnx_predict(model: Any, features: np.ndarray) -> np.ndarray:
    """Predict through the exported ONNX graph (what ships), not through scikit-learn."""
    import onnxruntime as ort

    opts = ort.SessionOptions()
    opts.intra_op_num_threads = 1
    sess = ort.InferenceSession(
        to_onnx(model, features.shape[1]), opts, providers=["CPUExecutionProvider"]
    )
    (y,) = sess.run(None, {"features": features.astype(np.float32)})[:1]
    return np.clip(np.asarray(y, dtype=np.float64).reshape(-1), 0.0, RUL_CAP)


def _sklearn_predict(model: Any, features: np.ndarray) -> np.ndarray:
    return np.clip(model.predict(features), 0.0, RUL_CAP)


def _baseline_features(unit: np.ndarray, sensors: np.ndarray) -> np.ndarray:
    return window_features(unit, sensors, WINDOW, BASELINE)


# name -> (fit, features, predict): the shipped model runs through ONNX, the old one in scikit-learn
KINDS: dict[str, tuple[Any, Any, Any]] = {
    "model": (fit, rul_features, _onnx_predict),
    "baseline": (fit_baseline, _baseline_features, _sklearn_predict),
}


def truncation_points(
    series: Series, rng: np.random.Generator, cuts: int = 1
) -> tuple[np.ndarray, np.ndarray]:
    """``cuts`` cuts per unit, as the official test set: >= 31 cycles seen, true RUL uniform in 7..145.

    Returns the row index of each cut and the true (uncapped) RUL there.
    """
    rows: list[int] = []
    ruls: list[int] = []
    for u in series.units():
        idx = np.flatnonzero(series.unit == u)
        hi = min(RUL_HI, len(idx) - MIN_SEEN)
        if hi < RUL_LO:
            continue  # too short a life to cut like the test set
        for _ in range(cuts):
            r = int(rng.integers(RUL_LO, hi + 1))
            rows.append(int(idx[len(idx) - 1 - r]))
            ruls.append(r)
    return np.asarray(rows, dtype=np.int64), np.asarray(ruls, dtype=np.float64)


def split_engines(units: np.ndarray, holdout: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """(tuning engines, held-out engines), both sorted; the held-out ones are never tuned on."""
    if not 0 < holdout < len(units):
        raise ConfigError(f"--holdout must be in 1..{len(units) - 1}, got {holdout}")
    hold = np.sort(np.random.default_rng(seed).permutation(units)[:holdout])
    return np.setdiff1d(units, hold), hold


def _cut_rows(
    series: Series, units: np.ndarray, cuts: int, rng: np.random.Generator
) -> tuple[np.ndarray, np.ndarray]:
    """Cuts of ``units`` as row indices into ``series`` (features are causal per unit, so the cut
    row's features equal those of the truncated series) and the true RUL there."""
    mask = np.isin(series.unit, units)
    rows, ruls = truncation_points(series.select(mask), rng, cuts)
    return np.flatnonzero(mask)[rows], ruls


def held_out(
    series: Series,
    folds: int,
    seed: int,
    holdout: int = HOLDOUT,
    holdout_seed: int = HOLDOUT_SEED,
    cuts: int = 5,
    kinds: tuple[str, ...] = ("model", "baseline"),
) -> dict[str, dict[str, tuple[np.ndarray, np.ndarray]]]:
    """Tuning CV (k folds by engine over the tuning engines) and the held-out engines (trained on
    all tuning engines), every kind scored on the same cuts. Returns kind -> part -> (pred, true)."""
    tune, hold = split_engines(series.units(), holdout, holdout_seed)
    rng = np.random.default_rng(seed)
    parts = np.array_split(tune, folds)
    cv_cuts = [_cut_rows(series, part, cuts, rng) for part in parts]
    hold_cut = _cut_rows(series, hold, cuts, rng)
    out: dict[str, dict[str, tuple[np.ndarray, np.ndarray]]] = {}
    for kind in kinds:
        fit_fn, feat_fn, predict = KINDS[kind]
        feats = feat_fn(series.unit, series.sensors)
        preds: list[np.ndarray] = []
        for part, (rows, _) in zip(parts, cv_cuts, strict=True):
            train = np.isin(series.unit, tune) & ~np.isin(series.unit, part)
            preds.append(predict(fit_fn(series.select(train), seed=seed), feats[rows]))
        model = fit_fn(series.select(np.isin(series.unit, tune)), seed=seed)
        out[kind] = {
            "cv": (np.concatenate(preds), np.concatenate([t for _, t in cv_cuts])),
            "held_out": (predict(model, feats[hold_cut[0]]), hold_cut[1]),
        }
    return out


def official(
    train: Series,
    test: Series,
    rul: np.ndarray,
    seed: int,
    kinds: tuple[str, ...] = ("model", "baseline"),
) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    if len(rul) != len(test.units()):
        raise ConfigError(f"RUL file has {len(rul)} values for {len(test.units())} test engines")
    out: dict[str, tuple[np.ndarray, np.ndarray]] = {}
    for kind in kinds:
        fit_fn, feat_fn, predict = KINDS[kind]
        feats = feat_fn(test.unit, test.sensors)
        out[kind] = (predict(fit_fn(train, seed=seed), feats[last_rows(test.unit)]), rul)
    return out


def _figures(pred: np.ndarray, true: np.ndarray) -> dict[str, Any]:
    capped = np.minimum(true, RUL_CAP)
    return {
        "rmse": round(rmse(pred, capped), 3),
        "score": round(nasa_score(pred, capped), 1),
        "rmse_uncapped_truth": round(rmse(pred, true), 3),
        "cuts": len(pred),
    }


def _speed(train: Series) -> dict[str, float]:
    """Median rows/s (5 runs) of the shipped numba features and of the shipped ONNX model on the train file."""
    from carpulse.bench import median_of
    from models.rul.model import MODEL_PATH, RulModel

    def timed(fn: Any) -> float:
        t0 = time.perf_counter()
        fn()
        return time.perf_counter() - t0

    n = len(train)
    rul_features(train.unit[:100], train.sensors[:100])  # compile first
    t_feat = median_of(lambda: timed(lambda: rul_features(train.unit, train.sensors)), 5)
    out: dict[str, float] = {"features_rows_per_s": round(n / t_feat)}
    if MODEL_PATH.is_file():
        model = RulModel()
        x = rul_features(train.unit, train.sensors)
        out["onnx_rows_per_s"] = round(
            n / median_of(lambda: timed(lambda: model.predict_features(x)), 5)
        )
    return out


def plot(pred: np.ndarray, true: np.ndarray, out: Path, title: str) -> list[str]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    out.mkdir(parents=True, exist_ok=True)
    capped = np.minimum(true, RUL_CAP)
    fig, ax = plt.subplots(1, 2, figsize=(11, 4.5))
    ax[0].scatter(capped, pred, s=10)
    ax[0].plot([0, RUL_CAP], [0, RUL_CAP], "k--", lw=1)
    ax[0].set(xlabel="true RUL (capped)", ylabel="predicted RUL", title=title)
    order = np.argsort(capped)
    ax[1].plot(capped[order], "k-", label="true (capped)")
    ax[1].plot(pred[order], "o", ms=3, label="predicted")
    ax[1].set(xlabel="engine (sorted by true RUL)", ylabel="RUL", title="per engine")
    ax[1].legend()
    fig.tight_layout()
    path = out / "cmapss_rul.png"
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return [str(path)]


def main(argv: list[str]) -> dict[str, Any]:
    ap = argparse.ArgumentParser(prog="carpulse eval cmapss", description=__doc__)
    ap.add_argument(
        "--train", type=Path, default=None, help="train_FD001.txt (default shared data)"
    )
    ap.add_argument("--test", type=Path, default=None, help="test_FD001.txt (official protocol)")
    ap.add_argument("--rul", type=Path, default=None, help="RUL_FD001.txt, with --test")
    ap.add_argument("--folds", type=int, default=5, help="k-fold by engine over the tuning engines")
    ap.add_argument("--holdout", type=int, default=HOLDOUT, help="engines kept out of all tuning")
    ap.add_argument(
        "--holdout-seed", type=int, default=HOLDOUT_SEED, help="picks the held-out engines"
    )
    ap.add_argument("--cuts", type=int, default=5, help="random cuts per scored engine")
    ap.add_argument("--seed", type=int, default=0, help="cuts and model seeds")
    ap.add_argument("--no-baseline", action="store_true", help="skip the old model (half the time)")
    ap.add_argument("--out", type=Path, default=None, help="folder for PNG plots")
    args = ap.parse_args(argv)
    if (args.test is None) != (args.rul is None):
        raise ConfigError("--test and --rul go together")
    if args.folds < 2:
        raise ConfigError(f"--folds must be >= 2, got {args.folds}")
    if args.cuts < 1:
        raise ConfigError(f"--cuts must be >= 1, got {args.cuts}")
    kinds = ("model",) if args.no_baseline else ("model", "baseline")
    train = read_series(args.train or default_train_file())
    result: dict[str, Any] = {
        "model": MODEL_NAME + " -> ONNX (skl2onnx), run with onnxruntime",
        "rul_cap": RUL_CAP,
        "truth": "capped at rul_cap (customary); rmse_uncapped_truth compares with raw RUL",
    }
    if args.test is not None:
        got = official(train, read_series(args.test), read_rul(args.rul), args.seed, kinds)
        result["protocol"] = "official test set (last cycle of each test engine)"
        result.update(_figures(*got["model"]))
        result["engines"] = len(got["model"][1])
        pred, true = got["model"]
        if "baseline" in got:
            base = _figures(*got["baseline"])
            result["baseline"] = {"model": BASELINE_NAME, **base}
            result["rmse_ratio"] = round(result["rmse"] / base["rmse"], 3)
    else:
        res = held_out(
            train, args.folds, args.seed, args.holdout, args.holdout_seed, args.cuts, kinds
        )
        tune, hold = split_engines(train.units(), args.holdout, args.holdout_seed)
        result["protocol"] = (
            f"tuning CV: {args.folds} folds by engine over {len(tune)} engines; held out: "
            f"{len(hold)} engines (permutation seed {args.holdout_seed}) never tuned on, scored "
            f"by a model trained on the {len(tune)}; each scored engine cut {args.cuts}x at random "
            f"(>= {MIN_SEEN} cycles seen, true RUL {RUL_LO}..{RUL_HI}, seed {args.seed})"
        )
        result.update(_figures(*res["model"]["cv"]))
        result["engines"] = len(tune)
        result["held_out"] = {
            **_figures(*res["model"]["held_out"]),
            "engines": len(hold),
            "units": hold.tolist(),
        }
        pred, true = res["model"]["held_out"]
        if "baseline" in res:
            base_cv = _figures(*res["baseline"]["cv"])
            base_ho = _figures(*res["baseline"]["held_out"])
            result["baseline"] = {
                "model": BASELINE_NAME + ", run with scikit-learn",
                **base_cv,
                "held_out": base_ho,
            }
            result["rmse_ratio"] = round(result["rmse"] / base_cv["rmse"], 3)
            result["held_out"]["rmse_ratio"] = round(
                result["held_out"]["rmse"] / base_ho["rmse"], 3
            )
    result.update(_speed(train))
    if args.out is not None:
        result["plots"] = plot(
            pred, true, args.out, f"FD001 RMSE {result.get('held_out', result)['rmse']}"
        )
    return result
