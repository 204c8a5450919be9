"""NAB scorer on hand-made cases with known results, and the eval command on real NAB files."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from carpulse.evals.nab_scorer import MAX_TP, PROFILES, optimise_threshold, score_corpus, sweep_file
from tests.conftest import require_data
from tests.reference.nab_ref import best_raw

T0 = np.datetime64("2020-01-01T00:00:00", "s")


def _ts(n: int) -> np.ndarray:
    return T0 + np.arange(n) * np.timedelta64(300, "s")


def _windows(ts: np.ndarray, rows: list[tuple[int, int]]) -> list[tuple[str, str]]:
    return [(str(ts[a]), str(ts[b])) for a, b in rows]


def _sig(x: float) -> float:
    return 2 / (1 + math.exp(5 * x)) - 1


def test_perfect_detector_scores_100_and_null_scores_0() -> None:
    n = 400
    ts = _ts(n)
    rows = [(100, 139), (300, 339)]
    sw = sweep_file("a/x.csv", ts, _windows(ts, rows))
    perfect = np.zeros(n)
    perfect[[100, 300]] = 1.0
    null = np.full(n, 0.5)
    for name in PROFILES:
        assert score_corpus([sw], [perfect])[name].score == pytest.approx(100.0)
        assert score_corpus([sw], [null])[name].score == pytest.approx(0.0)


def test_hand_computed_late_detection_and_false_positives() -> None:
    n = 100  # probation = 15 rows
    ts = _ts(n)
    sw = sweep_file("a/x.csv", ts, _windows(ts, [(40, 49)]))
    s = np.zeros(n)
    s[45] = 1.0  # halfway: position -(49-45+1)/10 = -0.5
    tp = _sig(-0.5) / MAX_TP
    res = score_corpus([sw], [s])["standard"]
    assert res.raw == pytest.approx(tp)
    assert res.null == pytest.approx(-1.0)
    assert res.score == pytest.approx(100 * (tp + 1) / 2)
    s[20] = 1.0  # before any window: a full false positive, -fpWeight
    s[70] = 1.0  # after the window: |49-70|/(10-1) past it
    s[5] = 1.0  # probationary: ignored
    want = tp - 0.11 + _sig(21 / 9) * 0.11
    for name, w in PROFILES.items():
        raw = score_corpus([sw], [s])[name].raw
        expect = tp - w["fpWeight"] + _sig(21 / 9) * w["fpWeight"]
        # When detecting costs more than missing, NAB's optimiser detects nothing instead.
        assert raw == pytest.approx(max(expect, -w["fnWeight"]))
    assert score_corpus([sw], [s])["standard"].raw == pytest.approx(want)


@settings(max_examples=40, deadline=None)
@given(
    data=st.lists(
        st.tuples(
            st.lists(st.sampled_from([0.0, 0.2, 0.5, 0.7, 0.9, 1.0]), min_size=30, max_size=60),
            st.integers(10, 20),
            st.integers(1, 8),
        ),
        min_size=1,
        max_size=3,
    ),
    profile=st.sampled_from(sorted(PROFILES)),
)
def test_threshold_optimiser_equals_brute_force(
    data: list[tuple[list[float], int, int]], profile: str
) -> None:
    w = PROFILES[profile]
    sweeps, scores, ref = [], [], []
    for k, (vals, start, width) in enumerate(data):
        n = len(vals)
        a, b = start, min(start + width, n - 1)
        ts = _ts(n)
        sweeps.append(sweep_file(f"c/{k}.csv", ts, _windows(ts, [(a, b)])))
        scores.append(np.array(vals))
        ref.append((vals, [(a, b)]))
    _t, raw = optimise_threshold(sweeps, scores, w)
    assert raw == pytest.approx(best_raw(ref, w["tpWeight"], w["fpWeight"], w["fnWeight"]))


def test_eval_nab_on_two_real_files(tmp_path: Path) -> None:
    from carpulse.evals.nab import main

    root = require_data("nab")
    data = tmp_path / "data"
    for rel in (
        "artificialWithAnomaly/art_daily_jumpsup.csv",
        "realKnownCause/ambient_temperature_system_failure.csv",
    ):
        (data / rel).parent.mkdir(parents=True, exist_ok=True)
        (data / rel).symlink_to(root / "data" / rel)
    bad = data / "realKnownCause" / "broken.csv"
    bad.write_text("timestamp,value\n2014-01-01 00:00:00,1\nnot a row\n")
    labels = json.loads((root / "combined_windows.json").read_text())
    labels["realKnownCause/broken.csv"] = []
    (tmp_path / "labels.json").write_text(json.dumps(labels))
    out = tmp_path / "out"
    report = main(["--data", str(data), "--labels", str(tmp_path / "labels.json"), "--out", str(out),
                   "--detector", "carpulse_zscore"])  # fmt: skip
    assert set(report) >= {"detector", "score_standard", "score_low_fp", "score_low_fn", "files"}
    assert report["files"] == 3 and report["bad_input"] == 1
    for key in ("score_standard", "score_low_fp", "score_low_fn"):
        assert -100.0 <= report[key] <= 100.0
    result = (
        out / "carpulse_zscore" / "artificialWithAnomaly" / "carpulse_zscore_art_daily_jumpsup.csv"
    )
    lines = result.read_text().splitlines()
    assert lines[0] == "timestamp,value,anomaly_score,label"
    assert (
        len(lines) - 1
        == len(
            (root / "data" / "artificialWithAnomaly" / "art_daily_jumpsup.csv")
            .read_text()
            .splitlines()
        )
        - 1
    )
    assert any(line.endswith(",1") for line in lines[1:])
    assert (out / "carpulse_zscore_nab.png").stat().st_size > 1000


def test_eval_nab_registers_new_detectors_and_reports_the_split(tmp_path: Path) -> None:
    from carpulse.evals.nab import DETECTORS, main

    assert {"carpulse_nn_likelihood", "nab_windowed_gaussian", "carpulse_context_ose",
            "carpulse_context_nn", "carpulse_context_ensemble", "carpulse_artime",
            "carpulse_artime_ensemble", "carpulse_artime_nn"} <= set(DETECTORS)  # fmt: skip
    root = require_data("nab")
    data = tmp_path / "data"
    rels = [
        "realAdExchange/exchange-3_cpc_results.csv",
        "realAdExchange/exchange-4_cpm_results.csv",
    ]
    for rel in rels:
        (data / rel).parent.mkdir(parents=True, exist_ok=True)
        (data / rel).symlink_to(root / "data" / rel)
    labels = root / "combined_windows.json"
    for name in ("nab_windowed_gaussian", "carpulse_nn_likelihood", "carpulse_context_ose"):
        report = main(["--data", str(data), "--labels", str(labels), "--detector", name])
        assert report["files"] == 2 and report["windows"] == 7
        # One file per half: exchange-3_cpc is tuned on, exchange-4_cpm held out.
        assert report["split"]["tune"]["files"] == 1 and report["split"]["holdout"]["files"] == 1
        hold = report["split"]["holdout"]
        for key in ("standard", "low_fp", "low_fn"):
            # At thresholds chosen on the other half a file can only score at most its own optimum.
            assert hold[f"score_{key}_at_tune_threshold"] <= hold[f"score_{key}"] + 1e-9
        assert -100.0 <= report["score_standard"] <= 100.0


def test_context_ensemble_is_the_mean_of_its_parts() -> None:
    from carpulse.evals import nab

    root = require_data("nab")
    rel = "realAdExchange/exchange-3_cpc_results.csv"
    f, problems = nab.read_nab_csv(root / "data" / rel, rel)
    assert f is not None and not problems
    ose = nab.det_context_ose([f])[0]
    nn = nab.det_nn_likelihood([f])[0]
    both = nab.det_context_nn([f])[0]
    np.testing.assert_array_equal(both, (ose + nn) / 2.0)
    p = int(0.15 * f.values.size)
    three = nab.det_context_ensemble([f])[0]
    nn_stream = nab.det_nn_stream([f])[0]
    np.testing.assert_allclose(nn_stream[p:], nn[p:], rtol=1e-9, atol=1e-12)
    np.testing.assert_array_equal(three, (ose + nn_stream + nab.det_zscore([f])[0]) / 3.0)
    art = nab.det_artime([f])[0]
    np.testing.assert_array_equal(nab.det_artime_ensemble([f])[0], np.maximum(art, three))
    np.testing.assert_array_equal(nab.det_artime_nn([f])[0], (art + nn_stream) / 2.0)
    assert not art[:p].any() and art[p:].max() > 0.3
    # The probationary rows (15%) only calibrate contextOSE: it scores nothing there.
    assert not ose[:p].any() and ose[p:].max() > 0.7


def test_eval_nab_context_cap_is_checked_and_used(tmp_path: Path) -> None:
    from carpulse.evals import nab
    from core.errors import ConfigError

    root = require_data("nab")
    data = tmp_path / "data"
    rel = "realAdExchange/exchange-3_cpc_results.csv"
    (data / rel).parent.mkdir(parents=True)
    (data / rel).symlink_to(root / "data" / rel)
    labels = str(root / "combined_windows.json")
    with pytest.raises(ConfigError, match="context-cap"):
        nab.main(["--data", str(data), "--labels", labels, "--context-cap", "0"])
    args = ["--data", str(data), "--labels", labels, "--detector", "carpulse_context_ose"]
    tiny = nab.main([*args, "--context-cap", "8"])
    big = nab.main([*args, "--context-cap", "4096"])
    assert tiny["raw"] != big["raw"]  # a cap of 8 contexts cannot learn this file
    assert nab._cap == [nab.CONTEXT_CAP]  # the cap does not outlive the run


def test_artime_spatial_is_the_max_of_artime_and_the_spatial_anomaly(tmp_path: Path) -> None:
    from carpulse.evals import nab

    assert {"carpulse_artime_spatial", "carpulse_spatial"} <= set(nab.DETECTORS)
    root = require_data("nab")
    rel = "realKnownCause/ec2_request_latency_system_failure.csv"
    f, problems = nab.read_nab_csv(root / "data" / rel, rel)
    assert f is not None and not problems
    art = nab.det_artime([f])[0]
    sp = nab.det_spatial([f])[0]
    np.testing.assert_array_equal(nab.det_artime_spatial([f])[0], np.maximum(art, sp))
    assert set(np.unique(sp)) == {0.0, 1.0}
    # This file's latency spikes go beyond every level seen before: the spatial part fires where
    # ARTime (clipped to its calibrated range) scores nothing, but on few rows.
    assert ((sp == 1.0) & (art == 0.0)).any() and sp.sum() < 0.01 * sp.size
    data = tmp_path / "data"
    (data / rel).parent.mkdir(parents=True)
    (data / rel).symlink_to(root / "data" / rel)
    report = nab.main(["--data", str(data), "--labels", str(root / "combined_windows.json"),
                       "--no-plots"])  # fmt: skip
    assert report["detector"] == "carpulse_artime_spatial"  # the default
