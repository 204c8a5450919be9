"""``carpulse bench edge-queue``: the fsync policies cost what edge/queue.py says they cost."""

from __future__ import annotations

import shutil

import pytest

from carpulse.bench.edge_queue import bench_edge_queue

pytestmark = pytest.mark.skipif(shutil.which("strace") is None, reason="needs strace")


def test_full_syncs_every_commit_and_normal_only_at_checkpoints() -> None:
    out = bench_edge_queue(["--pairs", "300", "--rate", "1"])
    full, normal = out["full"], out["normal"]
    # Two commits a pair (put, ack), one WAL fdatasync each under FULL: ~120 a minute at 1/s.
    assert 110 <= full["fsyncs_per_min"] <= 140, full
    assert normal["fsyncs_per_min"] < full["fsyncs_per_min"] / 5, normal
    # Both write the same pages; the block layer sees at least the payload.
    assert full["writes_per_min"] == normal["writes_per_min"] > 0
    assert full["block_bytes_per_min"] >= full["payload_bytes_per_min"]
