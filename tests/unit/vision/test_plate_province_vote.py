"""The province vote: a reading's unsure province read again by PP-OCR over jittered crops."""

from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np
import pytest

from core.errors import ConfigError
from models.plates.reader import PlateRead, PlateReader, _jittered
from tests.conftest import require_data

RECT = ((50.0, 20.0), (100.0, 30.0), 0.0)


@pytest.fixture(scope="module")
def reader() -> PlateReader:
    return PlateReader(threads=1)


def _probs(reader: PlateReader, text: str, first: float, other: str = "皖") -> np.ndarray:
    """CTC frames that read ``text``, its first character at ``first`` (the rest of that frame
    on ``other``), every other character sure."""
    index = {ch: i for i, ch in enumerate(reader.decoder.alphabet)}
    frames = []
    for k, ch in enumerate(text):
        frame = np.full(len(index), 1e-6, np.float32)
        if k == 0:
            frame[index[ch]], frame[index[other]] = first, 1.0 - first
        else:
            frame[index[ch]] = 1.0
        blank = np.full(len(index), 1e-6, np.float32)
        blank[0] = 1.0
        frames += [frame, blank]
    out = np.stack(frames)
    return out / out.sum(axis=1, keepdims=True)


def _read(reader: PlateReader, text: str, probs: tuple[float, ...]) -> PlateRead:
    """A reading as ``_recognise`` leaves it, with the crop it came from on record."""
    read = PlateRead(text, min(probs[1:]), RECT, text, "colour", "0" * 64, probs)
    crop = np.full((30, 100, 3), 128, np.uint8)
    reader._sources[id(read)] = (read, crop, "blue", None, False)
    return read


class Recognise:
    """A stand-in for PP-OCR's recogniser: ``outputs`` for every crop, the crops counted."""

    def __init__(self, outputs: list[np.ndarray]) -> None:
        self.outputs, self.calls = outputs, 0

    def __call__(self, crops: list[np.ndarray]) -> list[np.ndarray]:
        out = [self.outputs[(self.calls + k) % len(self.outputs)] for k in range(len(crops))]
        self.calls += len(crops)
        return out


@pytest.fixture
def voting(reader: PlateReader):  # type: ignore[no-untyped-def]
    reader._sources.clear()
    yield reader
    reader._sources.clear()


def test_jittered_crops_are_six_small_changes_of_the_crop() -> None:
    crop = np.zeros((40, 150, 3), np.uint8)
    shapes = [c.shape[:2] for c in _jittered(crop)]
    assert shapes == [(40, 147), (40, 147), (38, 150), (38, 150), (40, 168), (40, 135)]
    # the smallest crop read: only the wider copy is not below 6 x 12 px
    assert [c.shape[:2] for c in _jittered(np.zeros((6, 12, 3), np.uint8))] == [(6, 13)]


def test_an_unsure_province_is_replaced_by_the_one_the_crops_agree_on(
    voting: PlateReader, monkeypatch: pytest.MonkeyPatch
) -> None:
    stub = Recognise([_probs(voting, "苏E9E0A5", 0.9)])
    monkeypatch.setattr(voting.ocr, "recognise", stub)
    read = _read(voting, "鄂E9E0A5", (0.55, 1.0, 1.0, 1.0, 1.0, 1.0, 1.0))
    out = voting._voted(read)
    # four copies at about 0.9 against 0.55: the three left cannot change the winner
    assert out.text == "苏E9E0A5" and stub.calls == 4
    # its probability: its share of the votes cast
    assert 0.85 < out.char_probs[0] < 0.88 and out.char_probs[1:] == read.char_probs[1:]
    assert out.confidence == read.confidence and out.rect == read.rect


def test_a_sure_province_is_not_read_again(
    voting: PlateReader, monkeypatch: pytest.MonkeyPatch
) -> None:
    stub = Recognise([_probs(voting, "苏E9E0A5", 0.99)])
    monkeypatch.setattr(voting.ocr, "recognise", stub)
    read = _read(voting, "鄂E9E0A5", (0.8, 1.0, 1.0, 1.0, 1.0, 1.0, 1.0))
    assert voting._voted(read) is read and stub.calls == 0


@pytest.mark.parametrize(
    ("other", "why"),
    [("苏E9E0A6", "the rest of the plate read otherwise"), ("苏E9E0A", "another length")],
)
def test_crops_that_read_the_rest_otherwise_do_not_vote(
    voting: PlateReader, monkeypatch: pytest.MonkeyPatch, other: str, why: str
) -> None:
    monkeypatch.setattr(voting.ocr, "recognise", Recognise([_probs(voting, other, 0.99)]))
    read = _read(voting, "鄂E9E0A5", (0.3, 1.0, 1.0, 1.0, 1.0, 1.0, 1.0))
    assert voting._voted(read) is read, why


def test_a_split_vote_keeps_the_reading_on_a_tie_and_counts_every_agreeing_crop(
    voting: PlateReader, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Four crops read 苏 at 0.6, three read 鄂 at 0.9: 苏 2.4 against 鄂 0.5 + 2.7, known only
    # at the last crop.
    outputs = [_probs(voting, "苏E9E0A5", 0.6)] * 4 + [_probs(voting, "鄂E9E0A5", 0.9)] * 3
    stub = Recognise(outputs)
    monkeypatch.setattr(voting.ocr, "recognise", stub)
    read = _read(voting, "鄂E9E0A5", (0.5, 1.0, 1.0, 1.0, 1.0, 1.0, 1.0))
    assert voting._voted(read) is read and stub.calls == 7


def test_the_vote_stops_once_the_crops_left_cannot_change_it(
    voting: PlateReader, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Every copy reads the reading's own province at 0.7: 0.4 + 0.7 k > 7 - k from k = 4.
    stub = Recognise([_probs(voting, "鄂E9E0A5", 0.7)])
    monkeypatch.setattr(voting.ocr, "recognise", stub)
    read = _read(voting, "鄂E9E0A5", (0.4, 1.0, 1.0, 1.0, 1.0, 1.0, 1.0))
    assert voting._voted(read) is read and stub.calls == 4


@pytest.mark.parametrize(
    ("text", "probs", "why"),
    [
        ("鄂E9E0A5", (), "a province the province classifier set (its probability unknown)"),
        ("使123456", (0.3, 1.0, 1.0, 1.0, 1.0, 1.0, 1.0), "an embassy plate holds no province"),
    ],
)
def test_readings_without_a_province_to_vote_on_stay(
    voting: PlateReader,
    monkeypatch: pytest.MonkeyPatch,
    text: str,
    probs: tuple[float, ...],
    why: str,
) -> None:
    stub = Recognise([_probs(voting, "苏E9E0A5", 0.99)])
    monkeypatch.setattr(voting.ocr, "recognise", stub)
    read = PlateRead(text, 0.9, RECT, text, "colour", "0" * 64, probs)
    voting._sources[id(read)] = (read, np.zeros((30, 100, 3), np.uint8), None, None, False)
    assert voting._voted(read) is read and stub.calls == 0, why


def test_a_reading_without_its_crop_on_record_stays(
    voting: PlateReader, monkeypatch: pytest.MonkeyPatch
) -> None:
    stub = Recognise([_probs(voting, "苏E9E0A5", 0.99)])
    monkeypatch.setattr(voting.ocr, "recognise", stub)
    read = PlateRead("鄂E9E0A5", 0.9, RECT, "", "colour", "0" * 64, (0.3,) + (1.0,) * 6)
    assert voting._voted(read) is read and stub.calls == 0
    # a record under its id that holds another reading (an id used again) is not its crop
    other = PlateRead("鄂E9E0A5", 0.9, RECT, "", "colour", "1" * 64, (0.3,) + (1.0,) * 6)
    voting._sources[id(read)] = (other, np.zeros((30, 100, 3), np.uint8), None, None, False)
    assert voting._voted(read) is read and stub.calls == 0


def test_a_frame_leaves_no_crops_behind(
    reader: PlateReader, monkeypatch: pytest.MonkeyPatch
) -> None:
    from models.plates.synth import render_plate

    plate = render_plate("苏E12345", "ordinary", np.random.default_rng(5))[::3, ::3]
    frame = np.full((plate.shape[0] * 3, plate.shape[1] * 2, 3), 90, np.uint8)
    frame[plate.shape[0] : 2 * plate.shape[0], : plate.shape[1]] = plate
    during: list[int] = []
    voted = reader._voted

    def spy(read: PlateRead) -> PlateRead:
        during.append(len(reader._sources))
        return voted(read)

    monkeypatch.setattr(reader, "_voted", spy)
    assert reader.read(frame)  # a plate is read: its crop was on record during the frame ...
    assert during and min(during) > 0
    assert reader._sources == {}  # ... and is gone after it


@pytest.mark.parametrize("bad", [-0.1, 1.5, float("nan")])
def test_a_vote_bar_outside_zero_to_one_is_a_clear_error(bad: float) -> None:
    with pytest.raises(ConfigError, match="province_vote"):
        PlateReader(threads=1, province_vote=bad)


@pytest.mark.parametrize("bad", ["-0.1", "1.5", "nan"])
def test_eval_refuses_a_vote_bar_outside_zero_to_one(tmp_path: Path, bad: str) -> None:
    from carpulse.evals.plates import main
    from models.plates.synth import write_set

    write_set(tmp_path, 1, seed=32)
    with pytest.raises(ConfigError, match="--province-vote"):
        main(["--images", str(tmp_path), "--no-latency", "--no-baseline", "--province-vote", bad])


def test_the_gate_setting_reaches_the_reader(tmp_path: Path) -> None:
    from pydantic import ValidationError

    from edge.gate import GateConfig, GateLoop

    on = GateLoop(GateConfig(source=str(tmp_path), presence=False), lambda *e: None)
    off = GateLoop(
        GateConfig(source=str(tmp_path), plate_province_vote=0, presence=False), lambda *e: None
    )
    assert on.reader.province_vote == 0.8 and off.reader.province_vote == 0.0
    for bad in (float("nan"), 1.5, -1.0, "many"):
        with pytest.raises(ValidationError):
            GateConfig(source=str(tmp_path), plate_province_vote=bad)


def test_a_real_photo_variant_gets_its_province_back() -> None:
    """A dev variant of a shared photo (seed 0): PP-OCR read 苏 as 鄂 at 0.57 on the crop, its
    jittered copies read 苏. Off (0), the reader gives the old reading."""
    from models.plates.perturb import perturbed

    folder = require_data("plates")
    image = perturbed(cv2.imread(str(folder / "ccpd_db_db4.jpg")), "ccpd_db_db4.jpg", 0, 0)[0]
    on = [r.text for r in PlateReader(threads=1).read(image)]
    off = [r.text for r in PlateReader(threads=1, province_vote=0).read(image)]
    assert on == ["苏E9E0A5"] and off == ["鄂E9E0A5"]
