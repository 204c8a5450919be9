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
from models.rul.model import BASELINE, RUL_CAP, WINDOW, nasa_score, rmse
from models.rul.train import default_train_file, fit, to_onnx

log = logging.getLogger(__name__)

# Official FD001 test series stop 31 or more cycles into a life, with true RUL 7..145.
MIN_SEEN = 31
RUL_LO, RUL_HI = 7, 145


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


def truncation_points(series: Series, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """One cut per unit, as the official test set: >= 31 cycles seen, true RUL uniform in 7..145.

    Returns the row index of each cut and the true (uncapped) RUL there.
    """
    rows: list[int] = []
    ruls: list[int] = []
    for u in series.units():
        idx = np.flatnonzero(series.unit == u)
        hi = min(RUL_HI, len(idx) - MIN_SEEN)
        if hi < RUL_LO:
            continue  # too short a life to cut like the test set
        r = int(rng.integers(RUL_LO, hi + 1))
        rows.append(int(idx[len(idx) - 1 - r]))
        ruls.append(r)
    return np.asarray(rows, dtype=np.int64), np.asarray(ruls, dtype=np.float64)


def held_out(series: Series, folds: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """k-fold by engine: train on the other folds, predict each held-out engine at a random cut."""
    rng = np.random.default_rng(seed)
    units = rng.permutation(series.units())
    feats = window_features(series.unit, series.sensors, WINDOW, BASELINE)
    preds: list[np.ndarray] = []
    trues: list[np.ndarray] = []
    for part in np.array_split(units, folds):
        test = np.isin(series.unit, part)
        model = fit(series.select(~test), seed=seed)
        rows, ruls = truncation_points(series.select(test), rng)
        # features are causal per unit, so the cut row's features equal those of the truncated series
        preds.append(_onnx_predict(model, feats[np.flatnonzero(test)[rows]]))
        trues.append(ruls)
    return np.concatenate(preds), np.concatenate(trues)


def official(
    train: Series, test: Series, rul: np.ndarray, seed: int
) -> tuple[np.ndarray, np.ndarray]:
    if len(rul) != len(test.units()):
        raise ConfigError(f"RUL file has {len(rul)} values for {len(test.units())} test engines")
    model = fit(train, seed=seed)
    feats = window_features(test.unit, test.sensors, WINDOW, BASELINE)
    return _onnx_predict(model, feats[last_rows(test.unit)]), rul


def _speed(train: Series) -> dict[str, float]:
    """Median rows/s (5 runs) of the numba features and of the shipped ONNX model on the train file."""
    from carpulse.bench import median_of
    from models.rul.model import MODEL_PATH, RulModel

    def timed(fn: Any) -> float:
        t0 = time.perf_counter()
        fn()
        return time.perf_counter() - t0

    n = len(train)
    window_features(train.unit[:100], train.sensors[:100], WINDOW, BASELINE)  # compile first
    t_feat = median_of(lambda: timed(lambda: window_features(train.unit, train.sensors)), 5)
    out: dict[str, float] = {"features_rows_per_s": round(n / t_feat)}
    if MODEL_PATH.is_file():
        model = RulModel()
        x = window_features(train.unit, train.sensors, WINDOW, BASELINE)
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
    ap.add_argument("--folds", type=int, default=5, help="k-fold by engine when no test file")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--out", type=Path, default=None, help="folder for PNG plots")
    args = ap.parse_args(argv)
    if (args.test is None) != (args.rul is None):
        raise ConfigError("--test and --rul go together")
    if args.folds < 2:
        raise ConfigError(f"--folds must be >= 2, got {args.folds}")
    train = read_series(args.train or default_train_file())
    if args.test is not None:
        pred, true = official(train, read_series(args.test), read_rul(args.rul), args.seed)
        protocol = "official test set (last cycle of each test engine)"
    else:
        pred, true = held_out(train, args.folds, args.seed)
        protocol = (
            f"{args.folds}-fold held-out engines, each cut once at random "
            f"(>= {MIN_SEEN} cycles seen, true RUL {RUL_LO}..{RUL_HI}, seed {args.seed})"
        )
    capped = np.minimum(true, RUL_CAP)
    result: dict[str, Any] = {
        "rmse": round(rmse(pred, capped), 3),
        "score": round(nasa_score(pred, capped), 1),
        "engines": len(pred),
        "rul_cap": RUL_CAP,
        "truth": "capped at rul_cap (customary); rmse_uncapped_truth compares with raw RUL",
        "rmse_uncapped_truth": round(rmse(pred, true), 3),
        "protocol": protocol,
        "model": "HistGradientBoostingRegressor -> ONNX TreeEnsembleRegressor, run with onnxruntime",
    }
    result.update(_speed(train))
    if args.out is not None:
        result["plots"] = plot(pred, true, args.out, f"FD001 RMSE {result['rmse']}")
    return result
