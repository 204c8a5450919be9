"""``carpulse bench edge-memory``: the ahead-of-time decoder decodes exactly and maps no LLVM."""

from __future__ import annotations

import pytest

from carpulse.bench.edge import DEFAULT_LOG
from core.datasets import shared_data_dir

pytestmark = pytest.mark.slow


def test_aot_decoder_matches_jit_without_llvm() -> None:
    from carpulse.bench.edge_memory import bench_edge_memory

    if not (shared_data_dir() / DEFAULT_LOG).exists():
        pytest.skip("real CAN logs not here (../shared/DATA.md)")
    out = bench_edge_memory(["--runs", "1"])
    assert out["aot_equals_jit"] and out["no_jit_equals_jit"], out
    assert out["aot"]["llvm_loaded"] is False and out["jit_warm"]["llvm_loaded"] is True
    assert out["aot"]["rss_mb"] < out["jit_warm"]["rss_mb"] - 50, out
    assert out["aot"]["private_mb"] < out["jit_warm"]["private_mb"], out
