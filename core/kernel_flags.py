"""Compilation flags for every numba kernel: kernels take their flags from here and nowhere else.

A contract of ``core`` (no numba import here): ``firmware_bridge``, ``edge``, ``models`` and
``stream`` kernels all write ``@njit(cache=kernel_flags.CACHE, fastmath=kernel_flags.FASTMATH)``.
"""

from __future__ import annotations

import os

# fastmath must never assume "no NaN/inf" where kernels test for NaN: only the safe subset.
FASTMATH: set[str] = {"nsz", "arcp", "contract", "afn", "reassoc"}
# Compile at first call; caching is off so a Pi never loads a stale binary for another CPU.
CACHE: bool = os.environ.get("CARPULSE_NUMBA_CACHE", "0") == "1"
# Kernels whose output hinges on exact float results (a value's bin at a bin edge, ratios compared
# for ties) compile without fastmath: the reference in tests/reference must give the same bits.
# The compiled DBC decoder too: "contract" would fuse raw * scale + offset into one FMA, which
# rounds once instead of twice and breaks bit-identity with cantools.
EXACT_MATH: bool = False
