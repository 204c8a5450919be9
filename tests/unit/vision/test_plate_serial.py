"""The serial recogniser (trained on real plate photos): the shipped model, what it may change in
PP-OCR's reading (letters and digits only, never the province), hostile crops and settings."""

from __future__ import annotations

import hashlib
import math
from pathlib import Path

import numpy as np
import pytest

from core.errors import ConfigError
from models.plates.decode import PlateDecoder
from models.plates.line import LINE_PATH
from models.plates.reader import PlateReader
from models.plates.serial import (
    ALPHABET,
    CHARSET,
    SERIAL_PATH,
    SERIAL_SHA256,
    SerialReader,
    merged,
    trimmed,
)
from models.plates.synth import render_plate


@pytest.fixture(scope="module")
def serial() -> SerialReader:
    return SerialReader()


@pytest.fixture(scope="module")
def reader() -> PlateReader:
    return PlateReader(threads=1)


def _crop(text: str, kind: str = "ordinary") -> np.ndarray:
    # A drawn plate at about the size a gate camera sees it (150 px wide).
    plate = render_plate(text, kind, np.random.default_rng(3))
    return np.ascontiguousarray(plate[::3, ::3])


def test_the_shipped_model_is_agentclprs_own() -> None:
    digest = hashlib.sha256(SERIAL_PATH.read_bytes()).hexdigest()
    assert digest == SERIAL_SHA256
    assert (SERIAL_PATH.parent / "plate_ccpd.LICENSE").read_text().startswith("plate_ccpd.onnx")
    assert len(CHARSET) == len(set(CHARSET)) == 72 and ALPHABET[0] == "<blank>"


P7 = (0.9, 0.99, 0.99, 0.99, 0.6, 0.99, 0.99)
Q7 = (0.3, 0.98, 0.97, 0.99, 0.95, 0.97, 0.99)


@pytest.mark.parametrize(
    ("text", "other", "want"),
    [
        ("皖A63625", "皖A63G25", "皖A63G25"),  # 6 -> G
        ("苏E9E0A5", "皖E9E0A5", "苏E9E0A5"),  # the province is never the other's
        ("苏E9E0A5", "皖E9E0A6", "苏E9E0A6"),  # ... even when the serial changes too
        ("冀HG196学", "冀HG1963", None),  # 学 is no letter or digit: another kind
        ("鄂F8888警", "鄂F88887", None),
        ("皖A63625", "皖A63G2", None),  # another length
        ("皖A12345", "使123456", None),  # 皖123456 is no plate
        ("", "", None),  # no plate
    ],
)
def test_only_letters_and_digits_are_taken(text: str, other: str, want: str | None) -> None:
    n = len(text)
    out = merged(text, P7[:n], other, Q7[: len(other)], frozenset({0} if n else ()))
    assert (out[0] if out is not None else None) == want


def test_merged_probabilities_come_from_whoever_supplied_the_character() -> None:
    out = merged("皖A63625", P7, "新A63G25", Q7, frozenset({0}))
    assert out is not None
    text, probs = out
    assert text == "皖A63G25"
    assert probs[0] == P7[0]  # the province's: the first reading's
    assert probs[4] == Q7[4]  # the replaced G: the other's
    assert probs[1] == max(P7[1], Q7[1]) and probs[5] == max(P7[5], Q7[5])


def test_mismatched_probabilities_are_refused() -> None:
    assert merged("皖A63625", P7[:3], "皖A63G25", Q7, frozenset({0})) is None
    assert merged("皖A63625", P7, "皖A63G25", (), frozenset({0})) is None


def test_trimmed_cuts_top_and_bottom_and_refuses_slivers() -> None:
    crop = np.zeros((40, 120, 3), np.uint8)
    assert trimmed(crop, 0.0) is not None and trimmed(crop, 0.0).shape == (40, 120, 3)  # type: ignore[union-attr]
    assert trimmed(crop, 0.2).shape == (24, 120, 3)  # type: ignore[union-attr]
    assert trimmed(np.zeros((9, 120, 3), np.uint8), 0.2) is None
    assert trimmed(np.zeros((40, 5, 3), np.uint8), 0.0) is None


@pytest.mark.parametrize(
    ("text", "kind"),
    [("皖A63G25", "ordinary"), ("京QD0Z28", "ordinary"), ("沪AF71017", "new-energy-small")],
)
def test_it_reads_drawn_plates(serial: SerialReader, text: str, kind: str) -> None:
    strip = trimmed(_crop(text, kind), 0.1)
    assert strip is not None
    dec = PlateDecoder(serial.alphabet).constrained(serial.probs(strip))
    assert dec is not None and dec.text == text, dec


@pytest.mark.parametrize("shape", [(1, 1, 3), (1, 5000, 3), (5000, 1, 3), (8, 8, 3)], ids=str)
def test_extreme_crops_give_finite_probabilities(
    serial: SerialReader, shape: tuple[int, ...]
) -> None:
    probs = serial.probs(np.full(shape, 255, np.uint8))
    assert probs.ndim == 2 and probs.shape[1] == len(ALPHABET)
    assert np.isfinite(probs).all() and np.allclose(probs.sum(axis=1), 1.0, atol=1e-3)


@pytest.mark.parametrize(
    "crop", [np.zeros((0, 10, 3), np.uint8), np.zeros((10, 10), np.uint8), np.zeros((4, 4, 4))]
)
def test_a_crop_that_is_no_bgr_image_is_refused(serial: SerialReader, crop: np.ndarray) -> None:
    with pytest.raises(ValueError, match="not a BGR crop"):
        serial.probs(crop)


def test_the_reader_takes_a_surer_serial_and_keeps_its_province(reader: PlateReader) -> None:
    crop = _crop("皖A63G25")
    # PP-OCR read G as 6 at 0.6: the serial recogniser is surer of G.
    vote = reader._serial_vote(crop, "京A63625", P7, 0.6, "blue", None)
    assert vote is not None
    text, probs, conf = vote
    assert text == "京A63G25"  # its province stays
    assert conf > 0.6 and conf == min(probs[1:])
    # A reading surer than the serial recogniser's stands.
    assert reader._serial_vote(crop, "皖A63625", P7, 0.999999, "blue", None) is None


def test_the_reader_without_the_serial_model(tmp_path: Path) -> None:
    off = PlateReader(threads=1, serial_model=None)
    assert off.serial is None
    scene = np.full((240, 480, 3), 90, np.uint8)
    plate = render_plate("皖A63G25", "ordinary", np.random.default_rng(5))
    scene[50:190, 20:460] = plate
    assert [r.text for r in off.read(scene)] == ["皖A63G25"]


@pytest.mark.parametrize("trims", [(), (math.nan,), (0.5,), (-0.1,), (0.1, 0.45)], ids=str)
def test_bad_trims_are_a_config_error(trims: tuple[float, ...]) -> None:
    with pytest.raises(ConfigError, match="serial_trims"):
        PlateReader(threads=1, serial_trims=trims)


@pytest.mark.parametrize("below", [-0.1, 1.5, math.nan], ids=str)
def test_a_bad_serial_bar_is_a_config_error(below: float) -> None:
    with pytest.raises(ConfigError, match="serial_below"):
        PlateReader(threads=1, serial_below=below)


def test_a_sure_pp_ocr_reading_is_not_read_again(monkeypatch: pytest.MonkeyPatch) -> None:
    scene = np.full((240, 480, 3), 90, np.uint8)
    scene[50:190, 20:460] = render_plate("皖A63G25", "ordinary", np.random.default_rng(5))
    votes: list[float] = []
    for below in (0.0, 1.01):
        r = PlateReader(threads=1, serial_below=below, line_model=None)
        real = r._serial_vote

        def spy(crop, text, probs, conf, colour, mark, real=real):  # type: ignore[no-untyped-def]
            votes.append(conf)
            return real(crop, text, probs, conf, colour, mark)

        monkeypatch.setattr(r, "_serial_vote", spy)
        assert [p.text for p in r.read(scene)] == ["皖A63G25"]
        if below == 0.0:
            assert votes == []  # no reading is below 0
    assert votes  # with 1.01 every valid PP-OCR reading is read again


def test_a_model_of_another_shape_is_a_config_error(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="expected"):
        SerialReader(LINE_PATH)
    with pytest.raises(ConfigError, match="does not exist"):
        SerialReader(tmp_path / "missing.onnx")


def test_the_gate_setting_turns_it_off(tmp_path: Path) -> None:
    from edge.gate import GateConfig, GateLoop

    on = GateLoop(GateConfig(source=str(tmp_path), presence=False), lambda *e: None)
    off = GateLoop(
        GateConfig(source=str(tmp_path), plate_serial=False, presence=False), lambda *e: None
    )
    assert on.reader.serial is not None and off.reader.serial is None
