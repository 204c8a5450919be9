"""Cheap plate candidates from colour and shape on a downscaled image (blue, yellow, green plates)."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from contextvars import ContextVar
from dataclasses import dataclass
from typing import Any

import cv2
import numpy as np

# OpenCV HSV ranges (H in 0..180) of plate backgrounds; white (police) plates are left to the
# text detector, white is everywhere in a car park.
COLOUR_RANGES: dict[str, tuple[tuple[int, int, int], tuple[int, int, int]]] = {
    "blue": ((100, 90, 50), (125, 255, 255)),
    "yellow": ((15, 90, 90), (34, 255, 255)),
    "green": ((35, 40, 90), (85, 255, 255)),
}

# A crop is of a plate colour when at least PLATE_COLOUR_SHARE of its middle is saturated and lit
# and the middle half of those pixels' hues (25th to 75th percentile, OpenCV hue 0-180) lies in the
# colour's range. Real blue plates under a green cast reach down into cyan (the shared photos and
# their variants: median hue 81-114; ccpd_fn_fn1's quartiles 73 and 96), real and synthetic green
# plates sit at 41-73, so green stops at 78 and a crop spread over green and cyan is no colour.
PLATE_COLOUR_SHARE = 0.35
PLATE_COLOUR_MARGIN = 0.2  # of each side, left out: a loose crop's border may be the car's paint
PLATE_HUES: dict[str, tuple[int, int]] = {"yellow": (12, 34), "green": (35, 78), "blue": (95, 130)}


def plate_colour(crop: np.ndarray) -> str | None:
    """The background colour of a BGR plate crop: ``"blue"``, ``"yellow"``, ``"green"``, or
    ``None`` when no one colour covers enough of it (white and black plates, a dark frame, a
    colour cast, a crop that is not 8-bit BGR)."""
    if crop.ndim != 3 or crop.shape[2] != 3 or crop.dtype != np.uint8:
        return None
    h, w = crop.shape[:2]
    dy, dx = round(h * PLATE_COLOUR_MARGIN), round(w * PLATE_COLOUR_MARGIN)
    middle = crop[dy : h - dy, dx : w - dx]
    if middle.size == 0:
        return None
    hsv = cv2.cvtColor(middle, cv2.COLOR_BGR2HSV)
    vivid = (hsv[..., 1] >= 60) & (hsv[..., 2] >= 60)
    if np.count_nonzero(vivid) < PLATE_COLOUR_SHARE * vivid.size:
        return None
    q1, q3 = np.percentile(hsv[..., 0][vivid], (25, 75))
    for colour, (lo, hi) in PLATE_HUES.items():
        if lo <= q1 and q3 <= hi:
            return colour
    return None


# A red glyph at one end of a plate crop (police 警, the armed police's WJ, 应急, 使): at least
# RED_MARK_SHARE of that end's RED_MARK_END of the width is red (between the top and bottom
# fifths, where the characters are), at most RED_MARK_REST of the other end's and RED_MARK_MIDDLE
# of the middle, so red paint around a loose crop, at both ends, is no mark. Two red characters
# (WJ, 应急) take about a quarter of a plate's width. Red: OpenCV hue <= 10 or >= 160, saturation
# >= 50, value >= 60.
RED_MARK_END = 0.3
RED_MARK_SHARE = 0.1
RED_MARK_REST = 0.01
RED_MARK_MIDDLE = 0.02
# GA 36 prints red characters on white plates (police, emergency, WJ) and black ones (embassy)
# only: the median saturation of the middle's lit pixels (a white plate's ground, a black plate's
# letters) must be at most RED_MARK_GREY. On the shared police photo and its dev variants the
# middle's median was 0-23; blue CCPD plates with a red lamp or border at one end, which a cyan
# cast keeps from having a plate colour, 37-58.
RED_MARK_GREY = 30


def red_mark(crop: np.ndarray) -> str | None:
    """``"red-last"`` or ``"red-first"`` when a BGR crop of a white or black plate has a red glyph
    at its right or left end alone, else ``None`` (also for a coloured plate, and for a crop that
    is not 8-bit BGR or too small to tell)."""
    if crop.ndim != 3 or crop.shape[2] != 3 or crop.dtype != np.uint8:
        return None
    h, w = crop.shape[:2]
    dy, q = round(h * PLATE_COLOUR_MARGIN), round(w * RED_MARK_END)
    band = crop[dy : h - dy]
    if band.shape[0] < 2 or q < 2:
        return None
    hsv = cv2.cvtColor(band, cv2.COLOR_BGR2HSV)
    hue = hsv[..., 0]
    red = ((hue <= 10) | (hue >= 160)) & (hsv[..., 1] >= 50) & (hsv[..., 2] >= 60)
    left, middle, right = red[:, :q].mean(), red[:, q : w - q].mean(), red[:, w - q :].mean()
    if middle > RED_MARK_MIDDLE:
        return None
    centre = hsv[:, q : w - q]
    lit = centre[..., 1][centre[..., 2] >= 60]  # a white plate's ground, a black one's letters
    if lit.size == 0 or np.median(lit) > RED_MARK_GREY:
        return None
    if right >= RED_MARK_SHARE and left <= RED_MARK_REST:
        return "red-last"
    if left >= RED_MARK_SHARE and right <= RED_MARK_REST:
        return "red-first"
    return None


# A large frame is shrunk at most MAX_SHRINK times for locating, so a plate keeps a quarter of its
# pixels across whatever the camera's resolution: a 320-px working width made a 2560-px gate frame's
# plate 8 times smaller, and its blob broke up or fell under the size floor. A frame wider than
# MAX_SHRINK x MAX_WORK (beyond 4K) is shrunk to MAX_WORK. Frames up to 1280 px wide are unchanged
# (BENCHMARKS.md, nineteenth session).
MAX_SHRINK = 4.0
MAX_WORK = 960


def work_scale(width: int, work_width: int) -> float:
    """The scale a frame ``width`` px wide is located at: ``work_width`` px, unless that shrinks it
    more than ``MAX_SHRINK`` times (then ``width / MAX_SHRINK``, at most ``MAX_WORK`` px); never
    enlarged."""
    w = max(1, width)
    return min(1.0, max(work_width / w, min(1.0 / MAX_SHRINK, MAX_WORK / w)))


# Inside ``shrink_memo``: each frame's block averages, by (frame id, x factor, y factor), with the
# frame itself (held, so its id cannot be reused by another array while the memo lives).
_SHRINK_MEMO: ContextVar[dict[tuple[int, int, int], tuple[np.ndarray, np.ndarray]] | None] = (
    ContextVar("shrink_memo", default=None)
)


@contextmanager
def shrink_memo() -> Iterator[None]:
    """Within it, ``shrink`` averages a frame's blocks of one size once, however many sizes it is
    shrunk to: the reader locates, searches and detects one frame at several sizes (a 2560 px
    frame: 8 shrinks, 2 block sizes). The frames must not change while it lasts (the reader's
    own do not: a camera buffer refilled in place would be read stale)."""
    token = _SHRINK_MEMO.set({})
    try:
        yield
    finally:
        _SHRINK_MEMO.reset(token)


def shrink(image: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """``image`` resized to ``size`` (width, height): averaged over whole blocks by the largest
    whole factor first, then linear for the rest.

    OpenCV's area resize is fast only for whole factors: 1160 x 720 to 320 px wide took 4.1 ms on
    one core, this 0.5 ms (mean difference 0.3 grey levels; BENCHMARKS.md, eighteenth session).
    """
    w, h = max(1, size[0]), max(1, size[1])
    rows, cols = image.shape[:2]
    kx, ky = max(1, cols // w), max(1, rows // h)
    if kx < 2 and ky < 2:
        return cv2.resize(image, (w, h), interpolation=cv2.INTER_LINEAR)
    memo = _SHRINK_MEMO.get()
    hit = memo.get((id(image), kx, ky)) if memo is not None else None
    if hit is not None and hit[0] is image:
        small = hit[1]
    else:
        block = image[: rows // ky * ky, : cols // kx * kx]  # up to k - 1 edge pixels left out
        small = cv2.resize(block, (cols // kx, rows // ky), interpolation=cv2.INTER_AREA)
        if memo is not None:
            memo[(id(image), kx, ky)] = (image, small)
    # The rest by an affine map of the whole frame's scale (not the cut block's), so every output
    # pixel samples where the area resize of the whole frame would have centred it.
    sx, sy = cols / (w * kx), rows / (h * ky)
    m = np.array([[sx, 0.0, 0.5 * sx - 0.5], [0.0, sy, 0.5 * sy - 0.5]])
    out: np.ndarray = cv2.warpAffine(
        small, m, (w, h), flags=cv2.INTER_LINEAR | cv2.WARP_INVERSE_MAP,
        borderMode=cv2.BORDER_REPLICATE,
    )  # fmt: skip
    return out


@dataclass(frozen=True, slots=True)
class Candidate:
    """A plate-coloured region in full-image pixels, with the fill ratio that ranks it."""

    rect: tuple[tuple[float, float], tuple[float, float], float]
    colour: str
    fill: float
    area: float
    score: float  # ranks candidates: edge density x plate-like aspect


def _blob(
    cnt: np.ndarray, min_area: float, ratio_lo: float, ratio_hi: float, integral: np.ndarray
) -> tuple[Any, ...] | None:
    """A contour's rotated rectangle, aspect, fill, area and edge density when it is plate-shaped
    (large enough, aspect within ``ratio_lo..ratio_hi``, well filled), else None."""
    area = cv2.contourArea(cnt)
    if area < min_area:
        return None
    (cx, cy), (rw, rh), ang = cv2.minAreaRect(cnt)
    long, short = max(rw, rh), min(rw, rh)
    if short < 4 or not ratio_lo <= long / short <= ratio_hi:
        return None
    fill = area / (rw * rh)
    if fill < 0.45:
        return None
    x, y, bw, bh = cv2.boundingRect(cnt)
    n_edges = integral[y + bh, x + bw] - integral[y, x + bw] - integral[y + bh, x] + integral[y, x]
    density = float(n_edges) / max(1, bw * bh)
    return (cx, cy), (rw, rh), ang, long / short, fill, area, density


def colour_candidates(
    image: np.ndarray, work_width: int = 320, max_candidates: int = 3
) -> list[Candidate]:
    """Plate-shaped regions of a plate colour, largest well-filled first."""
    h, w = image.shape[:2]
    scale = work_scale(w, work_width)
    small = shrink(image, (round(w * scale), round(h * scale)))
    hsv = cv2.cvtColor(small, cv2.COLOR_BGR2HSV)
    # Characters make dense vertical edges; sky, paint and leaves mostly do not.
    gray = cv2.cvtColor(small, cv2.COLOR_BGR2GRAY)
    edges = np.abs(cv2.Sobel(gray, cv2.CV_16S, 1, 0, ksize=3)) > 60
    integral = cv2.integral(edges.astype(np.uint8))
    min_area = 0.0004 * small.shape[0] * small.shape[1]
    kernel = cv2.getStructuringElement(cv2.MORPH_RECT, (5, 3))
    out: list[Candidate] = []
    for colour, (lo, hi) in COLOUR_RANGES.items():
        mask = cv2.inRange(hsv, np.array(lo, np.uint8), np.array(hi, np.uint8))
        # Close the gaps the white or black characters cut into the background.
        mask = cv2.morphologyEx(mask, cv2.MORPH_CLOSE, kernel)
        contours, _ = cv2.findContours(mask, cv2.RETR_EXTERNAL, cv2.CHAIN_APPROX_SIMPLE)
        for cnt in contours:
            if (blob := _blob(cnt, min_area, 1.4, 6.0, integral)) is None:
                continue
            (cx, cy), (rw, rh), ang, ratio, fill, area, density = blob
            shape = min(abs(ratio - 3.1), abs(ratio - 2.0))  # one-row or two-row plate
            score = density * fill / (1.0 + shape)
            rect = ((cx / scale, cy / scale), (rw / scale, rh / scale), ang)
            out.append(Candidate(rect, colour, fill, area / scale**2, score))
    out.sort(key=lambda c: c.score, reverse=True)
    return out[:max_candidates]


def edge_candidates(
    image: np.ndarray, work_width: int = 320, max_candidates: int = 3
) -> list[Candidate]:
    """Plate-shaped clusters of vertical strokes, whatever the plate colour (white, black plates).

    Characters make a row of strong vertical edges; closing them horizontally joins one plate into
    one blob. Ranked like colour candidates (edge density x plate-like aspect).
    """
    h, w = image.shape[:2]
    scale = work_scale(w, work_width)
    small = shrink(image, (round(w * scale), round(h * scale)))
    gray = cv2.cvtColor(small, cv2.COLOR_BGR2GRAY)
    sob = cv2.convertScaleAbs(cv2.Sobel(gray, cv2.CV_16S, 1, 0, ksize=3))
    _, edges = cv2.threshold(sob, 0, 255, cv2.THRESH_BINARY | cv2.THRESH_OTSU)
    integral = cv2.integral((edges > 0).astype(np.uint8))
    joined = cv2.morphologyEx(edges, cv2.MORPH_CLOSE, np.ones((3, 11), np.uint8))
    joined = cv2.morphologyEx(joined, cv2.MORPH_OPEN, np.ones((3, 5), np.uint8))
    contours, _ = cv2.findContours(joined, cv2.RETR_EXTERNAL, cv2.CHAIN_APPROX_SIMPLE)
    min_area = 0.0004 * small.shape[0] * small.shape[1]
    out: list[Candidate] = []
    for cnt in contours:
        if (blob := _blob(cnt, min_area, 2.0, 7.0, integral)) is None:
            continue
        (cx, cy), (rw, rh), ang, ratio, fill, area, density = blob
        score = density * fill / (1.0 + abs(ratio - 3.6))
        # The stroke blob stops at the characters: grow it to the plate's edge.
        rect = ((cx / scale, cy / scale), (rw * 1.12 / scale, rh * 1.3 / scale), ang)
        out.append(Candidate(rect, "edge", fill, area / scale**2, score))
    out.sort(key=lambda c: c.score, reverse=True)
    return out[:max_candidates]
