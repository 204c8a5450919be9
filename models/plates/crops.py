"""The training crops both plate trainers share (``train`` for the cells, ``train_line`` for the
line model): a synthetic photo after the JPEG round trip the evaluation's photos went through, and
the reader's own locator crop of a plate. A leaf below both trainers, so neither imports the other.
"""

from __future__ import annotations

import cv2
import numpy as np

from models.plates.ocr import crop_rect
from models.plates.quad import refine, warp_quad
from models.plates.synth import Sample

Rect = tuple[tuple[float, float], tuple[float, float], float]


def as_decoded(s: Sample) -> np.ndarray:
    """The sample's photo after the JPEG round trip the evaluation's photos went through."""
    q = int(s.conditions["jpeg_quality"])
    ok, buf = cv2.imencode(".jpg", s.image, [cv2.IMWRITE_JPEG_QUALITY, q])
    decoded = cv2.imdecode(buf, cv2.IMREAD_COLOR) if ok else None
    return decoded if decoded is not None else s.image


def locator_crop(
    image: np.ndarray,
    quad: np.ndarray,
    rng: np.random.Generator,
    width_grow: tuple[float, float] = (0.92, 1.1),
    height_grow: tuple[float, float] = (0.9, 1.15),
) -> tuple[np.ndarray, Rect, np.ndarray | None]:
    """The reader's own crop of the plate at ``quad``: a locator box (the plate's rectangle a
    little off in place and size), deskewed by its corner fit, or as it is when the fit fails.
    Returns ``(crop, box, fitted corners or None)``."""
    (cx, cy), (w, h), ang = cv2.minAreaRect(quad)
    rect = (
        (cx + rng.normal(0, 0.03) * max(w, h), cy + rng.normal(0, 0.05) * min(w, h)),
        (w * rng.uniform(*width_grow), h * rng.uniform(*height_grow)),
        ang,
    )
    found = refine(image, rect)
    return (warp_quad(image, found) if found is not None else crop_rect(image, rect)), rect, found
