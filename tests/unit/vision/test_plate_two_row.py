"""Two-row plates (GA 36: lorries' and buses' rear plates, trailers, motorcycles): the text
detector finds their two rows as two lines, and the reader joins a short line centred above a
longer one into one two-row crop."""

from __future__ import annotations

import math

import cv2
import numpy as np
import pytest

from models.plates.ocr import TextBox
from models.plates.reader import _two_row_pairs
from models.plates.synth import make_sample

Rect = tuple[tuple[float, float], tuple[float, float], float]


def _rolled(rect: Rect, deg: float, centre: tuple[float, float] = (300.0, 200.0)) -> Rect:
    """``rect`` turned by ``deg`` degrees about ``centre`` (its own angle too)."""
    (cx, cy), size, ang = rect
    t = math.radians(deg)
    dx, dy = cx - centre[0], cy - centre[1]
    x = centre[0] + dx * math.cos(t) - dy * math.sin(t)
    y = centre[1] + dx * math.sin(t) + dy * math.cos(t)
    return ((x, y), size, ang + deg)


# A 440 x 220 plate at 0.5 px/mm: the province and letter line over the five characters' line.
BOTTOM: Rect = ((300.0, 220.0), (200.0, 55.0), 0.0)
TOP: Rect = ((300.0, 180.0), (80.0, 30.0), 0.0)


def _box(rect: Rect) -> TextBox:
    return TextBox(rect, 0.9)


def _contains(outer: Rect, inner: Rect) -> bool:
    poly = cv2.boxPoints(outer).reshape(-1, 1, 2).astype(np.float32)
    return all(
        cv2.pointPolygonTest(poly, tuple(map(float, p)), True) >= -1.0 for p in cv2.boxPoints(inner)
    )


@pytest.mark.parametrize("roll", [0.0, 20.0, -35.0])
def test_a_short_line_centred_above_a_long_one_is_one_two_row_box(roll: float) -> None:
    top, bottom = _rolled(TOP, roll), _rolled(BOTTOM, roll)
    got = _two_row_pairs([_box(bottom), _box(top)])
    assert len(got) == 1
    assert _contains(got[0], top) and _contains(got[0], bottom)
    (_, _), (w, h), _ = got[0]
    assert 1.8 < max(w, h) / min(w, h) < 3.0  # a two-row shape: read as two rows
    # The order of the detector's boxes does not matter.
    assert len(_two_row_pairs([_box(top), _box(bottom)])) == 1


@pytest.mark.parametrize(
    "top",
    [
        ((390.0, 180.0), (80.0, 30.0), 0.0),  # off to the side: another text, not the top row
        ((300.0, 260.0), (80.0, 30.0), 0.0),  # below the long line
        ((300.0, 120.0), (80.0, 30.0), 0.0),  # far above it
        ((300.0, 180.0), (190.0, 50.0), 0.0),  # as long as it: two one-row lines
        ((300.0, 185.0), (20.0, 8.0), 0.0),  # a speck
    ],
)
def test_lines_not_laid_out_as_a_two_row_plate_are_not_joined(top: Rect) -> None:
    assert _two_row_pairs([_box(BOTTOM), _box(top)]) == []


def test_at_most_two_joined_boxes() -> None:
    tops = [_box(((300.0 + dx, 180.0), (80.0, 30.0), 0.0)) for dx in (-10.0, 0.0, 10.0)]
    assert len(_two_row_pairs([_box(BOTTOM), *tops])) == 2
    assert _two_row_pairs([]) == [] and _two_row_pairs([_box(BOTTOM)]) == []


@pytest.fixture(scope="module")
def reader():  # type: ignore[no-untyped-def]
    from models.plates.reader import PlateReader

    return PlateReader(threads=1)


def test_two_row_plates_the_detector_splits_are_read(
    reader, monkeypatch: pytest.MonkeyPatch
) -> None:  # type: ignore[no-untyped-def]
    """Synthetic two-row photos (seed 9400, the dev set) no stage read before: the plate's colour
    runs into the car's paint, and the text detector gives its two rows as two lines."""
    from models.plates import reader as reader_module
    from models.plates.crops import as_decoded

    samples = [make_sample(9400, i, two_row=1.0) for i in (93, 122)]
    for s in samples:
        assert s.conditions["two_row"] == 1.0
        assert [r.text for r in reader.read(as_decoded(s))][:1] == [s.text]
    monkeypatch.setattr(reader_module, "_two_row_pairs", lambda boxes, most=2: [])
    assert all(s.text not in [r.text for r in reader.read(as_decoded(s))] for s in samples)
