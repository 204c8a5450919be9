"""Deskew a located plate: find its four corners (roll and perspective tilt) and warp it upright.

A colour or detector box is a rotated rectangle around a plate that may be a trapezoid (the car seen
from the side). Around that box we find the plate's own background (the dominant plate colour of
its centre: blue, yellow, green, white or black), take the quadrilateral that best fits it, and warp
it to a flat ``PLATE_ASPECT`` crop, so the recogniser sees upright, evenly spaced characters.
"""

from __future__ import annotations

import math

import cv2
import numpy as np


def percentile(a: np.ndarray, q: float) -> float:
    """``float(np.percentile(a, q))`` for a NaN-free array, bit for bit, without NumPy's ~0.1 ms of
    checks and set-up a call (the reader calls it some 20 times a frame; tested against NumPy).

    NumPy's default ("linear") method with a scalar ``q``: the order statistics around
    ``(n - 1) * q / 100`` and their interpolation in the array's own arithmetic (float32 stays
    float32), the upper one counted back from when the weight is 0.5 or more.
    """
    x = np.ravel(a)
    n = x.size
    if n == 0 or not 0.0 <= q <= 100.0:
        raise ValueError(f"percentile {q} of {n} values")
    v = (n - 1) * (q / 100)
    if v >= n - 1:
        return float(x.max())
    lo = math.floor(v)
    part = np.partition(x, (lo, lo + 1))
    below, above = part[lo], part[lo + 1]
    t = v - lo
    diff = above - below
    return float(above - diff * (1 - t) if t >= 0.5 else below + diff * t)


Rect = tuple[tuple[float, float], tuple[float, float], float]

PLATE_ASPECT = 440 / 140  # a single-row plate
OUT_H = 48  # the recogniser's input height
MARGIN = 0.04
# A quad whose two pairs of opposite sides differ by less than this share is taken as square.
SQUARE = 0.1


def order_corners(pts: np.ndarray) -> np.ndarray:
    """Four points as top-left, top-right, bottom-right, bottom-left (image y down).

    The top edge is a long side, run left to right: a plate is wider than high, so a plate rolled
    by up to 90 degrees either way comes out upright (taking the corner nearest the frame's
    top-left as the first read a plate rolled by 45 degrees or more sideways). A quad whose two
    pairs of sides are within ``SQUARE`` of each other keeps that rule: its long side says nothing.
    """
    pts = np.asarray(pts, dtype=np.float32).reshape(4, 2)
    centre = pts.mean(axis=0)
    ang = np.arctan2(pts[:, 1] - centre[1], pts[:, 0] - centre[0])
    pts = pts[np.argsort(ang)]  # clockwise (y down)
    edges = np.roll(pts, -1, axis=0) - pts  # edge i runs from corner i to corner i + 1
    length = np.hypot(edges[:, 0], edges[:, 1])
    across, down = length[0] + length[2], length[1] + length[3]
    if max(across, down) > (1.0 + SQUARE) * min(across, down):
        first = 0 if across > down else 1  # edges first and first + 2 are the long sides
        # Of the two long sides the top one runs rightwards (clockwise, y down).
        start = first if edges[first, 0] >= edges[first + 2, 0] else first + 2
    else:
        start = int(np.argmin(pts.sum(axis=1)))  # the corner nearest the frame's top-left
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
        "white": (s <= 60) & (v >= 0.75 * percentile(v, 90)),
        "black": v <= max(30.0, 0.5 * percentile(v, 50)),
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


MIN_SPREAD = 16  # grey levels between a band's 10th and 90th percentile for it to hold strokes


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
    # Glare or a shadow across the plate is a slope under the characters: take the slow part of
    # each row away first, so one threshold fits the whole band.
    k = max(3, (2 * band.shape[0]) | 1)
    # (Pixel noise is smoothed first and a band without MIN_SPREAD grey levels of contrast is
    # paint, not text: flattening would otherwise make a noisy gradient look like strokes.)
    smooth = cv2.blur(band, (3, 1)).astype(np.int16)
    flat = smooth - cv2.blur(band, (k, 1)).astype(np.int16) + 128
    lo, hi = percentile(flat, 10), percentile(flat, 90)
    if hi - lo < MIN_SPREAD:
        return 0.0
    band = np.clip(flat, 0, 255).astype(np.uint8)
    _, ink = cv2.threshold(band, 0, 1, cv2.THRESH_BINARY | cv2.THRESH_OTSU)
    changes = np.abs(np.diff(ink.astype(np.int8), axis=1)).sum(axis=1)
    return float(np.median(changes))


def rect_quad(rect: Rect) -> np.ndarray:
    """A rotated rectangle's corners (TL, TR, BR, BL) with its long side taken as the width."""
    (cx, cy), (w, h), ang = rect
    if w < h:
        w, h, ang = h, w, ang - 90 if ang > 0 else ang + 90
    return order_corners(cv2.boxPoints(((cx, cy), (w, h), ang)))


# The snap canvas: the quad's box is SNAP_W x SNAP_H inside SNAP_PAD pixels of its surroundings.
SNAP_W, SNAP_H, SNAP_PAD = 120, 40, 16
# GA 36's character row: 90 of the plate's 140 mm, 25 mm above and below (``synth.render_plate``).
TEXT_OVER = 25 / 90
# and 16 mm of plate left and right of it (of 440 or 480 mm).
TEXT_SIDE = 16 / 460
BAND_CUT = 0.4
END_CUT = 0.2


def snap(image: np.ndarray, quad: np.ndarray, passes: int = 3) -> np.ndarray | None:
    """``quad`` re-fitted to the plate's character row (TL, TR, BR, BL), or ``None``.

    Each pass measures in a canvas warped from the previous fit, so a badly placed first box
    (half a character row off) comes closer pass by pass; the last fit that found a character row
    is returned (TUNE: 3 passes read more plates than 1, 2 or 5). ``None`` if the first pass finds
    no clear character row: the caller keeps its own fit.
    """
    if not isinstance(image, np.ndarray) or image.dtype != np.uint8 or image.ndim not in (2, 3):
        return None
    if (image.ndim == 3 and image.shape[2] != 3) or min(image.shape[:2]) < 8:
        return None
    try:
        start = np.asarray(quad, np.float64).reshape(4, 2)
    except (TypeError, ValueError):
        return None
    if not np.all(np.isfinite(start)) or np.abs(start).max() > 1e6:
        return None
    q: np.ndarray | None = None
    current = order_corners(start)
    for _ in range(max(1, passes)):
        nxt = _snap_once(image, current)
        if nxt is None:
            break
        q = current = nxt
    return q


def _snap_once(image: np.ndarray, quad: np.ndarray, snap_x: bool = True) -> np.ndarray | None:
    """One snapping pass: ``quad`` re-fitted to the character row, or ``None``.

    A corner fit from the background colour, or a plain box, is often a tenth of the plate height
    off, and the cell recogniser wants its cells where the characters are. In a canvas warped from
    ``quad`` with room around it, the rows with dense vertical strokes are the characters; their
    top and bottom, measured on the left and on the right half, give the plate's top and bottom
    edges (GA 36: 25 mm of plate above and below a 90 mm character row), so roll and keystone
    the first fit left are undone too. ``None`` when no clear character row is found.
    """
    q = order_corners(quad)
    if not _plate_shaped(q):
        return None
    cw, chh = SNAP_W + 2 * SNAP_PAD, SNAP_H + 2 * SNAP_PAD
    box = np.array(
        [
            [SNAP_PAD, SNAP_PAD],
            [SNAP_PAD + SNAP_W, SNAP_PAD],
            [SNAP_PAD + SNAP_W, SNAP_PAD + SNAP_H],
            [SNAP_PAD, SNAP_PAD + SNAP_H],
        ],
        np.float32,
    )
    try:
        m = cv2.getPerspectiveTransform(q, box)
        inv = np.linalg.inv(m)
    except (cv2.error, np.linalg.LinAlgError):
        return None
    if not np.all(np.isfinite(m)) or not np.all(np.isfinite(inv)):
        return None
    canvas = cv2.warpPerspective(
        image, m, (cw, chh), flags=cv2.INTER_AREA, borderMode=cv2.BORDER_REPLICATE
    )
    # Vertical edges in grey. A red first character on a black plate (使) is faint in grey and
    # the row's left end is then one character off; adding redness's edges fixed that on clean
    # renders but read fewer TUNE plates (147, and 145 with redness for the ends only, against
    # 150), as did the strongest of the three channels (chroma noise).
    grey = cv2.cvtColor(canvas, cv2.COLOR_BGR2GRAY) if canvas.ndim == 3 else canvas
    strokes = np.abs(cv2.Sobel(grey, cv2.CV_32F, 1, 0, ksize=3))
    tops, bottoms, xs = [], [], []
    for a, b in ((0.1, 0.5), (0.5, 0.9)):
        x0, x1 = SNAP_PAD + round(a * SNAP_W), SNAP_PAD + round(b * SNAP_W)
        band = _text_band(strokes[:, x0:x1].mean(axis=1))
        if band is None:
            return None
        tops.append(band[0])
        bottoms.append(band[1])
        xs.append((x0 + x1) / 2)
    heights = np.array(bottoms) - np.array(tops)
    if heights.min() < 0.35 * SNAP_H or heights.max() > 1.6 * SNAP_H:
        return None
    # The plate's top and bottom edges as lines y = y0 + k x through the two halves.
    top = [t - TEXT_OVER * hgt for t, hgt in zip(tops, heights, strict=True)]
    bottom = [b + TEXT_OVER * hgt for b, hgt in zip(bottoms, heights, strict=True)]

    def at(ys: list[float], x: float) -> float:
        return ys[0] + (ys[1] - ys[0]) * (x - xs[0]) / (xs[1] - xs[0])

    left, right = float(SNAP_PAD), float(SNAP_PAD + SNAP_W)
    if snap_x:
        ends = _text_ends(strokes, float(np.mean(tops)), float(np.mean(bottoms)))
        if ends is not None:
            width = (ends[1] - ends[0]) / (1 - 2 * TEXT_SIDE)
            left, right = ends[0] - TEXT_SIDE * width, ends[1] + TEXT_SIDE * width
    pts = np.array(
        [
            [left, at(top, left)],
            [right, at(top, right)],
            [right, at(bottom, right)],
            [left, at(bottom, left)],
        ],
        np.float32,
    )
    back = cv2.perspectiveTransform(pts[None], inv)[0]
    if not np.all(np.isfinite(back)) or not _plate_shaped(back):
        return None
    return back.astype(np.float32)


def _plate_shaped(q: np.ndarray) -> bool:
    """Whether corners (TL, TR, BR, BL) make a convex quadrilateral of a plate's proportions."""
    q = np.asarray(q, np.float32)
    if not cv2.isContourConvex(q.reshape(-1, 1, 2)):
        return False
    width = 0.5 * float(np.linalg.norm(q[1] - q[0]) + np.linalg.norm(q[2] - q[3]))
    height = 0.5 * float(np.linalg.norm(q[3] - q[0]) + np.linalg.norm(q[2] - q[1]))
    return height >= 4 and 1.2 <= width / height <= 8.0


def _text_band(profile: np.ndarray) -> tuple[float, float] | None:
    """First and last row (sub-pixel edges) of the longest run of stroke-dense rows, or ``None``."""
    p = np.convolve(profile, np.ones(3, np.float32) / 3, mode="same")
    lo, hi = percentile(p, 10), float(p.max())
    if hi <= 1.0 or hi < 2.0 * max(lo, 1e-6):
        return None
    cut = lo + BAND_CUT * (hi - lo)
    on = p >= cut
    best, start = (0, 0), None
    for i, v in enumerate(np.append(on, False)):
        if v and start is None:
            start = i
        elif not v and start is not None:
            if i - start > best[1] - best[0]:
                best = (start, i)
            start = None
    if best[1] - best[0] < 3:
        return None
    # Sub-pixel ends: where the profile crosses the threshold between two rows.
    a, b = best[0], best[1] - 1
    top = float(a) - (p[a] - cut) / max(p[a] - p[a - 1], 1e-6) + 0.5 if a > 0 else float(a)
    bottom = (
        float(b) + (p[b] - cut) / max(p[b] - p[b + 1], 1e-6) + 0.5 if b + 1 < len(p) else b + 1.0
    )
    return top, bottom


def _text_ends(strokes: np.ndarray, top: float, bottom: float) -> tuple[float, float] | None:
    """Left and right end of the character row between rows ``top`` and ``bottom``, or ``None``.

    The plate's border line and its outer edge are vertical strokes too, but they run on above
    and below the characters: the stroke profile of the rows just outside the character row is
    taken off the profile inside it, so mostly the characters remain.
    """
    h = bottom - top
    t, b = round(top + 0.1 * h), round(bottom - 0.1 * h)
    above = strokes[max(0, round(top - 0.22 * h)) : max(1, round(top - 0.04 * h))]
    below = strokes[round(bottom + 0.04 * h) : round(bottom + 0.22 * h)]
    if b - t < 2 or above.shape[0] < 1 or below.shape[0] < 1:
        return None
    outside = np.maximum(above.mean(axis=0), below.mean(axis=0))
    p = np.convolve(strokes[t:b].mean(axis=0) - outside, np.ones(3, np.float32) / 3, "same")
    hi = float(p.max())
    if hi <= 1.0:
        return None
    cols = np.nonzero(p >= END_CUT * hi)[0]
    lo_x, hi_x = float(cols[0]), float(cols[-1] + 1)
    if not 0.6 * SNAP_W <= hi_x - lo_x <= 1.3 * SNAP_W:
        return None
    return lo_x, hi_x
