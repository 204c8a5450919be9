"""A tiny kernel module for ``test_aot.py``: built ahead of time with one line, as a new kernel would be."""

from __future__ import annotations

import numpy as np

from core.jit import njit

SCALE = 3  # a module constant: compiled into the kernel


@njit(cache=False)
def _helper(x):  # type: ignore[no-untyped-def]
    return x * SCALE


@njit(cache=False)
def _scaled_sum(values, out):  # type: ignore[no-untyped-def]
    """Write ``values * SCALE`` into ``out`` and return the sum of the finite ones."""
    total = 0.0
    for i in range(values.shape[0]):
        out[i] = _helper(values[i])
        if np.isfinite(values[i]):
            total += out[i]
    return total
