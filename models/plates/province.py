"""A second look at the province: a cell classifier of the 31 province glyphs alone.

The province is the character both recognisers miss most (31 dense glyphs in one small cell): on
the TUNE photos half of the wrong readings were right but for it. ``ProvinceCheck`` reads the
province cell of a chosen reading again with a classifier trained on province cells only (many
more of them than the all-character model sees, rendered straight from plates and degraded:
small, blurred, dark, noisy, JPEG, loose corners) and replaces the province when it is sure.
Trained by ``carpulse plates train --province`` (weights in ``plate_province.npz``, NumPy at run
time, the same format as ``plate_cells.npz``).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from models.plates.cells import CLASSES, PIXELS, CellClassifier, _canvas, _cells, features
from models.plates.fonts import drawn_in_training_fonts
from models.plates.quad import warp_quad
from models.plates.syntax import KINDS, PROVINCES, TEMPLATES
from models.plates.synth import degraded_plate, random_text, render_plate

PROVINCE_PATH = Path(__file__).with_name("plate_province.npz")
_PROV_INDEX = np.array([CLASSES.index(c) for c in PROVINCES])
# Kinds whose number holds a province (all but embassy, Hong Kong/Macau and old armed police).
PROVINCE_KINDS = tuple(k for k, _, ts in KINDS if any(PROVINCES in t for t in ts))


def province_positions(text: str) -> list[int]:
    """Positions of ``text`` where its plate template takes a province (empty if none or invalid)."""
    for t in TEMPLATES:
        if len(t) == len(text) and all(c in a for c, a in zip(text, t, strict=True)):
            return [p for p, a in enumerate(t) if a == PROVINCES]
    return []


class ProvinceCheck:
    """``check(crop, text, grid)``: ``text`` with a province the classifier is sure of."""

    def __init__(
        self, path: Path = PROVINCE_PATH, accept: float = 0.97, reject: float = 0.01
    ) -> None:
        self.model = CellClassifier(path)
        self.accept, self.reject = accept, reject

    def check(
        self,
        crop: np.ndarray,
        text: str,
        grid: tuple[tuple[float, ...], tuple[float, ...]],
        keep: frozenset[int] = frozenset(),
    ) -> str:
        """``text`` with each province the classifier is sure of (``accept``) where the reading's
        own province is all but ruled out (below ``reject``); the provinces at the positions in
        ``keep`` stay as they are."""
        out = self._provinces(crop, text, grid, self.reject, keep=keep)
        return text if out is None else out

    def vouch(
        self, crop: np.ndarray, text: str, grid: tuple[tuple[float, ...], tuple[float, ...]]
    ) -> str | None:
        """``text`` with the province(s) the classifier is sure of (``accept``), or ``None`` when
        it is sure of none (or ``text`` has no province)."""
        return self._provinces(crop, text, grid, float("inf"), strict=True)

    def _provinces(
        self,
        crop: np.ndarray,
        text: str,
        grid: tuple[tuple[float, ...], tuple[float, ...]],
        reject: float,
        strict: bool = False,
        keep: frozenset[int] = frozenset(),
    ) -> str | None:
        """``text`` with the provinces at ``accept`` whose reading is below ``reject`` (but none
        at the positions in ``keep``); ``None`` when there is no province to check or
        (``strict``) one is not sure."""
        positions = [p for p in province_positions(text) if p not in keep]
        grey = _canvas(crop) if positions else None
        if grey is None:
            return None
        stretches, shifts = grid
        n = len(text)
        wins = [_cells(grey, n, sx, dx) for sx in stretches for dx in shifts]
        out = list(text)
        for p in positions:
            probs = self.model.probs(features(np.stack([w[p] for w in wins])))[:, _PROV_INDEX]
            probs /= np.maximum(probs.sum(axis=1, keepdims=True), 1e-12)
            # Every placement must agree (a grid off the province reads any glyph confidently),
            # and the reading's own province must be all but ruled out.
            row = np.exp(np.log(np.maximum(probs, 1e-12)).mean(axis=0))
            best = int(row.argmax())
            if row[best] >= self.accept and row[PROVINCES.index(text[p])] < reject:
                out[p] = PROVINCES[best]
            elif strict:
                return None
        return "".join(out)


def make_province_cells(
    seed: int, start: int, stop: int, many_fonts: bool = False
) -> tuple[np.ndarray, np.ndarray]:
    """``(province cell windows [N, PIXELS], class index into CLASSES [N])`` from plates
    ``start..stop`` of ``seed`` (plate ``i`` depends on ``(seed, i)`` only).

    ``many_fonts``: each plate in ``fonts.training_fonts``'s pair instead of the synth default.

    Each plate of a province kind is rendered, shrunk to 50-320 px wide, degraded (blur, motion,
    night, haze, noise, JPEG 55-95) and warped back from corners moved a little, as the reader's
    crops are; the province cell is cut with the snapped grid's placements.
    """
    xs: list[np.ndarray] = []
    ys: list[int] = []
    for i in range(start, stop):
        with drawn_in_training_fonts(seed, i, many_fonts):
            _province_cells_of(seed, i, xs, ys)
    if not xs:
        return np.empty((0, PIXELS), np.float32), np.empty(0, np.int64)
    return np.stack(xs), np.array(ys, np.int64)


def _province_cells_of(seed: int, i: int, xs: list[np.ndarray], ys: list[int]) -> None:
    """Append the province cells of plate ``i`` of ``seed`` (none for kinds without one)."""
    rng = np.random.default_rng([seed, i, 7])
    kind = PROVINCE_KINDS[int(rng.integers(len(PROVINCE_KINDS)))]
    text = random_text(kind, rng)
    positions = province_positions(text)
    if not positions:
        return
    plate = render_plate(text, kind, rng)
    ph, pw = plate.shape[:2]
    img, pad, scale = degraded_plate(plate, rng)
    quad = np.array(
        [[pad, pad], [pad + pw, pad], [pad + pw, pad + ph], [pad, pad + ph]], np.float32
    )
    quad = quad * scale + rng.normal(0, 1, (4, 2)) * np.array([0.015 * pw, 0.05 * ph]) * scale
    grey = _canvas(warp_quad(img, quad.astype(np.float32)))
    if grey is None:
        return
    win = _cells(grey, len(text), 1.0, float(rng.uniform(-0.015, 0.015)))
    for p in positions:
        xs.append(win[p])
        ys.append(CLASSES.index(text[p]))
