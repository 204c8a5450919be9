"""Compilation flags for every numba kernel: kernels take their flags from here and nowhere else."""

from __future__ import annotations

import os

# fastmath must never assume "no NaN/inf" where kernels test for NaN: only the safe subset.
FASTMATH: set[str] = {"nsz", "arcp", "contract", "afn", "reassoc"}
# Compile at first call; caching is off so a Pi never loads a stale binary for another CPU.
CACHE: bool = os.environ.get("CARPULSE_NUMBA_CACHE", "0") == "1"
# Kernels whose output hinges on exact float results (a value's bin at a bin edge, ratios compared
# for ties) compile without fastmath: the reference in tests/reference must give the same bits.
EXACT_MATH: bool = False
