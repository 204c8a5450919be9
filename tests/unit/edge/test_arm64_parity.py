"""arm64 under qemu decodes and aggregates a real log bit for bit like this machine.

Opt-in (``CARPULSE_ARM64_ROOT=/var/tmp/arm64root``; slow, minutes under emulation): it needs the
arm64 root that ``carpulse bench edge-arm64 --help`` tells how to make, and root for ``chroot``.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from carpulse.bench.edge import DEFAULT_LOG
from core.datasets import shared_data_dir

ROOT = os.environ.get("CARPULSE_ARM64_ROOT")
pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(not ROOT, reason="set CARPULSE_ARM64_ROOT to an arm64 root (slow)"),
]


def test_arm64_digests_equal_x86_64() -> None:
    from carpulse.bench.edge_arm64 import bench_edge_arm64

    if not (shared_data_dir() / DEFAULT_LOG).exists():
        pytest.skip("real CAN logs not here (../shared/DATA.md)")
    out = bench_edge_arm64(["--root", str(Path(str(ROOT)))])
    assert out["arm64"]["machine"] == "aarch64"
    assert out["x86_64"]["samples"] > 10_000
    assert out["arm64"]["compiled"] and out["x86_64"]["compiled"]
    assert out["differ"] == [], out
    assert out["identical"]
