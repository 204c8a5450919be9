"""The CRM benchmark command runs and its built-in checks hold (compiled conditions agree with
``eval``; a replay fires nothing; the dry run predicts the first pass exactly)."""

from __future__ import annotations

from carpulse.bench.crm import bench_crm


def test_bench_crm_small() -> None:
    doc = bench_crm(["--vehicles", "12", "--days", "20", "--evals", "3000", "--repeat", "1"])
    assert doc["events"] == 12 * 17 and doc["conditions_per_s"] > 0 and doc["replay_s"] > 0
    assert doc["ratio_vs_eval"] > 0
