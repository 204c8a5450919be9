"""RUL features (kernel vs reference), C-MAPSS reading, NASA score, the shipped ONNX model and the eval."""

from __future__ import annotations

import json
import os
from pathlib import Path

import numba
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from models.rul import features as feat_mod
from models.rul.data import last_rows, read_rul, read_series, rul_targets
from models.rul.features import window_features
from models.rul.model import MODEL_PATH, RUL_CAP, RulModel, nasa_score, rmse
from tests.conftest import require_data
from tests.reference.rul_features import window_features as ref_window_features

JIT_OFF = os.environ.get("NUMBA_DISABLE_JIT", "0") == "1"

series_st = st.lists(st.integers(1, 12), min_size=1, max_size=4).flatmap(
    lambda lens: st.tuples(
        st.just(lens),
        st.lists(
            st.lists(st.floats(-100, 100, allow_nan=False), min_size=2, max_size=2),
            min_size=sum(lens),
            max_size=sum(lens),
        ),
    )
)


def _arrays(lens: list[int], rows: list[list[float]]) -> tuple[np.ndarray, np.ndarray]:
    unit = np.repeat(np.arange(1, len(lens) + 1), lens)
    return unit, np.asarray(rows, dtype=np.float64).reshape(-1, 2)


@pytest.mark.kernel
@settings(max_examples=60, deadline=None)
@given(series_st, st.integers(1, 6), st.integers(1, 4))
def test_window_features_match_reference(data: tuple, window: int, baseline: int) -> None:
    lens, rows = data
    unit, x = _arrays(lens, rows)
    got = window_features(unit, x, window, baseline)
    want = np.asarray(ref_window_features(unit.tolist(), x.tolist(), window, baseline))
    np.testing.assert_allclose(got, want, rtol=1e-9, atol=1e-7)


@pytest.mark.kernel
@settings(max_examples=30, deadline=None)
@given(series_st)
def test_window_features_are_causal_prefix_equals_batch(data: tuple) -> None:
    """Row i's features depend on rows <= i only: feeding a growing prefix gives the batch answer."""
    lens, rows = data
    unit, x = _arrays(lens, rows)
    batch = window_features(unit, x, 4, 3)
    for i in range(len(unit)):
        one = window_features(unit[: i + 1], x[: i + 1], 4, 3)[-1]
        np.testing.assert_allclose(one, batch[i], rtol=1e-12, atol=1e-12)


@pytest.mark.kernel
def test_window_features_hand_computed() -> None:
    unit = np.array([7, 7, 7])
    x = np.array([[1.0], [3.0], [8.0]])
    f = window_features(unit, x, window=2, baseline=1)
    # row 2: window (3, 8): mean 5.5, std 2.5, slope 5, drift 5.5 - 1; 3 cycles seen
    np.testing.assert_allclose(f[2], [8.0, 5.5, 2.5, 5.0, 4.5, 3.0])
    np.testing.assert_allclose(f[0], [1.0, 1.0, 0.0, 0.0, 0.0, 1.0])


@pytest.mark.kernel
@pytest.mark.skipif(JIT_OFF, reason="NUMBA_DISABLE_JIT=1: nothing is compiled")
def test_window_features_kernel_is_compiled() -> None:
    window_features(np.array([1, 1]), np.array([[1.0], [2.0]]))
    kernel = feat_mod._window_features
    assert isinstance(kernel, numba.core.registry.CPUDispatcher)
    assert kernel.signatures


def test_window_features_rejects_bad_shapes() -> None:
    with pytest.raises(ValueError, match="unit must be"):
        window_features(np.array([1, 1, 1]), np.zeros((2, 3)))
    with pytest.raises(ValueError, match="window and baseline"):
        window_features(np.array([1]), np.zeros((1, 3)), window=0)


def test_read_series_counts_and_names_bad_rows(tmp_path: Path) -> None:
    good = " ".join(["1", "1"] + ["0.5"] * 24)
    good2 = " ".join(["1", "2"] + ["0.7"] * 24)
    p = tmp_path / "train.txt"
    p.write_text(f"{good}\n1 2 3\n{good2}\n" + " ".join(["1", "3"] + ["x"] * 24) + "\n")
    s = read_series(p)
    assert len(s) == 2 and s.bad_rows == 2
    assert f"{p}:2: expected 26 columns, got 3" in s.examples[0]
    assert f"{p}:4: not a number" in s.examples[1]
    assert s.sensors.shape == (2, 14)
    assert rul_targets(s, 125).tolist() == [1.0, 0.0]


def test_rul_targets_cap_and_last_rows() -> None:
    from models.rul.data import Series

    s = Series(np.array([1, 1, 1, 2, 2]), np.array([1, 2, 3, 1, 2]), np.zeros((5, 14)))
    assert rul_targets(s, 1.5).tolist() == [1.5, 1.0, 0.0, 1.0, 0.0]
    assert last_rows(s.unit).tolist() == [2, 4]


def test_read_rul(tmp_path: Path) -> None:
    p = tmp_path / "RUL.txt"
    p.write_text("112 \n98\n\n69\n")
    assert read_rul(p).tolist() == [112.0, 98.0, 69.0]


def test_nasa_score_and_rmse_by_hand() -> None:
    # late by 10 -> e^1 - 1; early by 13 -> e^1 - 1; exact -> 0
    got = nasa_score(np.array([20.0, 0.0, 5.0]), np.array([10.0, 13.0, 5.0]))
    assert got == pytest.approx(2 * (np.e - 1))
    assert rmse(np.array([1.0, 3.0]), np.array([0.0, 0.0])) == pytest.approx(np.sqrt(5.0))


def test_shipped_model_is_small_and_tracks_training_engines() -> None:
    path = require_data("cmapss/train_FD001.txt")
    assert MODEL_PATH.stat().st_size < 5_000_000
    s = read_series(path)
    pred = RulModel().predict_rows(s.unit, s.sensors)
    true = rul_targets(s, RUL_CAP)
    assert pred.min() >= 0.0 and pred.max() <= RUL_CAP
    # the shipped model saw these engines: this checks the export, not generalisation
    assert rmse(pred, true) < 12.0


def test_onnx_export_matches_scikit_learn() -> None:
    path = require_data("cmapss/train_FD001.txt")
    from carpulse.evals.cmapss import _onnx_predict
    from models.rul.train import fit

    s = read_series(path)
    s = s.select(s.unit <= 20)
    model = fit(s, max_iter=30)
    x = window_features(s.unit, s.sensors)
    want = np.clip(model.predict(x), 0, RUL_CAP)
    got = _onnx_predict(model, x)
    # float32 thresholds in ONNX flip a rare split; the bulk must agree closely
    assert np.median(np.abs(got - want)) < 1e-3
    assert np.mean(np.abs(got - want)) < 0.2


@pytest.mark.slow
def test_eval_cmapss_held_out_meets_aim(tmp_path: Path) -> None:
    path = require_data("cmapss/train_FD001.txt")
    from carpulse.evals.cmapss import main

    res = main(["--train", str(path), "--folds", "5", "--out", str(tmp_path)])
    json.dumps(res)
    assert res["engines"] == 100
    assert res["rmse"] <= 14.0, res
    assert "held-out" in res["protocol"]
    assert Path(res["plots"][0]).stat().st_size > 1000


@pytest.mark.slow
def test_eval_cmapss_official_protocol_with_crafted_test_files(tmp_path: Path) -> None:
    """The --test/--rul path: engines 81..100 cut like the test set, trained on 1..80 only."""
    path = require_data("cmapss/train_FD001.txt")
    from carpulse.evals.cmapss import main

    lines = path.read_text().splitlines()
    train_lines = [ln for ln in lines if int(ln.split()[0]) <= 80]
    test_lines: list[str] = []
    ruls: list[int] = []
    rng = np.random.default_rng(3)
    for u in range(81, 101):
        rows = [ln for ln in lines if int(ln.split()[0]) == u]
        r = int(rng.integers(7, min(145, len(rows) - 31) + 1))
        test_lines += rows[: len(rows) - r]
        ruls.append(r)
    (tmp_path / "train.txt").write_text("\n".join(train_lines) + "\n")
    (tmp_path / "test.txt").write_text("\n".join(test_lines) + "\n")
    (tmp_path / "rul.txt").write_text("\n".join(map(str, ruls)) + "\n")
    res = main(
        [
            "--train",
            str(tmp_path / "train.txt"),
            "--test",
            str(tmp_path / "test.txt"),
            "--rul",
            str(tmp_path / "rul.txt"),
        ]
    )
    assert res["engines"] == 20
    assert res["protocol"].startswith("official")
    assert res["rmse"] < 18.0, res
