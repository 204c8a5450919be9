"""``carpulse bench envelope``: the bridge's check and the worker's decode of the same messages."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from carpulse.bench.envelope import bench_envelope


def test_the_check_costs_less_than_the_decode_it_spares_the_bridge() -> None:
    out = bench_envelope(["--messages", "40", "--rounds", "3"])
    assert out["samples_per_message"] == 2000 and out["message_bytes"] > 1000
    assert 0 < out["bridge_check_us_per_message"] < out["worker_decode_us_per_message"]
    assert out["check_to_decode_ratio"] == pytest.approx(
        out["bridge_check_us_per_message"] / out["worker_decode_us_per_message"], abs=0.002
    )


def test_the_command_prints_json_and_refuses_nonsense() -> None:
    run = [sys.executable, "-m", "carpulse", "bench", "envelope"]
    r = subprocess.run([*run, "--messages", "8", "--rounds", "1", "--batch-samples", "40"],
                       capture_output=True, text=True, timeout=120)  # fmt: skip
    assert r.returncode == 0, r.stderr
    assert json.loads(r.stdout)["samples_per_message"] == 40
    r = subprocess.run([*run, "--rounds", "0"], capture_output=True, text=True, timeout=120)
    assert r.returncode != 0 and "--rounds" in r.stderr
