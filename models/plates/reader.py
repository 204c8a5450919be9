"""Read plates in one image: colour candidates first, the text detector only when they fail."""

from __future__ import annotations

import dataclasses
import hashlib
import math
import time
from collections import Counter, defaultdict
from contextlib import AbstractContextManager, nullcontext
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np

from core.errors import ConfigError
from models.plates.cells import SNAPPED_GRID, CellReader
from models.plates.decode import Decoded, PlateDecoder, plate_chars
from models.plates.find import PlateFinder, Rect
from models.plates.line import LINE_PATH, LineReader
from models.plates.locate import (
    MAX_SHRINK,
    colour_candidates,
    edge_candidates,
    plate_colour,
    red_mark,
    shrink_memo,
)
from models.plates.ocr import PaddleOcr, TextBox, crop_rect
from models.plates.province import PROVINCE_PATH, ProvinceCheck, province_positions
from models.plates.quad import rect_quad, refine, snap, stroke_count, warp_quad
from models.plates.rec_neck import REC_NECK_PATH
from models.plates.serial import SERIAL_PATH, SURE, TRIMS, SerialReader, merged, trimmed
from models.plates.syntax import RED_CHARS, RED_MARK_KINDS, normalise, red_positions

# A two-row plate (motorcycles, lorries) is about 2:1; a one-row plate about 3.1:1.
DOUBLE_ROW_MAX_ASPECT = 2.5
# The only blue two-row plate of GA 36 is a light motorcycle's, 220 x 140 mm (1.6:1); a loose box of
# a rolled or yawed blue one-row plate is seldom squarer than 2:1.
BLUE_TWO_ROW_MAX_ASPECT = 1.8


@dataclass(frozen=True, slots=True)
class PlateRead:
    """One plate read in one image."""

    text: str
    confidence: float  # lowest per-character probability
    rect: tuple[tuple[float, float], tuple[float, float], float]
    raw: str  # unconstrained reading, for diagnostics
    stage: str  # "colour" or "detector"
    crop_sha256: str
    # Each character's probability under the recogniser that read it (empty: not known).
    char_probs: tuple[float, ...] = ()

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


# A colour candidate whose long side is under this many pixels is read after the larger ones: a
# plate that small is rarely readable, and small blobs of plate colour (a sign, a sticker, a patch
# of green) ranked first cost PP-OCR runs before the plate is reached (BENCHMARKS.md, fourteenth
# session: four of the shared photos 50-74 ms -> 23-26 ms, the same readings).
SMALL_CANDIDATE = 64.0

# A detector box is found again in a patch of the frame at most this many pixels across.
ZOOM_SIDE = 640

# The dark-frame retry: mean grey level it brightens to, at most this gain.
DARK_TARGET = 110.0
DARK_MAX_GAIN = 4.0


class StepTimes:
    """Where a reader's time goes: seconds and calls per step, summed over the frames it reads
    while ``PlateReader.timings`` holds it (``carpulse eval plates`` prints it per image).

    Steps are leaves (none inside another): the plate finder, the colour and edge locators, the
    text detector (its zoomed re-detections too), the corner fit (corners, snap, warps), the crop
    colour and red mark, the cell model, the line model, PP-OCR's recogniser, the serial model
    (each with its constrained decoding) and the province check; ``frame`` is the whole ``read``."""

    def __init__(self) -> None:
        self.seconds: defaultdict[str, float] = defaultdict(float)
        self.calls: Counter[str] = Counter()

    def step(self, name: str) -> _Step:
        return _Step(self, name)

    def per_frame_ms(self) -> dict[str, dict[str, float]]:
        """Per step: mean milliseconds and calls per frame, and the share of the frame's time;
        ``other``: the frame's time outside the steps (control flow, crops, hashing)."""
        n = max(1, self.calls["frame"])
        total = self.seconds["frame"]
        out = {
            name: {
                "ms": round(1000 * sec / n, 3),
                "calls": round(self.calls[name] / n, 2),
                "share": round(sec / total, 3) if total else 0.0,
            }
            for name, sec in sorted(self.seconds.items(), key=lambda kv: -kv[1])
            if name != "frame"
        }
        rest = total - sum(sec for name, sec in self.seconds.items() if name != "frame")
        out["other"] = {
            "ms": round(1000 * rest / n, 3),
            "calls": 0.0,
            "share": round(rest / total, 3) if total else 0.0,
        }
        out["frame"] = {"ms": round(1000 * total / n, 3), "calls": 1.0, "share": 1.0}
        return out


class _Step:
    """One timed step (a context manager): its wall time is added to ``StepTimes`` on exit."""

    __slots__ = ("name", "start", "times")

    def __init__(self, times: StepTimes, name: str) -> None:
        self.times, self.name, self.start = times, name, 0.0

    def __enter__(self) -> None:
        self.start = time.perf_counter()

    def __exit__(self, *exc: object) -> None:
        self.times.seconds[self.name] += time.perf_counter() - self.start
        self.times.calls[self.name] += 1


_UNTIMED = nullcontext()


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
        cell_model: Path | None = None,
        cell_accept: float = 0.9,
        cell_min: float | None = None,
        snap_passes: int = 3,
        province_model: Path | None = PROVINCE_PATH,
        province_accept: float = 0.97,
        province_keep: float = 0.9,
        line_model: Path | None = LINE_PATH,
        line_accept: float = 0.9,
        line_snapped: bool = True,
        cell_first_accept: float = 0.999,
        line_fallback: float | None = 0.5,
        line_province: bool = True,
        settle: float = 0.9,
        plate_only: bool = True,
        dark_below: float | None = 70.0,
        small_last: bool = True,
        find_model: Path | None = None,
        find_threshold: float = 0.3,
        find_top: int = 2,
        find_quads: bool = True,
        find_first: bool = True,
        find_late: bool = True,
        blue_one_row: bool = True,
        zoom_from: int | None = 1280,
        colour_kinds: bool = True,
        red_marks: bool = True,
        split_min_seen: int = 3,
        serial_model: Path | None = SERIAL_PATH,
        serial_trims: tuple[float, ...] = TRIMS,
        serial_below: float = 0.99,
        rec_neck: Path | None = REC_NECK_PATH,
        province_vote: float = 0.8,
    ) -> None:
        if not 0.0 <= settle <= 1.0:  # NaN too: it would read every candidate of every frame
            raise ConfigError(f"settle {settle}: between 0 and 1")
        # With ``plate_only`` the decoder reads the plate characters' classes alone, so PP-OCR
        # computes only those: the same readings, a run 6-9 % faster (BENCHMARKS.md, twenty-fifth
        # session).
        # ``rec_neck``: PP-OCR's neck and head retrained on plates (None: as PaddleOCR shipped
        # them; ``models.plates.rec_neck``). Held out it read 9 more of 315 real variants' plates
        # with 2 fewer wrong readings (BENCHMARKS.md, twenty-ninth session).
        self.ocr = PaddleOcr(
            model_dir,
            threads=threads,
            narrow=plate_chars() if plate_only else None,
            neck=rec_neck,
        )
        # The plate-font cell recogniser (None, the default: off; ``cells.MODEL_PATH`` to run it).
        # A confident cell reading ends the crop without PP-OCR; otherwise both read it and the
        # more confident valid reading wins. Off since the line model reads what it read on real
        # photos: the same plates on every real set, 2.6 ms a crop less (a fresh synthetic set
        # lost 3 of 291 plates, TUNE gained 1; BENCHMARKS.md, eighteenth session).
        self.cells = CellReader(cell_model) if cell_model is not None else None
        self.cell_accept = cell_accept
        # The cells' first character (the province, mostly) must reach this too for their
        # reading to end the crop or to compete with PP-OCR's.
        self.cell_first_accept = cell_first_accept
        # The cells' lowest character probability must reach this (default: ``min_confidence``).
        self.cell_min = min_confidence if cell_min is None else cell_min
        self.decoder = PlateDecoder(self.ocr.alphabet, plate_only)
        # The plate-line recogniser (None: off): a reading at ``line_accept`` ends the crop
        # without PP-OCR. Trained on plates drawn in many fonts (``fonts.TRAIN_CJK``), it reads
        # more plates of fonts it never saw than PP-OCR alone (BENCHMARKS.md, eleventh session).
        self.line = LineReader(line_model, threads) if line_model is not None else None
        self.line_decoder = PlateDecoder(self.line.alphabet) if self.line is not None else None
        self.line_accept = line_accept
        # A line reading below ``line_accept`` is dropped, not weighed against PP-OCR's: on the
        # shared police photo a 0.53 line reading of the edge stage's crop ended the search
        # wrong before the text detector read the plate right.
        self.line_snapped = line_snapped
        # A line reading at ``line_fallback`` (None: never) is kept for a crop that neither the
        # cells nor PP-OCR read (0.3 read more synthetic plates but 2 of the 21 real ones wrong).
        self.line_fallback = line_fallback
        # A line reading sure of every character but the province (the glyph real plates draw
        # least like any training font) ends the crop too when the province classifier is sure
        # of the province on the snapped crop: PP-OCR (8-15 ms a crop) is not run.
        self.line_province = line_province
        # A reading below ``settle`` does not end the search: the next candidates and stages are
        # read too and the most confident reading wins. With 0.9, TUNE 1,378 -> 1,399 of 1,704,
        # and the shared photos stay 21/21 when the locator's downscale changes slightly, where
        # the first-reading rule (0.0) lost 2 (BENCHMARKS.md, twelfth session).
        self.settle = settle
        # A frame whose mean grey level is below ``dark_below`` (None: never) and that gave no
        # sure reading is read again brightened (mean raised to ``DARK_TARGET``).
        self.dark_below = dark_below
        # Colour candidates under ``SMALL_CANDIDATE`` px are read after the larger ones (their
        # order by score kept within each group); off: by score alone.
        self.small_last = small_last
        # The learned plate finder (None: off, the default: it fits synthetic photos, see
        # BENCHMARKS.md): its best boxes are read like colour candidates (``models.plates.find``).
        if not 0.0 <= find_threshold <= 1.0:
            raise ConfigError(f"find_threshold {find_threshold}: between 0 and 1")
        if not 1 <= find_top <= 16:
            raise ConfigError(f"find_top {find_top}: 1 to 16")
        self.finder = (
            PlateFinder(find_model, threads, find_threshold, find_top)
            if find_model is not None
            else None
        )
        # Where the corner fit finds no plate in a finder's box, its own corners deskew the crop.
        self.find_quads = find_quads
        # The finder's boxes are read first by the plate models alone (a box that is not a plate,
        # a grille or a sign, then costs a millisecond or two, not a PP-OCR run), and with PP-OCR
        # too before the text detector (40-100 ms a frame) when nothing is sure by then.
        self.find_first = find_first and self.finder is not None
        self.find_late = find_late and self.finder is not None
        # A blue colour candidate is read as a one-row plate unless its box is squarer than
        # ``BLUE_TWO_ROW_MAX_ASPECT`` (a light motorcycle's plate): a loose box of a rolled or
        # yawed blue one-row plate is often squarer than 2.5:1 (read as one row, then laid out as
        # one row at twice the width: 20-40 ms).
        self.blue_one_row = blue_one_row
        # Every crop is read only as the kinds GA 36 gives its measured colour (``locate.
        # plate_colour``, ``syntax.COLOUR_KINDS``): a green plate has eight characters, and a
        # reading of seven (one character lost on a blurred or yawed plate) is a valid ordinary
        # plate otherwise. Not the colour locator's label: it calls some blue plates green.
        self.colour_kinds = colour_kinds
        # A crop of no plate colour with a red glyph at one end (``locate.red_mark``: a police
        # plate's 警, WJ, 应急, 使) is read only as the kinds with a red character there (a red W
        # read as 黑 made WJ plates ordinary ones). PP-OCR and the line model often miss a faded
        # red 警, and six black characters are no valid plate: where the crop's reading is not
        # sure, the glyph may vouch for the red characters (``_red_reading``). Such a reading
        # counts when the recogniser read each black character as it stands (the red ones read
        # or not), and never ends a search (``RED_VOUCH``): a 应急 read right must not become a
        # 警 (the same black characters).
        self.red_marks = red_marks
        # A crop of two-row shape that PP-OCR read as one row is laid out as one row (the top
        # row beside the bottom one, a second run at twice the width) only if that first read
        # saw at least this many characters (0: always). On the dev sets no crop that read
        # fewer than 4 gave a reading laid out, and at 5 two-row plates were lost: 3 keeps a
        # character's margin (BENCHMARKS.md, twenty-fourth session).
        if not 0 <= split_min_seen <= 16:
            raise ConfigError(f"split_min_seen {split_min_seen}: 0 to 16")
        self.split_min_seen = split_min_seen
        # In a frame whose longer side is over ``zoom_from`` px (None: never), the text
        # detector's boxes from a pass that shrank it twice or more are found again around
        # themselves at the frame's resolution: a box found on a shrunk frame is loose and cut
        # the red 警 of a police plate. On frames up to 1280 px it read no more plates on the dev
        # and held-out sets (BENCHMARKS.md, nineteenth session), so they are left as they were.
        if zoom_from is not None and not 0 <= zoom_from <= 1_000_000:
            raise ConfigError(f"zoom_from {zoom_from}: None, or 0 to 1000000 px")
        self.zoom_from = zoom_from
        self.min_confidence = min_confidence
        self.detector_sides = detector_sides
        self.deskew = deskew
        self.min_strokes = min_strokes
        self.first_floor = first_floor
        self.edge_width = edge_width
        # Passes of ``quad.snap`` (0: off): the corners re-fitted to the character row.
        self.snap_passes = snap_passes
        # The province read again by its own classifier (None: off); it replaces the reading's
        # province when its probability reaches ``province_accept``.
        self.province = (
            ProvinceCheck(province_model, province_accept) if province_model is not None else None
        )
        # ... but never a province the recognisers read at ``province_keep`` or more (above 1:
        # any). The classifier learned its provinces from drawn fonts: on the dev sets every
        # province it replaced on a real photo had been read at 0.98-1.0, and wrongly replaced
        # (皖 -> 辽, 宁), while those it corrected on drawn plates had been read at 0.35 and 0.77
        # (BENCHMARKS.md, twenty-fifth session).
        if not 0.0 <= province_keep <= 1.01:  # NaN too
            raise ConfigError(f"province_keep {province_keep}: between 0 and 1.01 (1.01: off)")
        self.province_keep = province_keep
        # The recogniser trained on real plate photos (None: off, ``models.plates.serial``): it
        # reads each one-row crop PP-OCR read validly again, and where it is surer of the letters
        # and digits its letters and digits replace PP-OCR's (the province and any other
        # character stay PP-OCR's). The shared photos' dev variants: 7 more plates of 480, none
        # lost (a G read as 6 in six of them, a Q read as D); the drawn dev sets read the same
        # (BENCHMARKS.md, twenty-sixth session).
        if not serial_trims or not all(0.0 <= t < 0.45 for t in serial_trims):  # NaN too
            raise ConfigError(f"serial_trims {serial_trims}: one or more shares in [0, 0.45)")
        self.serial = SerialReader(serial_model, threads) if serial_model is not None else None
        self.serial_decoder = (
            PlateDecoder(self.serial.alphabet) if self.serial is not None else None
        )
        self.serial_trims = tuple(serial_trims)
        # ... for PP-OCR readings below this confidence only: to win, the serial model must be
        # surer still, and on the dev sets no reading at 0.99 or more was changed (75 of 176
        # votes; 43 % of its runs saved).
        if not 0.0 <= serial_below <= 1.01:  # NaN too
            raise ConfigError(f"serial_below {serial_below}: between 0 and 1.01 (1.01: always)")
        self.serial_below = serial_below
        # A chosen reading whose province its recogniser read below this (0: never) has its
        # province voted on by PP-OCR over the crop and six jittered copies of it (cut 2 % off
        # either end, 4 % off the top or the bottom, 12 % wider, 10 % narrower): a province
        # read unsurely is the head's guess about a glyph it barely sees, and a slightly
        # different crop often shows it. The copies that read the rest of the plate the same
        # vote with their province's probability. The dev variants of the shared photos read 6
        # more of 480 (苏 read as 鄂, 新 or 皖; 粤 as 鲁 or 闽), the drawn dev sets as many; held
        # out 1 more of 315 variants, drawn sets the same. About 67 ms on one core on the 1
        # frame in 8-10 that votes (BENCHMARKS.md, thirtieth session). Provinces the province
        # classifier set are left as it set them.
        if not 0.0 <= province_vote <= 1.0:  # NaN too
            raise ConfigError(f"province_vote {province_vote}: between 0 and 1 (0: off)")
        self.province_vote = province_vote
        # Per frame: the crop each reading came from (by its id: the reading itself, kept alive so
        # that no other takes its id, then its crop, colour, mark and whether it is two-row).
        self._sources: dict[int, tuple[PlateRead, np.ndarray, str | None, str | None, bool]] = {}
        # Where the time goes (None: not measured): ``StepTimes`` summed over the frames read.
        self.timings: StepTimes | None = None

    def _step(self, name: str) -> AbstractContextManager[None]:
        return _UNTIMED if self.timings is None else self.timings.step(name)

    @property
    def _snapped_readers(self) -> bool:
        """Whether any model reads the snapped crop: without one, no snap is made (1.5 ms a crop).
        Derived, not stored: a reader whose models are swapped after it is made stays right."""
        return self.cells is not None or self.line is not None or self.province is not None

    def _read_crops(
        self,
        image: np.ndarray,
        rects: list[tuple[tuple[float, float], tuple[float, float], float]],
        stage: str,
        guesses: list[np.ndarray] | None = None,
        ocr: bool = True,
        one_row: bool = False,
    ) -> list[PlateRead]:
        """Readings of the plates in ``rects``; ``guesses``: corners (TL, TR, BR, BL) to deskew by
        where the corner fit finds none (the finder's); ``ocr=False``: the plate models only,
        never PP-OCR (10-20 ms a crop); ``one_row``: the plates are one-row whatever the boxes'
        shape (a blue plate in a box no squarer than a light motorcycle's)."""
        deskewed: list[np.ndarray | None] = []
        for_cells: list[np.ndarray | None] = []
        # Colour and edge boxes surround a plate; a text detector's box may hold any line of
        # text (snapping it too read 20 of the 21 shared photos: a police plate's 警 lost).
        snapping = stage != "detector"
        for k, rect in enumerate(rects):
            # Deskewed crop first (roll and perspective tilt undone from the plate's corners).
            with self._step("corner fit"):
                quad = refine(image, rect) if self.deskew else None
                if quad is None and self.deskew and guesses is not None:
                    quad = guesses[k]
                deskewed.append(warp_quad(image, quad) if quad is not None else None)
                snapped = None
                if self.deskew and self.snap_passes > 0 and self._snapped_readers and snapping:
                    # The colour fit (or the plain box) is often a tenth of the plate off and the
                    # plate models want the characters' row: the cells, the line model's second
                    # view and the province classifier read a crop re-fitted to the character
                    # row. PP-OCR keeps the crop it was tuned on (given the snapped crop too, it
                    # read 19 of the 21 shared photos: a wild snap on a real car).
                    start = quad if quad is not None else rect_quad(rect)
                    snapped = snap(image, start, self.snap_passes)
                for_cells.append(warp_quad(image, snapped) if snapped is not None else None)
        crops = [
            c if c is not None else crop_rect(image, r)
            for r, c in zip(rects, deskewed, strict=True)
        ]
        with self._step("crop colour"):
            colours = [plate_colour(c) for c in crops] if self.colour_kinds else None
            marks = (
                [None if colours and colours[i] else red_mark(c) for i, c in enumerate(crops)]
                if self.red_marks
                else None
            )
        best = self._recognise(
            [(i, c, s) for i, (c, s) in enumerate(zip(crops, for_cells, strict=True))],
            rects,
            stage,
            ocr,
            one_row,
            colours,
            marks,
        )
        # A corner fit can go wrong (a lamp or a bumper of the plate's colour): where the deskewed
        # crop gave no reading, the plain rotated rectangle gets its turn.
        no_snap: np.ndarray | None = None
        retry = [
            (i, crop_rect(image, rects[i]), no_snap)
            for i, c in enumerate(deskewed)
            if c is not None and i not in best
        ]
        if retry:
            best.update(self._recognise(retry, rects, stage, ocr, one_row, colours, marks))
        return [r for r, _ in best.values()]

    def _recognise(
        self,
        items: list[tuple[int, np.ndarray, np.ndarray | None]],
        rects: list[tuple[tuple[float, float], tuple[float, float], float]],
        stage: str,
        ocr: bool = True,
        one_row: bool = False,
        colours: list[str | None] | None = None,
        marks: list[str | None] | None = None,
    ) -> dict[int, tuple[PlateRead, float]]:
        """The best valid, confident reading per owner of ``(owner, crop, cell_crop)`` items
        (``colours[owner]``: the plate's background colour, if known; ``marks[owner]``: its red
        mark, ``locate.red_mark``).

        ``cell_crop`` (the snapped crop) is what the cells read, ``crop`` when it is ``None``.
        """
        best: dict[int, tuple[PlateRead, float]] = {}
        by_cells: dict[int, tuple[PlateRead, float]] = {}
        # Cell readings whose first character is below ``cell_first_accept``: PP-OCR's valid
        # reading of the crop, if any, is taken over them.
        weak_cells: dict[int, tuple[PlateRead, float]] = {}
        views: dict[int, tuple[np.ndarray, tuple[tuple[float, ...], tuple[float, ...]]]] = {}
        by_line: dict[int, tuple[PlateRead, float]] = {}
        for_ocr: list[tuple[int, np.ndarray, bool]] = []
        for i, crop, cell_crop in items:
            if crop.shape[0] < 6 or crop.shape[1] < 12:
                continue
            if stroke_count(crop) < self.min_strokes:  # not text: skip the recogniser
                continue
            double = not one_row and crop.shape[1] / crop.shape[0] < DOUBLE_ROW_MAX_ASPECT
            colour = colours[i] if colours is not None else None
            mark = marks[i] if marks is not None else None
            seen, grid = (crop, None) if cell_crop is None else (cell_crop, SNAPPED_GRID)
            cell = None
            if self.cells is not None and not double:
                with self._step("cell model"):
                    cell = self.cells.read(seen, grid)
            if grid is not None and not double and i not in views:  # snapped crops only
                views[i] = (seen, grid)
            if cell is not None and cell.confidence >= self.cell_min:
                read = PlateRead(
                    cell.text, cell.confidence, rects[i], cell.text, stage, _sha(seen),
                    tuple(cell.char_probs),
                )  # fmt: skip
                sure_first = bool(cell.char_probs) and cell.char_probs[0] >= self.cell_first_accept
                if cell.confidence >= self.cell_accept and sure_first:
                    _keep(best, i, read, cell.confidence)
                    continue
                _keep(by_cells if sure_first else weak_cells, i, read, cell.confidence)
            if not double and self.line is not None:
                with self._step("line model"):
                    line, probs = self._read_line(crop, i, rects, stage, colour, mark)
                if cell_crop is not None and self.line_snapped:
                    with self._step("line model"):
                        other, other_probs = self._read_line(
                            cell_crop, i, rects, stage, colour, mark
                        )
                    if other is not None and (line is None or other.confidence > line.confidence):
                        line, probs = other, other_probs
                # The reader's own bar (``min_confidence``) holds for line readings too.
                sure = max(self.line_accept, self.min_confidence)
                if line is not None and line.confidence >= sure:
                    _keep(best, i, line, line.confidence)
                    continue
                with self._step("province check"):
                    vouched = self._vouched(line, probs, views.get(i), sure)
                if vouched is not None:
                    _keep(best, i, vouched, vouched.confidence)
                    continue
                if (
                    line is not None
                    and self.line_fallback is not None
                    and line.confidence >= max(self.line_fallback, self.min_confidence)
                ):
                    _keep(by_line, i, line, line.confidence)
            if i not in best and ocr:
                for_ocr.append((i, crop, double))
        by_ocr: dict[int, tuple[PlateRead, float]] = {}
        for owner, crop, double in for_ocr:
            colour = colours[owner] if colours is not None else None
            mark = marks[owner] if marks is not None else None
            # A crop of two-row shape is read as one row first (most such crops are one-row
            # plates in a loose box) and laid out as one row, twice as wide, only when that gives
            # nothing and shows some text: PP-OCR reads most of a two-row plate's tall bottom row
            # (five characters) even squeezed; a squarish blob it reads as one or two characters
            # (a sign, a lamp) is no plate.
            ocr_seen = self._read_ocr(
                crop, owner, rects, stage, by_ocr, colour, mark, serial=not double
            )
            if double and owner not in by_ocr and len(ocr_seen) >= self.split_min_seen:
                self._read_ocr(_split_rows(crop), owner, rects, stage, by_ocr, colour, mark)
        for owner in set(by_cells) | set(by_ocr) | set(weak_cells) | set(by_line):
            if owner in best:
                continue
            pick = self._combine(by_cells.get(owner), by_ocr.get(owner))
            if pick is None:
                pick = weak_cells.get(owner) or by_line[owner]
            assert pick is not None  # owners with at least one reading
            best[owner] = pick
        if self.province is not None:
            for owner, (read, score) in best.items():
                if owner not in views:
                    continue
                crop, grid = views[owner]
                # A province the recogniser itself read at ``province_keep`` stays.
                held = frozenset(
                    p
                    for p in province_positions(read.text)
                    if p < len(read.char_probs) and read.char_probs[p] >= self.province_keep
                )
                with self._step("province check"):
                    text = self.province.check(crop, read.text, grid, held)
                if text != read.text:  # a province no recogniser read: its probability unknown
                    best[owner] = (dataclasses.replace(read, text=text, char_probs=()), score)
        if self.province_vote > 0:
            crops: dict[int, np.ndarray] = {}
            for i, crop, _ in items:
                crops.setdefault(i, crop)
            for owner, (read, _) in best.items():
                double = not one_row and crops[owner].shape[1] / crops[owner].shape[0] < (
                    DOUBLE_ROW_MAX_ASPECT
                )
                colour = colours[owner] if colours is not None else None
                mark = marks[owner] if marks is not None else None
                self._sources[id(read)] = (read, crops[owner], colour, mark, double)
        return best

    def _read_ocr(
        self,
        crop: np.ndarray,
        owner: int,
        rects: list[tuple[tuple[float, float], tuple[float, float], float]],
        stage: str,
        by_ocr: dict[int, tuple[PlateRead, float]],
        colour: str | None = None,
        mark: str | None = None,
        serial: bool = False,
    ) -> str:
        """PP-OCR's valid, confident reading of one crop, kept in ``by_ocr`` if it scores best;
        returns what it read unconstrained (``normalise``d greedy text). ``serial``: its letters
        and digits may be replaced by the serial recogniser's (``_serial_vote``)."""
        with self._step("PP-OCR recogniser"):
            probs = self.ocr.recognise([crop])[0]
            raw = normalise(self.decoder.greedy(probs))
            dec = self._decoded(self.decoder, probs, colour, mark)
        if dec is None:
            return raw
        conf = _confidence(dec.char_probs, self.first_floor)
        if conf < self.min_confidence:
            return raw
        text, char_probs = dec.text, dec.char_probs
        if serial and self.serial is not None and conf < self.serial_below:
            with self._step("serial model"):
                vote = self._serial_vote(crop, text, char_probs, conf, colour, mark)
            if vote is not None:
                text, char_probs, conf = vote
        _keep(
            by_ocr,
            owner,
            PlateRead(text, conf, rects[owner], raw, stage, _sha(crop), char_probs),
            dec.score,
        )
        return raw

    def _decoded(
        self, decoder: PlateDecoder, probs: np.ndarray, colour: str | None, mark: str | None
    ) -> Decoded | None:
        """The most probable valid reading of ``probs`` as the kinds of the crop's ``colour`` or
        red ``mark``; below the reader's bar, the red glyph may vouch for its red characters
        (``_red_reading``)."""
        dec = decoder.constrained(probs, colour or mark)
        if mark is not None and (
            dec is None or _confidence(dec.char_probs, self.first_floor) < self.min_confidence
        ):
            dec = _red_reading(decoder, probs, mark) or dec
        return dec

    def _serial_vote(
        self,
        crop: np.ndarray,
        text: str,
        char_probs: tuple[float, ...],
        conf: float,
        colour: str | None,
        mark: str | None,
    ) -> tuple[str, tuple[float, ...], float] | None:
        """``text`` with the serial recogniser's letters and digits, their probabilities and the
        reading's confidence, when it reads the crop as a valid plate more confidently (``None``:
        PP-OCR's reading stands). The strips of ``serial_trims`` are read in turn until one is
        sure."""
        assert self.serial is not None and self.serial_decoder is not None
        best: Decoded | None = None
        best_conf = 0.0
        for trim in self.serial_trims:
            strip = trimmed(crop, trim)
            if strip is None:
                continue
            probs = self.serial.probs(strip)
            other = self._decoded(self.serial_decoder, probs, colour, mark)
            if other is None:
                continue
            other_conf = _confidence(other.char_probs, self.first_floor)
            if best is None or other_conf > best_conf:
                best, best_conf = other, other_conf
            if best_conf >= SURE:
                break
        if best is None or best_conf <= conf:
            return None
        keep = frozenset(province_positions(text))
        mix = merged(text, char_probs, best.text, best.char_probs, keep)
        if mix is None:
            return None
        return mix[0], mix[1], _confidence(mix[1], self.first_floor)

    def _read_line(
        self,
        crop: np.ndarray,
        owner: int,
        rects: list[tuple[tuple[float, float], tuple[float, float], float]],
        stage: str,
        colour: str | None = None,
        mark: str | None = None,
    ) -> tuple[PlateRead | None, tuple[float, ...]]:
        """The plate-line model's valid reading of one crop and its characters' probabilities
        (``None, ()`` if no template fits)."""
        assert self.line is not None and self.line_decoder is not None
        probs = self.line.probs([crop])[0]
        dec = self.line_decoder.constrained(probs, colour or mark)
        red = _red_reading(self.line_decoder, probs, mark) if mark is not None else None
        if red is not None and (dec is None or red.confidence > dec.confidence):
            dec = red
        if dec is None:
            return None, ()
        raw = normalise(self.line_decoder.greedy(probs))
        read = PlateRead(
            dec.text, dec.confidence, rects[owner], raw, stage, _sha(crop), dec.char_probs
        )
        return read, dec.char_probs

    def _vouched(
        self,
        line: PlateRead | None,
        probs: tuple[float, ...],
        view: tuple[np.ndarray, tuple[tuple[float, ...], tuple[float, ...]]] | None,
        sure: float,
    ) -> PlateRead | None:
        """A line reading sure of every character but its province, with the province the
        province classifier is sure of on the snapped crop (``None`` when either is not)."""
        if not self.line_province or line is None or view is None or self.province is None:
            return None
        positions = province_positions(line.text)
        rest = [q for p, q in enumerate(probs) if p not in positions]
        if not positions or not rest or min(rest) < sure:
            return None
        text = self.province.vouch(view[0], line.text, view[1])
        if text is None:
            return None
        return dataclasses.replace(line, text=text, confidence=min(rest), char_probs=())

    @staticmethod
    def _combine(
        cell: tuple[PlateRead, float] | None, ocr: tuple[PlateRead, float] | None
    ) -> tuple[PlateRead, float] | None:
        """The more confident of the cell and PP-OCR readings of one crop (either may be missing)."""
        if cell is None or ocr is None:
            return cell or ocr
        # (Fusing them character by character, or taking the cells' province into PP-OCR's
        # reading, read fewer TUNE plates: 145 and 143 against 145 of 184.)
        return cell if cell[0].confidence >= ocr[0].confidence else ocr

    def read(self, image: np.ndarray) -> list[PlateRead]:
        """Valid plate readings in a BGR image, most confident first (an empty list if none)."""
        bgr = _as_bgr(image)
        if bgr is None:
            return []
        with shrink_memo(), self._step("frame"):  # shrunk to several sizes: averaged once
            return self._read(bgr)

    def _read(self, bgr: np.ndarray) -> list[PlateRead]:
        self._sources.clear()
        try:
            return self._read_frame(bgr)
        finally:
            self._sources.clear()

    def _read_frame(self, bgr: np.ndarray) -> list[PlateRead]:
        found = self._search(bgr)
        if not self._settled(found) and self.dark_below is not None:
            # A dark frame (night, a shaded gate) with no sure reading is read once more with
            # its exposure raised: the colour locator and the recognisers want a lit plate.
            level = float(cv2.cvtColor(bgr, cv2.COLOR_BGR2GRAY).mean())
            if level < self.dark_below:
                gain = min(DARK_MAX_GAIN, DARK_TARGET / max(level, 1.0))
                bright = cv2.convertScaleAbs(bgr, alpha=gain)
                found = self._better(found, self._search(bright))
        if self.province_vote > 0:
            found = [self._voted(r) for r in found]
        # The same plate may be found twice (two colours, two boxes): keep the best of each text.
        unique: dict[str, PlateRead] = {}
        for r in found:
            if r.text not in unique or r.confidence > unique[r.text].confidence:
                unique[r.text] = r
        return sorted(unique.values(), key=lambda r: r.confidence, reverse=True)

    def _voted(self, read: PlateRead) -> PlateRead:
        """``read`` with the province PP-OCR reads most surely over its crop and jittered copies
        of it (``province_vote``), when its own province was read below ``province_vote``."""
        source = self._sources.get(id(read))
        positions = province_positions(read.text)
        if (
            source is None
            or source[0] is not read
            or not positions
            or positions[0] >= len(read.char_probs)
        ):
            return read  # no crop, no province, or a province the classifier set
        p = positions[0]
        if read.char_probs[p] >= self.province_vote:
            return read
        _, crop, colour, mark, double = source
        if double:
            crop = _split_rows(crop)
        rest = read.text[:p] + read.text[p + 1 :]
        votes = {read.text[p]: read.char_probs[p]}
        crops = [*_jittered(crop), crop]  # the crop itself last: it mostly reads as ``read``
        with self._step("province vote"):
            for k, copy in enumerate(crops):
                (probs,) = self.ocr.recognise([copy])
                dec = self._decoded(self.decoder, probs, colour, mark)
                if dec is None or len(dec.text) != len(read.text) or p >= len(dec.char_probs):
                    continue
                if dec.text[:p] + dec.text[p + 1 :] == rest:
                    votes[dec.text[p]] = votes.get(dec.text[p], 0.0) + dec.char_probs[p]
                # Each copy adds at most 1: stop once the copies left cannot change the winner.
                first, second = [*sorted(votes.values(), reverse=True), 0.0][:2]
                if first > second + len(crops) - 1 - k:
                    break
        top = max(votes, key=lambda c: votes[c])  # the reading's own on a tie (first key)
        if top == read.text[p]:
            return read
        # The probability of the voted province: its share of the votes cast.
        probs_ = list(read.char_probs)
        probs_[p] = votes[top] / sum(votes.values())
        text = read.text[:p] + top + read.text[p + 1 :]
        return dataclasses.replace(read, text=text, char_probs=tuple(probs_))

    def _search(self, image: np.ndarray) -> list[PlateRead]:
        """The readings of the best stage: colour candidates, edge candidates, text detector."""
        found: list[PlateRead] = []
        boxes: list[tuple[float, Rect, np.ndarray]] = []
        if self.finder is not None and (self.find_first or self.find_late):
            with self._step("plate finder"):
                boxes = self.finder.find(image)
        if self.find_first:
            found = self._read_found(image, boxes, found, ocr=False)
            if self._settled(found):
                return found
        # One candidate at a time, best first: the first confident valid reading usually ends it.
        # A reading below ``settle`` does not: the search goes on and the most confident wins.
        with self._step("colour locator"):
            cands = colour_candidates(image)
        if self.small_last:  # a stable sort: by score within each group
            cands.sort(key=lambda c: max(c.rect[1]) < SMALL_CANDIDATE)
        for cand in cands:
            one_row = (
                self.blue_one_row
                and cand.colour == "blue"
                and _aspect(cand.rect) >= BLUE_TWO_ROW_MAX_ASPECT
            )
            read = self._read_crops(image, [cand.rect], "colour", one_row=one_row)
            found = self._better(found, read)
            if self._settled(found):
                break
        if not self._settled(found):  # white and black plates (police...) have no colour region
            with self._step("edge locator"):
                edges = edge_candidates(image, self.edge_width)
            for cand in edges:
                found = self._better(found, self._read_crops(image, [cand.rect], "edge"))
                if self._settled(found):
                    break
        if self.find_late and not self._settled(found):
            found = self._read_found(image, boxes, found, ocr=True)
        longest = max(image.shape[:2])
        zoom = self.zoom_from is not None and longest > self.zoom_from
        for side in _passes(self.detector_sides, longest):
            if self._settled(found):
                break
            with self._step("text detector"):
                dets = [b for b in self.ocr.detect(image, side) if _plausible(b.rect)]
            dets.sort(key=_rank, reverse=True)
            rects = [b.rect for b in dets[:4]]
            if zoom and longest >= 2 * side:
                rects = [self._zoomed(image, r) or r for r in rects]
            rects += _two_row_pairs(dets[:4])
            found = self._better(found, self._read_crops(image, rects, "detector"))
        return found

    def _zoomed(self, image: np.ndarray, rect: Rect) -> Rect | None:
        """``rect`` found again by the text detector at the frame's own resolution around it (at
        most ``ZOOM_SIDE`` px): a box found on a shrunk frame is loose and cuts a plate's end."""
        (cx, cy), (w, h), _ = rect
        long, short = max(w, h), min(w, h)
        pts = cv2.boxPoints(rect)
        grow = max(short, 0.3 * long)
        x0, y0 = np.floor(pts.min(axis=0) - grow).astype(int)
        x1, y1 = np.ceil(pts.max(axis=0) + grow).astype(int)
        x0, y0 = max(0, int(x0)), max(0, int(y0))
        x1, y1 = min(image.shape[1], int(x1)), min(image.shape[0], int(y1))
        if x1 - x0 < 16 or y1 - y0 < 8:
            return None
        patch = image[y0:y1, x0:x1]
        with self._step("text detector"):
            boxes = self.ocr.detect(patch, min(ZOOM_SIDE, max(patch.shape[:2])))
        near = [
            b
            for b in boxes
            if _plausible(b.rect)
            and math.hypot(b.rect[0][0] + x0 - cx, b.rect[0][1] + y0 - cy) <= long / 2
        ]
        if not near:
            return None
        (bx, by), size, ang = max(near, key=_rank).rect  # the first of equals, as before
        return ((bx + x0, by + y0), size, ang)

    def _read_found(
        self,
        image: np.ndarray,
        boxes: list[tuple[float, Rect, np.ndarray]],
        found: list[PlateRead],
        ocr: bool,
    ) -> list[PlateRead]:
        """``found`` bettered by the finder's boxes, best first, until a reading is sure."""
        for _, rect, quad in boxes:
            guess = [quad] if self.find_quads else None
            found = self._better(found, self._read_crops(image, [rect], "finder", guess, ocr=ocr))
            if self._settled(found):
                break
        return found

    def _settled(self, found: list[PlateRead]) -> bool:
        return bool(found) and max(r.confidence for r in found) >= self.settle

    @staticmethod
    def _better(old: list[PlateRead], new: list[PlateRead]) -> list[PlateRead]:
        """The readings of the stage with the more confident best reading (the earlier on a tie)."""
        if not new:
            return old
        if not old:
            return new
        top = max(r.confidence for r in new)
        return new if top > max(r.confidence for r in old) else old


def _as_bgr(image: object) -> np.ndarray | None:
    """``image`` as 8-bit BGR (grey and BGRA converted, other dtypes clipped), or ``None``."""
    if not isinstance(image, np.ndarray) or image.ndim not in (2, 3):
        return None
    if image.shape[0] < 16 or image.shape[1] < 16:
        return None
    if image.ndim == 3 and image.shape[2] not in (3, 4):
        return None
    if image.dtype != np.uint8:
        if not np.issubdtype(image.dtype, np.number) or np.issubdtype(image.dtype, np.bool_):
            return None
        image = np.nan_to_num(image.astype(np.float64), nan=0.0, posinf=255.0, neginf=0.0)
        image = np.clip(image, 0, 255).astype(np.uint8)
    if image.ndim == 2:
        return cv2.cvtColor(image, cv2.COLOR_GRAY2BGR)
    if image.shape[2] == 4:
        return cv2.cvtColor(image, cv2.COLOR_BGRA2BGR)
    return np.ascontiguousarray(image)


def _jittered(crop: np.ndarray) -> list[np.ndarray]:
    """Six slightly different crops of a plate: 2 % cut off its left or right end, 4 % off its
    top or bottom, stretched 12 % wider or squeezed 10 % narrower (too small ones left out)."""
    h, w = crop.shape[:2]
    dx, dy = max(1, round(0.02 * w)), max(1, round(0.04 * h))
    out = [
        crop[:, dx:],
        crop[:, : w - dx],
        crop[dy:, :],
        crop[: h - dy, :],
        cv2.resize(crop, (max(8, round(w * 1.12)), h)),
        cv2.resize(crop, (max(8, round(w * 0.9)), h)),
    ]
    return [c for c in out if c.shape[0] >= 6 and c.shape[1] >= 12]


def _sha(crop: np.ndarray) -> str:
    return hashlib.sha256(np.ascontiguousarray(crop).tobytes()).hexdigest()


def _keep(
    best: dict[int, tuple[PlateRead, float]], owner: int, read: PlateRead, score: float
) -> None:
    """Keep ``read`` for ``owner`` unless a reading that scores at least as well is there."""
    prev = best.get(owner)
    if prev is None or prev[1] < score:
        best[owner] = (read, score)


# The probability a red character of a reading made by its red mark alone counts as: over the
# reader's bar (``min_confidence``, 0.5), under ``settle`` (0.9) and ``line_accept``, so such a
# reading never ends a search and any surer reading of the frame wins (a 应急 read right is not
# replaced by a 警 with the same black characters).
RED_VOUCH = 0.6


def _red_reading(decoder: PlateDecoder, probs: np.ndarray, mark: str) -> Decoded | None:
    """The most probable valid reading of a crop with a red ``mark`` as one of the kinds with a
    red character there whose black characters the recogniser read exactly so (its red ones read
    or missed); its red characters' probabilities are then ``RED_VOUCH`` (the red glyph vouches
    for them). ``None`` if there is none: a plate whose last black character was read as something
    else is not taken for a 警. Each kind is decoded on its own, so a more probable reading of
    another red kind (使 for a missed WJ) cannot hide the one the recogniser read."""
    seen = normalise(decoder.greedy(probs))
    best: Decoded | None = None
    best_black = ""
    for kind in RED_CHARS:  # police first: see below
        if kind not in RED_MARK_KINDS.get(mark, ()):
            continue
        dec = decoder.constrained(probs, kinds=frozenset((kind,)))
        if dec is None:
            continue
        reds = red_positions(dec.text)
        black = "".join(ch for p, ch in enumerate(dec.text) if p not in reds)
        if not reds or seen not in (dec.text, black):
            continue
        # The same black characters as a police reading (鄂F8888 + 警 or + 应急): the missed red
        # glyph's own fit does not tell them apart, and police cars are far more common than
        # emergency vehicles, so the police reading stays.
        if best is None or (dec.score > best.score and black != best_black):
            best, best_black = dec, black
    if best is None:
        return None
    reds = red_positions(best.text)
    vouched = tuple(RED_VOUCH if p in reds else q for p, q in enumerate(best.char_probs))
    return dataclasses.replace(best, char_probs=vouched)


def _confidence(char_probs: tuple[float, ...], first_floor: float) -> float:
    """Lowest character probability, the first character judged apart.

    The province character (or 使, 应, W) is the one the recogniser knows least (31 provinces in
    one small glyph, the serial font differs from its training text): the reading counts if it
    reaches ``first_floor``, and the rest must reach the usual bar.
    """
    if len(char_probs) < 2 or char_probs[0] < first_floor:
        return 0.0
    return min(char_probs[1:])


def _passes(sides: tuple[int, ...], longest: int) -> tuple[int, ...]:
    """The text detector's passes for a frame whose longer side is ``longest`` px: those of
    ``sides`` that shrink it at most ``MAX_SHRINK`` times, the locators' own limit, and the last
    one always.

    In a 1920-px frame the 320-px pass shrinks a plate six times (a 150 px plate to 25 px, its
    characters 4-5 px high). On the dev variants pasted in 1920-px frames the 640-px pass alone
    read the same plates (one fewer of 480) in 7-20 % less mean time a frame; held out, the same
    plates in 10-12 % less (BENCHMARKS.md, twenty-eighth session).
    """
    return tuple(s for s in sides[:-1] if longest <= MAX_SHRINK * s) + tuple(sides[-1:])


def _rank(box: TextBox) -> float:
    """A text box's rank among the detector's: its score times its area."""
    return box.score * box.rect[1][0] * box.rect[1][1]


def _two_row_pairs(boxes: list[TextBox], most: int = 2) -> list[Rect]:
    """Boxes around two text lines laid out as a two-row plate, at most ``most``: a short line
    centred above a longer one. The text detector finds GA 36's two rows as two lines, and
    neither is a valid plate alone (the province and a letter above, five characters below)."""
    out: list[Rect] = []
    frames = [_axes(b.rect) for b in boxes]
    for i, ((bx, by), (length, height), along_axis, up_axis) in enumerate(frames):
        for j, ((ax, ay), (top_len, top_h), _, _) in enumerate(frames):
            if j == i:
                continue
            if not (0.15 * length <= top_len <= 0.8 * length and 0.25 * height <= top_h <= height):
                continue
            dx, dy = ax - bx, ay - by
            along = dx * along_axis[0] + dy * along_axis[1]
            up = dx * up_axis[0] + dy * up_axis[1]
            # Centred over the long line, and just above it.
            if abs(along) > 0.2 * length or not 0.3 * height <= up <= 0.8 * height + 1.6 * top_h:
                continue
            pts = np.concatenate([cv2.boxPoints(boxes[j].rect), cv2.boxPoints(boxes[i].rect)])
            (cx, cy), size, ang = cv2.minAreaRect(pts.astype(np.float32))
            out.append(((float(cx), float(cy)), (float(size[0]), float(size[1])), float(ang)))
            if len(out) >= most:
                return out
    return out


def _axes(
    rect: Rect,
) -> tuple[tuple[float, float], tuple[float, float], tuple[float, float], tuple[float, float]]:
    """A rotated rectangle's centre, (long, short) sides, unit vector along the long side, and the
    unit vector across it that points up the frame."""
    (cx, cy), (w, h), ang = rect
    if w < h:
        w, h, ang = h, w, ang + 90.0
    t = math.radians(ang)
    ux, uy = math.cos(t), math.sin(t)
    vx, vy = -uy, ux
    if vy > 0:  # image y grows downwards
        vx, vy = -vx, -vy
    return (cx, cy), (w, h), (ux, uy), (vx, vy)


def _aspect(rect: tuple[tuple[float, float], tuple[float, float], float]) -> float:
    """A rotated rectangle's long side over its short side (inf for a flat one)."""
    w, h = rect[1]
    return max(w, h) / min(w, h) if min(w, h) > 0 else float("inf")


def _plausible(rect: tuple[tuple[float, float], tuple[float, float], float]) -> bool:
    return min(rect[1]) >= 6 and 1.5 <= _aspect(rect) <= 8.0
