"""A red glyph at one end of a white plate narrows the kinds it is read as (GA 36 prints the
police's 警, the armed police's WJ, the emergency plates' 应急 and the embassies' 使 in red).

PP-OCR and the line model often miss a faded red 警: the six black characters left are no valid
plate, and the shared police photo's variants read nothing. A crop with a red mark is also read as
the kinds with a red character there, and the reading counts only when the recogniser read its
black characters exactly so; its red characters count as ``RED_VOUCH`` (under ``settle``, so a
surer reading of the frame still wins)."""

from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np
import pytest

from models.plates.decode import PlateDecoder
from models.plates.locate import red_mark
from models.plates.reader import RED_VOUCH, _red_reading
from models.plates.syntax import (
    KINDS,
    RED_CHARS,
    RED_MARK_KINDS,
    kind_of,
    kinds_for_colour,
    red_positions,
)
from models.plates.synth import make_sample, render_plate
from tests.conftest import require_data
from tests.unit.vision.ctc import ODD_CROPS, ctc_frames

# Blank, two provinces, letters, digits, the red characters and a character no plate has.
ALPHABET = ["<blank>", "鄂", "皖", "W", "J", "F", "A", "8", "1", "2", "警", "应", "急", "使", "x"]


def _frames(path: str, rng: np.random.Generator) -> np.ndarray:
    """A CTC output spelling ``path`` ('_' = blank), one frame per label, with some noise."""
    return ctc_frames(path, ALPHABET, rng)


def test_the_red_kinds_follow_the_syntax_table() -> None:
    assert RED_MARK_KINDS["red-last"] == {"police", "emergency"}
    assert RED_MARK_KINDS["red-first"] == {"armed-police", "embassy"}
    assert kinds_for_colour("red-last") == RED_MARK_KINDS["red-last"]
    assert set(RED_CHARS) <= {kind for kind, _, _ in KINDS}
    assert red_positions("鄂F8888警") == {6}
    assert red_positions("鄂F8888应急") == {6, 7}
    assert red_positions("WJ鄂12345") == {0, 1}
    assert red_positions("使123456") == {0}
    assert red_positions("皖A12345") == frozenset()
    assert red_positions("not a plate") == frozenset()
    assert red_positions("") == frozenset()


def test_a_missed_red_char_is_vouched_for_by_the_mark() -> None:
    d = PlateDecoder(ALPHABET)
    probs = _frames("_鄂_F_8_8_8_8__", np.random.default_rng(0))  # the 警 not seen at all
    plain = d.constrained(probs)
    assert plain is None or plain.confidence < 0.1  # six characters: no plate, or a made-up one
    red = _red_reading(d, probs, "red-last")
    assert red is not None and red.text == "鄂F8888警" and kind_of(red.text) == "police"
    assert red.char_probs[-1] == RED_VOUCH and min(red.char_probs[:-1]) > 0.8
    # No other kind: the decoder narrowed by the mark reads only police and emergency plates.
    narrowed = d.constrained(probs, "red-last")
    assert narrowed is not None and kind_of(narrowed.text) in RED_MARK_KINDS["red-last"]


def test_a_red_char_read_is_kept_and_a_black_one_read_instead_refuses_it() -> None:
    d = PlateDecoder(ALPHABET)
    rng = np.random.default_rng(1)
    read = _red_reading(d, _frames("_鄂_F_8_8_8_8_警_", rng), "red-last")
    assert read is not None and read.text == "鄂F8888警"
    # The recogniser read a 1 where the mark says red: a blue or yellow plate with a red lamp or
    # sticker beside it is not taken for a police plate.
    assert _red_reading(d, _frames("_鄂_F_8_8_8_8_1_", rng), "red-last") is None
    # The black characters must be a red kind's: six at the wrong end are nothing.
    assert _red_reading(d, _frames("_鄂_F_8_8_8_8__", rng), "red-first") is None
    # The armed police's WJ missed, the rest read.
    wj = _red_reading(d, _frames("__鄂_1_2_1_2_8_", rng), "red-first")
    assert wj is not None and wj.text == "WJ鄂12128" and wj.char_probs[:2] == (RED_VOUCH,) * 2


def test_a_missed_red_glyph_is_a_police_char_unless_the_recogniser_read_another() -> None:
    """鄂F8888 + a missed red glyph is a valid police plate and a valid emergency plate: the
    glyph's own faint fit does not tell them apart, and police cars are far more common."""
    d = PlateDecoder(ALPHABET)
    rng = np.random.default_rng(2)
    faint = _frames("_鄂_F_8_8_8_8_____", rng)
    faint[-4:-2, ALPHABET.index("应")] += 0.3  # a faint fit for 应急, none for 警
    faint[-2:, ALPHABET.index("急")] += 0.3
    faint /= faint.sum(axis=1, keepdims=True)
    emergency = d.constrained(faint, kinds=frozenset({"emergency"}))
    police = d.constrained(faint, kinds=frozenset({"police"}))
    assert emergency is not None and police is not None and emergency.score > police.score
    read = _red_reading(d, faint, "red-last")
    assert read is not None and read.text == "鄂F8888警"
    # The recogniser read 应急 itself: the reading is the emergency plate.
    seen = _red_reading(d, _frames("_鄂_F_8_8_8_8_应_急_", rng), "red-last")
    assert seen is not None and seen.text == "鄂F8888应急"


def _plate(
    reds: tuple[int, ...],
    width: int = 150,
    height: int = 48,
    bg: tuple[int, int, int] = (235, 235, 235),
    ink: tuple[int, int, int] = (20, 20, 20),
) -> np.ndarray:
    """A crop of background ``bg`` (BGR; white) with seven glyph-like bars of ``ink`` (dark); the
    bars at ``reds`` are red."""
    out = np.full((height, width, 3), bg, np.uint8)
    for k in range(7):
        x = int(width * (0.04 + 0.137 * k))
        colour = (30, 30, 200) if k in reds else ink  # BGR
        out[int(height * 0.2) : int(height * 0.8), x : x + int(width * 0.09)] = colour
    return out


def test_red_mark_of_plate_crops() -> None:
    assert red_mark(_plate((6,))) == "red-last"
    assert red_mark(_plate((0, 1))) == "red-first"
    assert red_mark(_plate(())) is None
    assert red_mark(_plate((3,))) is None  # red in the middle: no kind has it
    assert red_mark(_plate((0, 6))) is None  # both ends: paint or lamps, not a glyph
    # A black plate's red 使 is a mark; a blue plate under a cyan cast (no plate colour) with a
    # red lamp at one end is not: GA 36 prints red on white and black plates only.
    assert red_mark(_plate((0,), bg=(20, 20, 20), ink=(235, 235, 235))) == "red-first"
    assert red_mark(_plate((6,), bg=(200, 150, 60))) is None
    # A white plate in a loose crop on a red car: red at both ends.
    car = np.zeros((80, 230, 3), np.uint8)
    car[...] = (30, 30, 190)
    car[16:64, 40:190] = _plate(())
    assert red_mark(car) is None
    car[16:64, 40:190] = _plate((6,))
    assert red_mark(car) is None


@pytest.mark.parametrize(
    ("kind", "text", "want"),
    [
        ("police", "鄂F8888警", "red-last"),
        ("emergency", "鄂F8888应急", "red-last"),
        ("armed-police", "WJ鄂12128", "red-first"),
        ("embassy", "使123456", "red-first"),
        ("ordinary", "皖A12345", None),
        ("coach", "皖A1234学", None),
        ("consulate", "沪A1234领", None),
    ],
)
def test_rendered_plates_carry_their_red_marks(kind: str, text: str, want: str | None) -> None:
    """The synthetic plates draw red where ``RED_CHARS`` says, and the mark finds it."""
    assert red_mark(render_plate(text, kind)) == want


@pytest.mark.parametrize("crop", ODD_CROPS)
def test_red_mark_never_raises_on_odd_crops(crop: np.ndarray) -> None:
    assert red_mark(crop) is None


@pytest.fixture(scope="module")
def reader():  # type: ignore[no-untyped-def]
    """PP-OCR as PaddleOCR shipped it: the rule's own effect. The neck refitted on plates reads
    these red characters itself (``test_the_refitted_neck_reads_the_red_characters_itself``)."""
    from models.plates.reader import PlateReader

    return PlateReader(threads=1, rec_neck=None)


def _texts(reader, frame: np.ndarray, marks: bool) -> list[str]:  # type: ignore[no-untyped-def]
    reader.red_marks = marks
    try:
        return [r.text for r in reader.read(frame)][:1]
    finally:
        reader.red_marks = True


def test_a_synthetic_police_plate_is_read_with_its_faint_red_char(reader) -> None:  # type: ignore[no-untyped-def]
    """Dev image 28 of seed 9100: without the mark no stage read it."""
    from models.plates.crops import as_decoded

    s = make_sample(9100, 28)
    assert s.text == "皖W1442警"
    frame = as_decoded(s)
    assert _texts(reader, frame, True) == [s.text]
    assert _texts(reader, frame, False) == []


def test_a_red_mark_keeps_a_wj_plate_from_being_read_as_an_ordinary_one(reader) -> None:  # type: ignore[no-untyped-def]
    """Dev image 108 of seed 9102: the red W was read as a province and the plate as the
    ordinary 苏J41667, a car that was not there; narrowed by its mark it reads nothing wrong."""
    from models.plates.crops import as_decoded

    s = make_sample(9102, 108)
    assert s.text == "WJ浙41667"
    frame = as_decoded(s)
    assert _texts(reader, frame, False) == ["苏J41667"]
    assert _texts(reader, frame, True) == []


def test_a_red_mark_reads_a_serif_wj_plate(reader) -> None:  # type: ignore[no-untyped-def]
    """Dev image 144 of seed 9200 (Noto Serif CJK, a font no model was trained on)."""
    from models.plates.crops import as_decoded
    from models.plates.synth import use_font

    # fonts-noto-cjk and fonts-liberation: installed by `make setup` (use_font raises without them)
    use_font(
        Path("/usr/share/fonts/opentype/noto/NotoSerifCJK-Bold.ttc"),
        Path("/usr/share/fonts/truetype/liberation/LiberationSansNarrow-Bold.ttf"),
    )
    try:
        s = make_sample(9200, 144)
    finally:
        use_font(None)
    assert s.text == "WJ8793362"
    frame = as_decoded(s)
    assert _texts(reader, frame, False) == ["黑J87362"]
    assert _texts(reader, frame, True) == [s.text]


@pytest.mark.parametrize(("seed", "index"), [(0, 0), (3, 1), (3, 2)])
def test_the_shared_police_photos_variants_are_read(reader, seed: int, index: int) -> None:  # type: ignore[no-untyped-def]
    """Dev variants (seeds 0 and 3) of the shared police photo: the text detector's box holds a
    faded 警 neither recogniser reads; they read nothing before."""
    from models.plates.perturb import perturbed

    name = "cn_police.jpg"
    img = cv2.imread(str(require_data("plates") / name))
    frame, _ = perturbed(img, name, index, seed)
    assert _texts(reader, frame, True) == ["鄂F8888警"]
    assert _texts(reader, frame, False) == []


def test_the_refitted_neck_reads_the_red_characters_itself() -> None:
    """The cases above, read by the default reader (PP-OCR with its neck refitted on plates):
    the faded 警 and the WJ of a serif plate with the mark and without it. (Dev image 108 of seed
    9102, WJ浙41667, it reads as WJ新41667 either way: a province wrong, where PP-OCR as shipped
    read nothing with the mark.)"""
    from models.plates.crops import as_decoded
    from models.plates.perturb import perturbed
    from models.plates.reader import PlateReader
    from models.plates.synth import use_font

    default = PlateReader(threads=1)
    frames = {"皖W1442警": as_decoded(make_sample(9100, 28))}
    use_font(
        Path("/usr/share/fonts/opentype/noto/NotoSerifCJK-Bold.ttc"),
        Path("/usr/share/fonts/truetype/liberation/LiberationSansNarrow-Bold.ttf"),
    )
    try:
        frames["WJ8793362"] = as_decoded(make_sample(9200, 144))
    finally:
        use_font(None)
    img = cv2.imread(str(require_data("plates") / "cn_police.jpg"))
    for text, frame in [*frames.items(), ("鄂F8888警", perturbed(img, "cn_police.jpg", 1, 3)[0])]:
        assert _texts(default, frame, True) == [text]
        assert _texts(default, frame, False) == [text]


def test_the_gate_setting_and_the_eval_flag_turn_it_off(tmp_path: Path) -> None:
    from carpulse.evals.plates import main
    from edge.gate import GateConfig, GateLoop
    from models.plates.synth import write_set

    on = GateLoop(GateConfig(source=str(tmp_path), presence=False), lambda *e: None)
    off = GateLoop(
        GateConfig(source=str(tmp_path), plate_red_marks=False, presence=False), lambda *e: None
    )
    assert on.reader.red_marks is True and off.reader.red_marks is False
    write_set(tmp_path / "set", 2, seed=9100, kinds=("police",))
    args = ["--images", str(tmp_path / "set"), "--no-latency", "--no-baseline"]
    assert main(args)["reader"]["red_marks"] is True
    assert main([*args, "--no-red-marks"])["reader"]["red_marks"] is False
