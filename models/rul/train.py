"""Train the FD001 RUL regressor and export it to ONNX: ``python -m models.rul.train [--train FILE]``."""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path
from typing import Any

import numpy as np

from core.datasets import shared_data_dir
from models.rul.data import Series, read_series, rul_targets
from models.rul.features import N_PER_SENSOR, window_features
from models.rul.model import BASELINE, MODEL_PATH, RUL_CAP, WINDOW

# Gradient-boosted trees: small (< 1 MB as ONNX), fast, and within reach of the published LSTMs here.
PARAMS: dict[str, Any] = {
    "max_iter": 500,
    "learning_rate": 0.05,
    "max_leaf_nodes": 15,
    "min_samples_leaf": 40,
    "l2_regularization": 1.0,
}


def default_train_file() -> Path:
    return shared_data_dir() / "cmapss" / "train_FD001.txt"


def fit(series: Series, cap: float = RUL_CAP, seed: int = 0, max_iter: int | None = None) -> Any:
    """Fit the regressor on every row of run-to-failure series (targets capped at ``cap``)."""
    from sklearn.ensemble import HistGradientBoostingRegressor

    params = dict(PARAMS, random_state=seed)
    if max_iter is not None:
        params["max_iter"] = max_iter
    from threadpoolctl import threadpool_limits

    x = window_features(series.unit, series.sensors, WINDOW, BASELINE)
    model = HistGradientBoostingRegressor(**params)
    # one OpenMP thread: on a shared, busy machine spinning threads made training 5x slower
    with threadpool_limits(limits=1):
        model.fit(x, rul_targets(series, cap))
    return model


def to_onnx(model: Any, n_features: int) -> bytes:
    """A fitted ``HistGradientBoostingRegressor`` as an ONNX ``TreeEnsembleRegressor`` (float32 input).

    Built with ``onnx.helper`` from the fitted trees: skl2onnx does not convert this estimator
    with scikit-learn 1.9. Each split goes left when ``x <= threshold`` (``BRANCH_LEQ``), as in
    scikit-learn; leaf values already include the learning rate, the baseline is the base value.
    """
    from onnx import TensorProto, helper

    ids: list[int] = []
    tree_ids: list[int] = []
    feat: list[int] = []
    thr: list[float] = []
    modes: list[str] = []
    true_ids: list[int] = []
    false_ids: list[int] = []
    missing: list[int] = []
    t_tree: list[int] = []
    t_node: list[int] = []
    t_w: list[float] = []
    for t, (pred,) in enumerate(model._predictors):
        nodes = pred.nodes
        for i, nd in enumerate(nodes):
            tree_ids.append(t)
            ids.append(i)
            if nd["is_leaf"]:
                feat.append(0)
                thr.append(0.0)
                modes.append("LEAF")
                true_ids.append(0)
                false_ids.append(0)
                missing.append(0)
                t_tree.append(t)
                t_node.append(i)
                t_w.append(float(nd["value"]))
            else:
                feat.append(int(nd["feature_idx"]))
                thr.append(float(nd["num_threshold"]))
                modes.append("BRANCH_LEQ")
                true_ids.append(int(nd["left"]))
                false_ids.append(int(nd["right"]))
                missing.append(int(bool(nd["missing_go_to_left"])))
    node = helper.make_node(
        "TreeEnsembleRegressor",
        ["features"],
        ["rul"],
        domain="ai.onnx.ml",
        n_targets=1,
        aggregate_function="SUM",
        base_values=[float(np.ravel(model._baseline_prediction)[0])],
        nodes_treeids=tree_ids,
        nodes_nodeids=ids,
        nodes_featureids=feat,
        nodes_values=thr,
        nodes_modes=modes,
        nodes_truenodeids=true_ids,
        nodes_falsenodeids=false_ids,
        nodes_missing_value_tracks_true=missing,
        target_treeids=t_tree,
        target_nodeids=t_node,
        target_ids=[0] * len(t_tree),
        target_weights=t_w,
    )
    graph = helper.make_graph(
        [node],
        "carpulse_rul_fd001",
        [helper.make_tensor_value_info("features", TensorProto.FLOAT, [None, n_features])],
        [helper.make_tensor_value_info("rul", TensorProto.FLOAT, [None, 1])],
    )
    onx = helper.make_model(
        graph,
        opset_imports=[helper.make_opsetid("", 17), helper.make_opsetid("ai.onnx.ml", 3)],
        producer_name="carpulse.models.rul.train",
    )
    onx.ir_version = 8
    data: bytes = onx.SerializeToString()
    return data


def main(argv: list[str] | None = None) -> dict[str, Any]:
    ap = argparse.ArgumentParser(prog="python -m models.rul.train", description=__doc__)
    ap.add_argument(
        "--train", type=Path, default=None, help="train_FD001.txt (default shared data)"
    )
    ap.add_argument(
        "--out", type=Path, default=MODEL_PATH, help=f"ONNX file (default {MODEL_PATH})"
    )
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args(argv)
    t0 = time.perf_counter()
    series = read_series(args.train or default_train_file())
    model = fit(series, seed=args.seed)
    n_features = series.sensors.shape[1] * N_PER_SENSOR + 1
    data = to_onnx(model, n_features)
    args.out.write_bytes(data)
    info = {
        "model": str(args.out),
        "bytes": len(data),
        "rows": len(series),
        "units": len(series.units()),
        "features": n_features,
        "cap": RUL_CAP,
        "seconds": round(time.perf_counter() - t0, 1),
    }
    print(json.dumps(info))
    return info


if __name__ == "__main__":
    main()
