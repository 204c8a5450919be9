"""A plate's background colour narrows the kinds it is read as (GA 36: green plates are the
new-energy plates alone, eight characters; blue plates are ordinary small cars and light
motorcycles). Without it, a green plate with one character lost is a valid seven-character
ordinary plate, and the gate names the wrong car."""

from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np
import pytest

from models.plates.decode import PlateDecoder
from models.plates.locate import plate_colour
from models.plates.syntax import kind_of, kinds_for_colour
from models.plates.synth import make_sample
from tests.conftest import require_data
from tests.unit.vision.ctc import ODD_CROPS, ctc_frames

NEW_ENERGY = ("new-energy-small", "new-energy-large")
# Blank, one province, letters, digits and a character no plate has.
ALPHABET = ["<blank>", "皖", "A", "B", "D", "F", "K", "0", "1", "2", "x"]


def _frames(path: str, rng: np.random.Generator) -> np.ndarray:
    """A CTC output spelling ``path`` ('_' = blank), one frame per label, with some noise."""
    return ctc_frames(path, ALPHABET, rng)


def test_the_kinds_of_each_colour_follow_the_syntax_table() -> None:
    assert kinds_for_colour("green") == frozenset(NEW_ENERGY)
    assert kinds_for_colour("blue") == frozenset({"ordinary"})
    for colour in ("yellow", "white", "black", "", "紫", "GREEN"):
        assert kinds_for_colour(colour) is None  # not narrowed


def test_a_green_plate_is_never_read_as_seven_characters() -> None:
    d = PlateDecoder(ALPHABET)
    probs = _frames("_皖_A_1_0_0_2_D_", np.random.default_rng(0))  # seven characters
    plain = d.constrained(probs)
    assert plain is not None and plain.text == "皖A1002D" and kind_of(plain.text) == "ordinary"
    assert d.constrained(probs, "blue") == plain
    assert d.constrained(probs, "yellow") == plain  # yellow is not narrowed
    green = d.constrained(probs, "green")
    # An eighth character must be made up where the line shows none: a new-energy reading far
    # less sure than the ordinary one, or none.
    assert green is None or (
        kind_of(green.text) in NEW_ENERGY and green.confidence < 0.5 * plain.confidence
    )


def test_a_blue_plate_is_never_read_as_a_new_energy_plate() -> None:
    d = PlateDecoder(ALPHABET)
    probs = _frames("_皖_A_D_1_0_0_2_1_", np.random.default_rng(1))
    plain = d.constrained(probs)
    assert plain is not None and plain.text == "皖AD10021"
    assert kind_of(plain.text) == "new-energy-small"
    assert d.constrained(probs, "green") == plain
    blue = d.constrained(probs, "blue")
    # One character has to be dropped: an ordinary reading on a less likely path, or none.
    assert blue is None or (kind_of(blue.text) == "ordinary" and blue.score < plain.score - 1.0)


def _solid(
    hue: int, sat: int = 200, val: int = 190, shape: tuple[int, int] = (48, 150)
) -> np.ndarray:
    hsv = np.zeros((*shape, 3), np.uint8)
    hsv[...] = (hue, sat, val)
    return cv2.cvtColor(hsv, cv2.COLOR_HSV2BGR)


def _with_text(crop: np.ndarray) -> np.ndarray:
    """Seven dark glyph-like bars over the crop (about a third of its middle)."""
    out = crop.copy()
    h, w = out.shape[:2]
    for k in range(7):
        x = int(w * (0.08 + 0.125 * k))
        out[int(h * 0.2) : int(h * 0.8), x : x + int(w * 0.05)] = (20, 20, 20)
    return out


@pytest.mark.parametrize(
    ("hue", "want"), [(110, "blue"), (60, "green"), (45, "green"), (25, "yellow"), (86, None)]
)
def test_plate_colour_of_a_plate_crop(hue: int, want: str | None) -> None:
    assert plate_colour(_with_text(_solid(hue))) == want
    # Cyan (86) is left out on purpose: an over-exposed blue plate looks cyan.


def test_white_black_dark_and_loose_crops_have_no_plate_colour() -> None:
    white = _with_text(_solid(0, sat=10, val=230))
    assert plate_colour(white) is None
    assert plate_colour(_solid(0, sat=0, val=15)) is None  # a black plate
    assert plate_colour(_solid(60, val=35)) is None  # a green plate too dark to tell
    # A white plate in a loose crop on a green car: the paint is at the border, not the middle.
    loose = _solid(60, shape=(80, 230))
    loose[16:64, 40:190] = white
    assert plate_colour(loose) is None


@pytest.mark.parametrize("crop", ODD_CROPS)
def test_plate_colour_never_raises_on_odd_crops(crop: np.ndarray) -> None:
    assert plate_colour(crop) is None


@pytest.fixture(scope="module")
def reader():  # type: ignore[no-untyped-def]
    from models.plates.reader import PlateReader

    return PlateReader(threads=1)


# Dev new-energy plates (seed 9500) the reader used to read as seven-character ordinary plates:
# once from the green colour candidate, once from an edge candidate. The old readings are PP-OCR's
# as PaddleOCR shipped it (the neck refitted on plates misreads the first one otherwise).
@pytest.mark.parametrize(("index", "old"), [(62, "渝B06605"), (14, "沪TF566T")])
def test_green_plates_are_read_with_all_eight_characters(reader, index: int, old: str) -> None:  # type: ignore[no-untyped-def]
    from models.plates.crops import as_decoded
    from models.plates.reader import PlateReader

    s = make_sample(9500, index, NEW_ENERGY)
    assert kind_of(s.text) in NEW_ENERGY
    assert [r.text for r in reader.read(as_decoded(s))][:1] == [s.text]
    plain = PlateReader(threads=1, rec_neck=None)
    assert [r.text for r in plain.read(as_decoded(s))][:1] == [s.text]
    plain.colour_kinds = False
    assert [r.text for r in plain.read(as_decoded(s))][:1] == [old]


def test_an_over_exposed_blue_plate_is_not_called_green(reader) -> None:  # type: ignore[no-untyped-def]
    """A dev variant (seed 0) of a bright CCPD photo: its blue plate looks cyan (median hue 86),
    and a wider green range read it as nothing."""
    from models.plates.perturb import perturbed

    name = "ccpd_db_db5.jpg"
    img = cv2.imread(str(require_data("plates") / name))
    frame, _ = perturbed(img, name, 0, 0)
    assert [r.text for r in reader.read(frame)][:1] == ["皖AS621V"]


def test_the_gate_setting_and_the_eval_flag_turn_it_off(tmp_path: Path) -> None:
    from carpulse.evals.plates import main
    from edge.gate import GateConfig, GateLoop
    from models.plates.synth import write_set

    on = GateLoop(GateConfig(source=str(tmp_path), presence=False), lambda *e: None)
    off = GateLoop(
        GateConfig(source=str(tmp_path), plate_colour_kinds=False, presence=False), lambda *e: None
    )
    assert on.reader.colour_kinds is True and off.reader.colour_kinds is False
    write_set(tmp_path / "set", 2, seed=9500, kinds=NEW_ENERGY)
    args = ["--images", str(tmp_path / "set"), "--no-latency", "--no-baseline"]
    assert main(args)["reader"]["colour_kinds"] is True
    assert main([*args, "--no-colour-kinds"])["reader"]["colour_kinds"] is False
