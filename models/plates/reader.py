"""Read plates in one image: colour candidates first, the text detector only when they fail."""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np

from models.plates.decode import PlateDecoder
from models.plates.locate import colour_candidates, edge_candidates
from models.plates.ocr import PaddleOcr, crop_rect
from models.plates.quad import refine, stroke_count, warp_quad
from models.plates.syntax import normalise

# A two-row plate (motorcycles, lorries) is about 2:1; a one-row plate about 3.1:1.
DOUBLE_ROW_MAX_ASPECT = 2.5


@dataclass(frozen=True, slots=True)
class PlateRead:
    """One plate read in one image."""

    text: str
    confidence: float  # lowest per-character probability
    rect: tuple[tuple[float, float], tuple[float, float], float]
    raw: str  # unconstrained reading, for diagnostics
    stage: str  # "colour" or "detector"
    crop_sha256: str

    def as_dict(self) -> dict[str, object]:
        return {
            "text": self.text,
            "confidence": round(self.confidence, 4),
            "raw": self.raw,
            "stage": self.stage,
            "crop_sha256": self.crop_sha256,
        }


def _split_rows(crop: np.ndarray) -> np.ndarray:
    """Lay a two-row plate out as one row: the top row's centre beside the bottom row."""
    h, w = crop.shape[:2]
    top = crop[int(0.04 * h) : int(0.40 * h), int(0.18 * w) : int(0.82 * w)]
    bottom = crop[int(0.36 * h) : int(0.96 * h), :]
    if top.size == 0 or bottom.size == 0:
        return crop
    bh = bottom.shape[0]
    top = cv2.resize(top, (max(2, round(top.shape[1] * bh / top.shape[0])), bh))
    return np.concatenate([top, bottom], axis=1)


class PlateReader:
    """Locate, recognise and syntax-check plates; ``read`` returns the valid readings found."""

    def __init__(
        self,
        threads: int = 1,
        min_confidence: float = 0.5,
        model_dir: Path | None = None,
        detector_sides: tuple[int, ...] = (320, 640),
        deskew: bool = True,
        min_strokes: float = 4.0,
        first_floor: float = 0.02,
        edge_width: int = 480,
    ) -> None:
        self.ocr = PaddleOcr(model_dir, threads=threads)
        self.decoder = PlateDecoder(self.ocr.alphabet)
        self.min_confidence = min_confidence
        self.detector_sides = detector_sides
        self.deskew = deskew
        self.min_strokes = min_strokes
        self.first_floor = first_floor
        self.edge_width = edge_width

    def _read_crops(
        self,
        image: np.ndarray,
        rects: list[tuple[tuple[float, float], tuple[float, float], float]],
        stage: str,
    ) -> list[PlateRead]:
        deskewed: list[np.ndarray | None] = []
        for rect in rects:
            # Deskewed crop first (roll and perspective tilt undone from the plate's corners).
            quad = refine(image, rect) if self.deskew else None
            deskewed.append(warp_quad(image, quad) if quad is not None else None)
        best = self._recognise(
            [
                (i, c if c is not None else crop_rect(image, r))
                for i, (r, c) in enumerate(zip(rects, deskewed, strict=True))
            ],
            rects,
            stage,
        )
        # A corner fit can go wrong (a lamp or a bumper of the plate's colour): where the deskewed
        # crop gave no reading, the plain rotated rectangle gets its turn.
        retry = [
            (i, crop_rect(image, rects[i]))
            for i, c in enumerate(deskewed)
            if c is not None and i not in best
        ]
        if retry:
            best.update(self._recognise(retry, rects, stage))
        return [r for r, _ in best.values()]

    def _recognise(
        self,
        items: list[tuple[int, np.ndarray]],
        rects: list[tuple[tuple[float, float], tuple[float, float], float]],
        stage: str,
    ) -> dict[int, tuple[PlateRead, float]]:
        """The best valid, confident reading per owner of ``(owner, crop)`` items (one batch)."""
        crops, owners = [], []
        for i, crop in items:
            if crop.shape[0] < 6 or crop.shape[1] < 12:
                continue
            if stroke_count(crop) < self.min_strokes:  # not text: skip the recogniser
                continue
            crops.append(crop)
            owners.append(i)
            if crop.shape[1] / crop.shape[0] < DOUBLE_ROW_MAX_ASPECT:
                crops.append(_split_rows(crop))
                owners.append(i)
        best: dict[int, tuple[PlateRead, float]] = {}
        for owner, crop, probs in zip(owners, crops, self.ocr.recognise(crops), strict=True):
            dec = self.decoder.constrained(probs)
            if dec is None:
                continue
            conf = _confidence(dec.char_probs, self.first_floor)
            if conf < self.min_confidence:
                continue
            prev = best.get(owner)
            if prev is not None and prev[1] >= dec.score:
                continue
            sha = hashlib.sha256(np.ascontiguousarray(crop).tobytes()).hexdigest()
            raw = normalise(self.decoder.greedy(probs))
            best[owner] = (
                PlateRead(dec.text, conf, rects[owner], raw, stage, sha),
                dec.score,
            )
        return best

    def read(self, image: np.ndarray) -> list[PlateRead]:
        """Valid plate readings in a BGR image, most confident first (an empty list if none)."""
        if image is None or image.ndim != 3 or image.shape[0] < 16 or image.shape[1] < 16:
            return []
        found: list[PlateRead] = []
        # One candidate at a time, best first: the first confident valid reading usually ends it.
        for cand in colour_candidates(image):
            found = self._read_crops(image, [cand.rect], "colour")
            if found:
                break
        if not found:  # white and black plates (police, consulate...) have no colour region
            for cand in edge_candidates(image, self.edge_width):
                found = self._read_crops(image, [cand.rect], "edge")
                if found:
                    break
        for side in self.detector_sides:
            if found:
                break
            boxes = [b for b in self.ocr.detect(image, side) if _plausible(b.rect)]
            boxes.sort(key=lambda b: b.score * b.rect[1][0] * b.rect[1][1], reverse=True)
            found = self._read_crops(image, [b.rect for b in boxes[:4]], "detector")
        # The same plate may be found twice (two colours, two boxes): keep the best of each text.
        unique: dict[str, PlateRead] = {}
        for r in found:
            if r.text not in unique or r.confidence > unique[r.text].confidence:
                unique[r.text] = r
        return sorted(unique.values(), key=lambda r: r.confidence, reverse=True)


def _confidence(char_probs: tuple[float, ...], first_floor: float) -> float:
    """Lowest character probability, the first character judged apart.

    The province character (or 使, 应, W) is the one the recogniser knows least (31 provinces in
    one small glyph, the serial font differs from its training text): the reading counts if it
    reaches ``first_floor``, and the rest must reach the usual bar.
    """
    if len(char_probs) < 2 or char_probs[0] < first_floor:
        return 0.0
    return min(char_probs[1:])


def _plausible(rect: tuple[tuple[float, float], tuple[float, float], float]) -> bool:
    w, h = rect[1]
    long, short = max(w, h), min(w, h)
    return short >= 6 and 1.5 <= long / short <= 8.0
