"""Deskew a located plate: find its four corners (roll and perspective tilt) and warp it upright.

A colour or detector box is a rotated rectangle around a plate that may be a trapezoid (the car seen
from the side). Around that box we find the plate's own background (the dominant plate colour of
its centre: blue, yellow, green, white or black), take the quadrilateral that best fits it, and warp
it to a flat ``PLATE_ASPECT`` crop, so the recogniser sees upright, evenly spaced characters.
"""

from __future__ import annotations

import cv2
import numpy as np

Rect = tuple[tuple[float, float], tuple[float, float], float]

PLATE_ASPECT = 440 / 140  # a single-row plate
OUT_H = 48  # the recogniser's input height
MARGIN = 0.04


def order_corners(pts: np.ndarray) -> np.ndarray:
    """Four points as top-left, top-right, bottom-right, bottom-left (image y down)."""
    pts = np.asarray(pts, dtype=np.float32).reshape(4, 2)
    centre = pts.mean(axis=0)
    ang = np.arctan2(pts[:, 1] - centre[1], pts[:, 0] - centre[0])
    pts = pts[np.argsort(ang)]  # clockwise from the left (y down): TL first if the plate is wide
    # Start at the point with the smallest x + y (top-left for rolls under 45 degrees).
    start = int(np.argmin(pts.sum(axis=1)))
    return np.roll(pts, -start, axis=0)


def grow_quad(q: np.ndarray, dx: float, dy: float) -> np.ndarray:
    """``q`` (TL, TR, BR, BL) grown by ``dx`` of its width on the left and right, ``dy`` of its height."""
    across, down = (q[1] - q[0] + q[2] - q[3]) / 2, (q[3] - q[0] + q[2] - q[1]) / 2
    sx = np.array([-1, 1, 1, -1], np.float32)[:, None]
    sy = np.array([-1, -1, 1, 1], np.float32)[:, None]
    return (q + sx * dx * across + sy * dy * down).astype(np.float32)


def warp_quad(
    image: np.ndarray, quad: np.ndarray, out_h: int = OUT_H, margin: float = MARGIN
) -> np.ndarray:
    """The quadrilateral ``quad`` (TL, TR, BR, BL) warped to an upright crop ``out_h`` high.

    ``margin`` (of the width, each side) of the surroundings is kept: the recogniser was trained
    on text lines with some room around them and misses a first character that touches the edge.
    """
    q = order_corners(quad)
    if margin > 0:
        q = grow_quad(q, margin, margin)
    top, bottom = float(np.linalg.norm(q[1] - q[0])), float(np.linalg.norm(q[2] - q[3]))
    left, right = float(np.linalg.norm(q[3] - q[0])), float(np.linalg.norm(q[2] - q[1]))
    aspect = (top + bottom) / max(1e-6, left + right)
    # Perspective shortens one side: undo it, but keep two-row plates (about 2:1) two-row.
    aspect = float(np.clip(aspect, 1.5, 5.0))
    if aspect > 2.5:
        aspect = max(aspect, PLATE_ASPECT)
    out_w = max(8, round(out_h * aspect))
    dst = np.array([[0, 0], [out_w - 1, 0], [out_w - 1, out_h - 1], [0, out_h - 1]], np.float32)
    m = cv2.getPerspectiveTransform(q, dst)
    return cv2.warpPerspective(
        image, m, (out_w, out_h), flags=cv2.INTER_AREA, borderMode=cv2.BORDER_REPLICATE
    )


def _fit_quad(contour: np.ndarray) -> np.ndarray:
    """Four corners of a plate-shaped contour: a 4-gon of its hull if one fits, else its min rect."""
    hull = cv2.convexHull(contour)
    peri = cv2.arcLength(hull, True)
    for eps in (0.02, 0.035, 0.05, 0.08):
        approx = cv2.approxPolyDP(hull, eps * peri, True)
        if len(approx) == 4:
            return approx.reshape(4, 2).astype(np.float32)
    return cv2.boxPoints(cv2.minAreaRect(contour)).astype(np.float32)


def _background_mask(patch: np.ndarray) -> np.ndarray:
    """Pixels of the patch's dominant plate background, judged on its central band."""
    hsv = cv2.cvtColor(patch, cv2.COLOR_BGR2HSV)
    h, s, v = hsv[:, :, 0], hsv[:, :, 1], hsv[:, :, 2]
    masks = {
        "blue": (h >= 95) & (h <= 130) & (s >= 70) & (v >= 40),
        "yellow": (h >= 12) & (h <= 36) & (s >= 70) & (v >= 70),
        "green": (h >= 35) & (h <= 90) & (s >= 35) & (v >= 70),
        "white": (s <= 60) & (v >= 0.75 * float(np.percentile(v, 90))),
        "black": v <= max(30.0, 0.5 * float(np.percentile(v, 50))),
    }
    ph, pw = patch.shape[:2]
    band = (slice(int(0.3 * ph), int(0.7 * ph)), slice(int(0.2 * pw), int(0.8 * pw)))
    best = max(masks.values(), key=lambda m: float(m[band].mean()))
    return best.astype(np.uint8) * 255


def refine(image: np.ndarray, rect: Rect, pad: float = 0.25) -> np.ndarray | None:
    """Corners of the plate around ``rect`` in image pixels (TL, TR, BR, BL), or ``None``.

    ``None`` when no plate-shaped background region fills a fair part of the box: the caller then
    reads the rotated-rectangle crop as it is.
    """
    (cx, cy), (w, h), _ = rect
    half = 0.5 * max(w, h) * (1 + pad)
    x0, y0 = max(0, int(cx - half)), max(0, int(cy - half))
    x1 = min(image.shape[1], int(cx + half) + 1)
    y1 = min(image.shape[0], int(cy + half) + 1)
    if x1 - x0 < 16 or y1 - y0 < 8:
        return None
    patch = image[y0:y1, x0:x1]
    # Work on a small copy: the shape is all that matters here.
    scale = min(1.0, 160 / patch.shape[1])
    small = cv2.resize(patch, None, fx=scale, fy=scale, interpolation=cv2.INTER_AREA)
    mask = _background_mask(small)
    k = max(3, round(0.12 * min(w, h) * scale) | 1)
    mask = cv2.morphologyEx(mask, cv2.MORPH_CLOSE, np.ones((k, k), np.uint8))
    contours, _ = cv2.findContours(mask, cv2.RETR_EXTERNAL, cv2.CHAIN_APPROX_SIMPLE)
    centre = ((cx - x0) * scale, (cy - y0) * scale)
    inside = [c for c in contours if cv2.pointPolygonTest(c, centre, False) >= 0]
    if not inside:
        return None
    cnt = max(inside, key=cv2.contourArea)
    area = cv2.contourArea(cnt)
    if area < 0.35 * (w * h * scale * scale) or area > 2.2 * (w * h * scale * scale):
        return None
    quad = _fit_quad(cnt) / scale + np.array([x0, y0], np.float32)
    q = order_corners(quad)
    width = 0.5 * float(np.linalg.norm(q[1] - q[0]) + np.linalg.norm(q[2] - q[3]))
    height = 0.5 * float(np.linalg.norm(q[3] - q[0]) + np.linalg.norm(q[2] - q[1]))
    if height < 6 or not 1.4 <= width / max(height, 1e-6) <= 6.5:
        return None
    return q


def stroke_count(crop: np.ndarray) -> float:
    """Median number of ink/background transitions across the middle rows of a crop.

    A plate's 7-8 characters cross the middle line 14 or more times; a bare car panel, sky or a
    wall crosses it a few times. Cheap enough to run on every candidate before the recogniser.
    """
    if crop.ndim == 3:
        crop = cv2.cvtColor(crop, cv2.COLOR_BGR2GRAY)
    h = crop.shape[0]
    band = crop[int(0.3 * h) : max(int(0.3 * h) + 1, int(0.7 * h))]
    if band.size == 0 or band.shape[1] < 8:
        return 0.0
    _, ink = cv2.threshold(band, 0, 1, cv2.THRESH_BINARY | cv2.THRESH_OTSU)
    changes = np.abs(np.diff(ink.astype(np.int8), axis=1)).sum(axis=1)
    return float(np.median(changes))
