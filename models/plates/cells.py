"""A plate-font recogniser: one small classifier per character cell of the GA 36 layout.

A plate has a fixed font and a fixed layout per kind (seven, eight or nine characters in equal
cells, a separator dot after the second), so once the plate is deskewed each character sits in a
known cell. ``CellReader`` cuts those cells out of a deskewed crop (the plate with a 4 % margin, as
``quad.warp_quad`` makes it), classifies each with a two-layer perceptron (plain NumPy, weights in
``plate_cells.npz``, trained by ``carpulse plates train``) and picks the plate template whose
allowed characters score best, so it can only print a valid number of a covered kind.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np

from core.errors import ConfigError
from models.plates.quad import MARGIN, percentile
from models.plates.syntax import TEMPLATES

MODEL_PATH = Path(__file__).with_name("plate_cells.npz")
# Every character a template allows, in a fixed order: the classifier's classes.
CLASSES: tuple[str, ...] = tuple(sorted({ch for t in TEMPLATES for pos in t for ch in pos}))
CANVAS = (192, 48)  # the deskewed crop is resized to this (width, height) before cutting cells
CELL = (20, 30)  # each cell window is resized to this (width, height)
PIXELS = CELL[0] * CELL[1]
FEATURES = PIXELS
WINDOW = 1.25  # window width in cell pitches (a little of each neighbour, for loose corners)
LENGTHS = tuple(sorted({len(t) for t in TEMPLATES}))


def cell_centres(n: int) -> tuple[np.ndarray, float]:
    """Cell centres (fractions of the crop width) and the pitch of an ``n``-character plate.

    The layout of ``synth.render_plate`` (GA 36's: 440 mm wide for seven characters, 480 for
    more, 16 mm margins, a 20 mm or 12 mm gap for the separator after the second character),
    inside the ``MARGIN`` the crop keeps on each side.
    """
    width = 440.0 if n <= 7 else 480.0
    margin, gap, space = 16.0, 20.0 if n <= 7 else 12.0, 6.0
    cell = (width - 2 * margin - gap - (n - 1) * space) / n
    xs = []
    x = margin
    for p in range(n):
        if p == 2:
            x += gap
        xs.append(x + cell / 2)
        x += cell + space
    full = width * (1 + 2 * MARGIN)
    return (np.array(xs) + MARGIN * width) / full, (cell + space) / full


def _canvas(crop: np.ndarray) -> np.ndarray | None:
    """The crop as a float32 grey canvas, light characters on a dark background, or ``None``."""
    if not isinstance(crop, np.ndarray) or crop.ndim not in (2, 3) or min(crop.shape[:2]) < 4:
        return None
    if crop.ndim == 3 and crop.shape[2] not in (3, 4):
        return None
    img = crop
    if img.dtype != np.uint8:
        img = np.nan_to_num(img.astype(np.float64), nan=0.0, posinf=255.0, neginf=0.0)
        img = np.clip(img, 0, 255).astype(np.uint8)
    if img.ndim == 3:
        img = cv2.cvtColor(img, cv2.COLOR_BGRA2GRAY if img.shape[2] == 4 else cv2.COLOR_BGR2GRAY)
    small = cv2.resize(img, CANVAS, interpolation=cv2.INTER_AREA)
    grey = small.astype(np.float32)
    # The background is most of the plate: if it is the light part, the characters are dark.
    band = small[int(0.2 * CANVAS[1]) : int(0.8 * CANVAS[1])]
    lo, hi = percentile(band, 5), percentile(band, 95)
    if float(np.median(band)) > (lo + hi) / 2:
        grey = 255.0 - grey
    return grey


def features(windows: np.ndarray) -> np.ndarray:
    """The classifier's input for ``[N, PIXELS]`` normalised cell windows: the pixels themselves.

    (Gradient-orientation histograms beside the pixels were tried: they fitted the training cells
    better and read the TUNE photos worse, 133 against 147 of 184 plates.)
    """
    return np.ascontiguousarray(windows, np.float32)


def cell_features(crop: np.ndarray, n: int) -> np.ndarray | None:
    """``[n, PIXELS]`` normalised cell windows of an ``n``-character layout, or ``None``."""
    grey = _canvas(crop)
    if grey is None:
        return None
    return _cells(grey, n)


def _cells(grey: np.ndarray, n: int, sx: float = 1.0, dx: float = 0.0) -> np.ndarray:
    """Cell windows of an ``n``-character layout stretched by ``sx`` about the centre, moved by ``dx``."""
    centres, pitch = cell_centres(n)
    centres = 0.5 + (centres - 0.5) * sx + dx
    cw, chh = CANVAS
    half = WINDOW * pitch * sx * cw / 2
    y0, y1 = int(0.12 * chh), int(0.88 * chh)
    out = np.empty((n, PIXELS), np.float32)
    for p, c in enumerate(centres):
        x0, x1 = max(0, round(c * cw - half)), min(cw, round(c * cw + half))
        win = grey[y0:y1, x0 : max(x1, x0 + 2)] if x0 < cw - 2 else grey[y0:y1, cw - 2 :]
        out[p] = cv2.resize(win, CELL, interpolation=cv2.INTER_AREA).ravel()
    # Each window normalised to zero mean, unit spread (one call for all windows).
    out -= out.mean(axis=1, keepdims=True)
    out /= np.sqrt(np.mean(out * out, axis=1, keepdims=True)) + 8.0
    return out


# The grid for crops snapped to the character row (``quad.snap``): nearly in place, so three
# placements a hundredth of the width apart. (TUNE, snapped crops: stretches 1.0/1.08 with no
# shift read 148 of 184 plates, these three 150, a 3 x 3 grid of stretches 0.96-1.04 and shifts
# 151 at 5 ms more per image.)
SNAPPED_GRID: tuple[tuple[float, ...], tuple[float, ...]] = ((1.0,), (-0.01, 0.0, 0.01))


@dataclass(frozen=True, slots=True)
class CellReading:
    """A reading by the cell recogniser: the text, each character's probability, the mean log-prob."""

    text: str
    char_probs: tuple[float, ...]
    score: float

    @property
    def confidence(self) -> float:
        return min(self.char_probs) if self.char_probs else 0.0


class CellClassifier:
    """The per-cell perceptron: ``probs(features) -> [cells, classes]`` (softmax)."""

    def __init__(self, path: Path = MODEL_PATH) -> None:
        try:
            with np.load(path, allow_pickle=False) as z:
                self.w1, self.b1 = z["w1"].astype(np.float32), z["b1"].astype(np.float32)
                self.w2, self.b2 = z["w2"].astype(np.float32), z["b2"].astype(np.float32)
                classes = tuple(str(c) for c in z["classes"].tolist())
        except (OSError, KeyError, ValueError) as err:
            raise ConfigError(
                f"plate cell model {path}: {err} (regenerate: carpulse plates train)"
            ) from err
        if classes != CLASSES or self.w1.shape[0] != FEATURES or self.w2.shape[1] != len(CLASSES):
            raise ConfigError(
                f"plate cell model {path} does not match this reader's classes or cell size "
                "(regenerate: carpulse plates train)"
            )

    def probs(self, x: np.ndarray) -> np.ndarray:
        h = np.maximum(x @ self.w1 + self.b1, 0.0)
        z = h @ self.w2 + self.b2
        z -= z.max(axis=1, keepdims=True)
        e = np.exp(z)
        out: np.ndarray = e / e.sum(axis=1, keepdims=True)
        return out


_INDEX = {ch: i for i, ch in enumerate(CLASSES)}
# For each template: per position, the class indices it allows.
_ALLOWED = tuple(tuple(np.array([_INDEX[c] for c in pos]) for pos in t) for t in TEMPLATES)


def _padded(allowed: tuple[np.ndarray, ...]) -> np.ndarray:
    """``[positions, widest]`` class indices, each row padded with its own first index (a repeat
    after the first occurrence never changes which one ``argmax`` picks)."""
    out = np.empty((len(allowed), max(len(a) for a in allowed)), np.intp)
    for p, a in enumerate(allowed):
        out[p] = a[0]
        out[p, : len(a)] = a
    return out


_PADDED = tuple(_padded(a) for a in _ALLOWED)


class CellReader:
    """Reads a deskewed plate crop cell by cell; ``read`` returns the best valid reading or ``None``."""

    def __init__(
        self,
        path: Path = MODEL_PATH,
        stretches: tuple[float, ...] = (1.0, 1.08),
        shifts: tuple[float, ...] = (0.0,),
    ) -> None:
        self.model = CellClassifier(path)
        self.stretches, self.shifts = stretches, shifts

    def read(
        self, crop: np.ndarray, grid: tuple[tuple[float, ...], tuple[float, ...]] | None = None
    ) -> CellReading | None:
        """The best valid reading of ``crop``; ``grid`` (stretches, shifts) overrides the reader's."""
        grey = _canvas(crop)
        if grey is None:
            return None
        stretches, shifts = grid if grid is not None else (self.stretches, self.shifts)
        # A box without margin (no corner fit) stretches the layout by 1.08: try both placements
        # and keep the one the classifier is surest of. A crop snapped to the character row
        # (``quad.snap``) is read with ``SNAPPED_GRID`` instead.
        layouts = [(n, sx, dx) for n in LENGTHS for sx in stretches for dx in shifts]
        feats = [_cells(grey, n, sx, dx) for n, sx, dx in layouts]
        probs = self.model.probs(features(np.concatenate(feats)))
        logp = np.log(np.maximum(probs, 1e-12))
        per_len: dict[int, list[np.ndarray]] = {}
        start = 0
        for (n, _, _), f in zip(layouts, feats, strict=True):
            per_len.setdefault(n, []).append(logp[start : start + len(f)])
            start += len(f)
        stacked = {n: np.stack(lps) for n, lps in per_len.items()}  # [placements, n, classes]
        best: CellReading | None = None
        for idx in _PADDED:
            n = len(idx)
            lp = stacked[n]
            rows = np.arange(n)[:, None]
            # Per placement and position, the best class the template allows there.
            picks = idx[rows, np.argmax(lp[:, rows, idx], axis=2).T].T  # [placements, n]
            chosen = np.take_along_axis(lp, picks[:, :, None], axis=2)[:, :, 0]
            scores = chosen.mean(axis=1)
            for k in range(len(lp)):
                score = float(scores[k])
                if best is None or score > best.score:
                    text = "".join(CLASSES[i] for i in picks[k])
                    best = CellReading(text, tuple(np.exp(chosen[k]).tolist()), score)
        return best
