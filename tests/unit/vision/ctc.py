"""Made-up inputs for the plate readers' tests: CTC outputs, and crops no plate has."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np


def ctc_frames(
    path: Sequence[str], alphabet: Sequence[str], rng: np.random.Generator, peak: float = 0.9
) -> np.ndarray:
    """A CTC output over ``alphabet`` (``alphabet[0]``: the blank) that spells ``path``, one frame
    per label ('_' = blank), with uniform noise of up to 0.02 on every class."""
    probs = rng.uniform(0.0, 0.02, (len(path), len(alphabet)))
    for t, ch in enumerate(path):
        probs[t, 0 if ch == "_" else alphabet.index(ch)] += peak
    out: np.ndarray = probs / probs.sum(axis=1, keepdims=True)
    return out


# Crops a candidate may give that are not 8-bit BGR plates, or too small to judge: a crop measure
# must return "nothing" for them, never raise.
ODD_CROPS = [
    np.zeros((0, 0, 3), np.uint8),
    np.zeros((0, 40, 3), np.uint8),
    np.zeros((1, 1, 3), np.uint8),
    np.zeros((3, 7, 3), np.uint8),
    np.full((2, 300, 3), 255, np.uint8),
    np.zeros((48, 150), np.uint8),  # grey, two-dimensional
    np.zeros((48, 150, 4), np.uint8),  # BGRA
    np.zeros((48, 150, 3), np.float32),
]
