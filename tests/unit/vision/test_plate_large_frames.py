"""Gate cameras of any resolution: a plate in a 1920-3840 px frame is located and read as in a
small one (the locators shrink a large frame at most four times; the text detector's boxes are found
again at the frame's own resolution)."""

from __future__ import annotations

import cv2
import numpy as np
import pytest

from models.plates.locate import MAX_SHRINK, MAX_WORK, colour_candidates, work_scale
from models.plates.synth import render_plate
from tests.conftest import require_data


@pytest.mark.parametrize(
    ("width", "work", "want"),
    [
        (720, 320, 320 / 720),  # the shared photos: as before
        (1029, 320, 320 / 1029),
        (1280, 320, 0.25),  # the last width where the 320-px working width holds
        (1920, 320, 0.25),  # shrunk four times, not six
        (3840, 320, 0.25),  # 960 px
        (7680, 320, MAX_WORK / 7680),  # beyond 4K: MAX_WORK px
        (1920, 480, 0.25),  # the edge locator's 480 px
        (100, 320, 1.0),  # never enlarged
        (0, 320, 1.0),  # an empty frame does not divide by zero
    ],
)
def test_work_scale(width: int, work: int, want: float) -> None:
    assert work_scale(width, work) == pytest.approx(want)
    assert work_scale(width, work) * max(width, 1) <= max(work, MAX_WORK, 1) + 1e-9
    if width >= work * MAX_SHRINK and width <= MAX_WORK * MAX_SHRINK:
        assert work_scale(width, work) == pytest.approx(1 / MAX_SHRINK)


def _frame(width: int, plate_w: int, seed: int = 0) -> np.ndarray:
    """A grey, cluttered ``width`` x 9/16 frame with a blue plate ``plate_w`` px wide in it."""
    rng = np.random.default_rng(seed)
    h = width * 9 // 16
    frame = np.full((h, width, 3), 100, np.uint8)
    for _ in range(30):
        x, y = int(rng.integers(0, width - 50)), int(rng.integers(0, h - 50))
        size = (int(rng.integers(20, 200)), int(rng.integers(20, 120)))
        cv2.rectangle(
            frame, (x, y), (x + size[0], y + size[1]), rng.uniform(0, 255, 3).tolist(), -1
        )
    plate = render_plate("苏E9E0A5", "ordinary", rng)
    plate = cv2.resize(plate, (plate_w, round(plate_w * plate.shape[0] / plate.shape[1])))
    y, x = h // 2, width // 3
    frame[y : y + plate.shape[0], x : x + plate.shape[1]] = plate
    return frame


def test_the_colour_locator_finds_a_small_plate_in_a_4k_frame() -> None:
    frame = _frame(3840, 110)
    found = colour_candidates(frame)
    assert found and found[0].colour == "blue"
    (cx, cy), _, _ = found[0].rect
    assert abs(cx - (3840 // 3 + 55)) < 20 and abs(cy - (2160 // 2 + 18)) < 15
    # At the old fixed 320-px working width the plate is 9 px wide there and is not found.
    import models.plates.locate as locate

    old = locate.work_scale
    try:
        locate.work_scale = lambda w, work: min(1.0, work / max(1, w))
        assert not [c for c in colour_candidates(frame) if c.colour == "blue"]
    finally:
        locate.work_scale = old


@pytest.fixture(scope="module")
def readers():  # type: ignore[no-untyped-def]
    from models.plates.reader import PlateReader

    # PP-OCR as PaddleOCR shipped it: the zoom's own effect (with the neck refitted on plates the
    # unzoomed 3840-px frame is read too; the default reader below).
    return PlateReader(threads=1, rec_neck=None), PlateReader(
        threads=1, zoom_from=None, rec_neck=None
    )


@pytest.mark.parametrize("width", [1920, 3840])
def test_a_police_photo_in_a_large_frame_is_read(readers, width: int) -> None:  # type: ignore[no-untyped-def]
    """The shared police photo (625 px wide, a white plate no colour locator sees) in the middle of
    a larger frame: only the text detector finds it, on the shrunk frame, in a box too loose for
    its red 警. Found again around that box at the frame's resolution, the plate is read."""
    photo = cv2.imread(str(require_data("plates/cn_police.jpg")))
    h = width * 9 // 16
    frame = np.full((h, width, 3), 90, np.uint8)
    y, x = (h - photo.shape[0]) // 2, (width - photo.shape[1]) // 2
    frame[y : y + photo.shape[0], x : x + photo.shape[1]] = photo
    zoomed, plain = readers
    got = zoomed.read(frame)
    assert got and got[0].text == "鄂F8888警" and got[0].stage == "detector"
    assert "鄂F8888警" not in [r.text for r in plain.read(frame)]


@pytest.mark.parametrize("width", [1920, 3840])
def test_the_default_reader_reads_the_police_photo_in_a_large_frame(width: int) -> None:
    from models.plates.reader import PlateReader

    photo = cv2.imread(str(require_data("plates/cn_police.jpg")))
    h = width * 9 // 16
    frame = np.full((h, width, 3), 90, np.uint8)
    y, x = (h - photo.shape[0]) // 2, (width - photo.shape[1]) // 2
    frame[y : y + photo.shape[0], x : x + photo.shape[1]] = photo
    got = PlateReader(threads=1).read(frame)
    assert [(r.text, r.stage) for r in got][:1] == [("鄂F8888警", "detector")]


def test_zooming_a_loose_box_gives_a_tight_one_on_the_plate(readers) -> None:  # type: ignore[no-untyped-def]
    zoomed, _ = readers
    frame = _frame(1920, 200)
    # The plate is 200 x 64 px at (640, 540); a box 40 % too large and 12 px off, as a detector
    # pass on the frame shrunk six times gives.
    got = zoomed._zoomed(frame, ((652.0 + 100, 534.0 + 32), (280.0, 90.0), 0.0))
    assert got is not None
    (cx, cy), (w, h), _ = got
    assert abs(cx - 740) < 12 and abs(cy - 572) < 10
    assert 150 < max(w, h) < 260 and min(w, h) < 80


@pytest.mark.parametrize(
    "rect",
    [
        ((-500.0, -500.0), (100.0, 30.0), 0.0),  # wholly outside the frame
        ((0.0, 0.0), (100.0, 30.0), 10.0),  # over the corner
        ((5000.0, 10.0), (1e6, 30.0), 0.0),  # absurdly long
        ((320.0, 240.0), (2.0, 1.0), 0.0),  # a speck
    ],
)
def test_zooming_a_box_at_or_past_the_edge_gives_a_box_or_none(readers, rect) -> None:  # type: ignore[no-untyped-def]
    zoomed, _ = readers
    frame = _frame(640, 200)
    got = zoomed._zoomed(frame, rect)
    if got is not None:
        (cx, cy), (w, h), _ = got
        assert 0 <= cx <= 640 and 0 <= cy <= 360 and w > 0 and h > 0


@pytest.mark.parametrize("zoom_from", [-1, 10**7, float("nan")])
def test_a_zoom_from_out_of_range_is_refused(zoom_from: float) -> None:
    from core.errors import ConfigError
    from models.plates.reader import PlateReader

    with pytest.raises(ConfigError, match="zoom_from"):
        PlateReader(zoom_from=zoom_from)  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("sides", "longest", "want"),
    [
        ((320, 640), 720, (320, 640)),  # the shared photos: both passes
        ((320, 640), 1280, (320, 640)),  # shrunk four times: still run
        ((320, 640), 1281, (640,)),
        ((320, 640), 1920, (640,)),  # six times: the 640-px pass alone
        ((320, 640), 3840, (640,)),  # the last pass always runs, however much it shrinks
        ((320, 480, 640), 1600, (480, 640)),
        ((640,), 10_000, (640,)),
        ((), 1920, ()),  # no detector
        ([320, 640], 1920, (640,)),  # a list from a caller: a tuple
        ((320, 640), 0, (320, 640)),  # an empty frame
    ],
)
def test_the_detector_passes_a_frame_gets(sides, longest: int, want: tuple[int, ...]) -> None:  # type: ignore[no-untyped-def]
    from models.plates.reader import _passes

    assert _passes(sides, longest) == want


def test_a_wide_frame_skips_the_pass_that_shrinks_it_six_times(
    readers, monkeypatch: pytest.MonkeyPatch
) -> None:  # type: ignore[no-untyped-def]
    """A 1920-px frame with no plate reaches the text detector: its passes are 640 px (and the
    zoom's patches), never 320; a 1280-px frame still gets both."""
    zoomed, _ = readers
    sides: list[int] = []
    real = zoomed.ocr.detect

    def counted(image: np.ndarray, max_side: int = 320, thresh: float = 0.3):  # type: ignore[no-untyped-def]
        if max(image.shape[:2]) >= 1280:  # a pass over the frame, not a zoom patch
            sides.append(max_side)
        return real(image, max_side, thresh)

    monkeypatch.setattr(zoomed.ocr, "detect", counted)
    for width in (1920, 1280):
        frame = np.full((width * 9 // 16, width, 3), 100, np.uint8)
        assert zoomed.read(frame) == []
    # Each search (the dark retry is off for a grey of 100) runs the passes once.
    assert sides == [640, 320, 640]
