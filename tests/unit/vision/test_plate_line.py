"""The plate-line recogniser: the shipped ONNX model against its NumPy reference, every plate kind
read from a rendered plate, hostile crops, and the training command end to end (tiny)."""

from __future__ import annotations

import dataclasses
import json
import subprocess
import sys
from pathlib import Path

import cv2
import numpy as np
import pytest

pytest.importorskip("onnxruntime")

import onnx
from onnx import numpy_helper

from core.errors import ConfigError
from models.plates.decode import PlateDecoder
from models.plates.line import (
    ALPHABET,
    CHARSET,
    HEIGHT,
    LINE_PATH,
    WIDTH,
    LineReader,
    prepare,
    reference_logits,
)
from models.plates.province import province_positions
from models.plates.syntax import KINDS, TEMPLATES, is_valid
from models.plates.synth import random_text, render_plate


@pytest.fixture(scope="module")
def line() -> LineReader:
    return LineReader()


def _params(path: Path) -> dict[str, np.ndarray]:
    model = onnx.load(str(path))
    return {t.name: numpy_helper.to_array(t) for t in model.graph.initializer}


def test_the_shipped_model_is_small_and_knows_every_plate_character() -> None:
    assert LINE_PATH.stat().st_size < 1_000_000
    model = onnx.load(str(LINE_PATH))
    meta = {p.key: p.value for p in model.metadata_props}
    assert meta["alphabet"].split("\n") == list(CHARSET)
    wanted = {ch for t in TEMPLATES for pos in t for ch in pos}
    assert set(CHARSET) == wanted and ALPHABET[0] == "<blank>"


def test_onnx_matches_the_numpy_reference() -> None:
    params = _params(LINE_PATH)
    rng = np.random.default_rng(3)
    crops = [
        rng.integers(0, 256, (int(h), int(w), 3), dtype=np.uint8) for h, w in ((30, 100), (50, 160))
    ]
    x = np.stack([prepare(c) for c in crops])
    import onnxruntime as ort

    sess = ort.InferenceSession(str(LINE_PATH), providers=["CPUExecutionProvider"])
    got = sess.run(None, {"x": x})[0]
    want = reference_logits(params, x)
    assert got.shape == (2, WIDTH // 4, len(ALPHABET))
    assert np.abs(got - want).max() < 1e-3


@pytest.mark.parametrize("kind", [k for k, _, _ in KINDS])
def test_every_kind_is_read_from_a_rendered_plate(line: LineReader, kind: str) -> None:
    decoder = PlateDecoder(line.alphabet)
    rng = np.random.default_rng(11)
    serials = 0
    for _ in range(4):
        text = random_text(kind, rng)
        plate = cv2.resize(render_plate(text, kind, rng), (150, 48), interpolation=cv2.INTER_AREA)
        # with a margin, as the reader's crops have
        crop = cv2.copyMakeBorder(plate, 6, 6, 8, 8, cv2.BORDER_REPLICATE)
        dec = decoder.constrained(line.probs([crop])[0])
        assert dec is not None and is_valid(dec.text)
        # Everything but the province (its weak spot: BENCHMARKS.md) on most plates.
        skip = set(province_positions(text))
        serials += len(dec.text) == len(text) and all(
            a == b for p, (a, b) in enumerate(zip(dec.text, text, strict=True)) if p not in skip
        )
    assert serials >= 3, kind


@pytest.mark.parametrize(
    "crop",
    [
        np.zeros((HEIGHT, WIDTH, 3), np.uint8),
        np.full((7, 300, 3), 255, np.uint8),
        np.zeros((400, 13, 3), np.uint8),
        np.random.default_rng(5).integers(0, 256, (40, 130), dtype=np.uint8),
    ],
    ids=["black", "thin-white", "tall", "grey-noise"],
)
def test_hostile_crops_give_no_valid_or_a_valid_reading(line: LineReader, crop: np.ndarray) -> None:
    probs = line.probs([crop])[0]
    assert probs.shape == (WIDTH // 4, len(ALPHABET))
    assert np.isfinite(probs).all() and np.allclose(probs.sum(axis=1), 1.0, atol=1e-5)
    dec = PlateDecoder(line.alphabet).constrained(probs)
    assert dec is None or is_valid(dec.text)


def test_an_empty_crop_is_refused(line: LineReader) -> None:
    with pytest.raises(ValueError):
        line.probs([np.zeros((0, 10, 3), np.uint8)])


def test_a_missing_model_is_a_clear_error(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="does not exist"):
        LineReader(tmp_path / "none.onnx")


def test_train_command_end_to_end(tmp_path: Path) -> None:
    """`carpulse plates train --line` in its own process (JAX's threads must not meet a fork of the
    test process), tiny: it fits, exports, checks the export and writes a model the reader loads."""
    pytest.importorskip("jax")
    pytest.importorskip("optax")
    out = tmp_path / "line.onnx"
    argv = [
        "--out",
        str(out),
        "--photos",
        "4",
        "--rendered",
        "24",
        "--epochs",
        "2",
        "--seed",
        "777",
    ]
    res = subprocess.run(
        [sys.executable, "-m", "carpulse", "plates", "train", "--line", *argv, "--json"],
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    assert res.returncode == 0, res.stderr[-2000:]
    summary = json.loads(res.stdout.strip().splitlines()[-1])
    assert out.exists() and summary["bytes"] == out.stat().st_size
    assert summary["crops"] >= 24 and summary["export_max_abs_error"] < 1e-3
    assert summary["loss"][1] < summary["loss"][0]  # it learns something even in two passes
    assert "epoch 2/2" in res.stderr  # progress on long work
    reader = LineReader(out)
    assert reader.probs([np.zeros((30, 100, 3), np.uint8)])[0].shape[1] == len(ALPHABET)
    refused = ["--line", "--out", str(out), "--seed", "9999"]
    bad = subprocess.run(
        [sys.executable, "-m", "carpulse", "plates", "train", *refused],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert bad.returncode != 0 and "evaluation set" in bad.stderr + bad.stdout


def _plate_scene() -> np.ndarray:
    """A grey scene with one small, upright ordinary plate 苏E12345."""
    plate = render_plate("苏E12345", "ordinary", np.random.default_rng(2))
    scene = np.full((420, 700, 3), 90, np.uint8)
    scene[180:250, 240:460] = cv2.resize(plate, (220, 70), interpolation=cv2.INTER_AREA)
    return scene


def test_the_reader_reads_with_the_line_model_first_and_skips_pp_ocr(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    from models.plates.reader import PlateReader

    scene = _plate_scene()
    with_line = PlateReader(line_model=LINE_PATH, cell_model=None, province_model=None)
    runs: list[int] = []
    real = with_line.ocr.recognise

    def counted(crops: list[np.ndarray]) -> list[np.ndarray]:
        runs.append(len(crops))
        return real(crops)

    monkeypatch.setattr(with_line.ocr, "recognise", counted)
    assert [r.text for r in with_line.read(scene)] == ["苏E12345"]
    assert runs == []  # the line model was sure: PP-OCR never ran
    without = PlateReader(cell_model=None, province_model=None, line_model=None)
    assert without.line is None and [r.text for r in without.read(scene)] == ["苏E12345"]
    assert PlateReader().line is not None  # on by default since the eleventh session


def test_a_line_reading_below_the_fast_bar_is_kept_only_where_nothing_else_read(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    from models.plates.reader import PlateReader

    scene = _plate_scene()

    def reader(fallback: float | None) -> PlateReader:
        # line_accept above any reading: the line model never ends a crop, PP-OCR never reads
        r = PlateReader(
            cell_model=None, province_model=None, line_accept=1.1, line_fallback=fallback
        )
        monkeypatch.setattr(
            r.ocr, "recognise", lambda crops: [np.zeros((4, len(r.ocr.alphabet)))] * len(crops)
        )
        return r

    assert [x.text for x in reader(0.5).read(scene)] == ["苏E12345"]  # the line model's reading
    assert reader(None).read(scene) == []  # no fallback: nobody read it
    assert reader(0.5).read(np.full((420, 700, 3), 90, np.uint8)) == []  # nothing to read
    strict = reader(0.5)
    strict.min_confidence = 0.999999
    assert strict.read(scene) == []  # the reader's bar holds for the line model too


def test_the_gate_setting_turns_the_line_model_on(tmp_path: Path) -> None:
    from edge.gate import GateConfig, GateLoop

    on = GateLoop(GateConfig(source=str(tmp_path), presence=False), lambda *e: None)
    off = GateLoop(
        GateConfig(source=str(tmp_path), plate_line=False, presence=False), lambda *e: None
    )
    assert on.reader.line is not None and off.reader.line is None


@pytest.mark.parametrize(
    "content",
    [b"not an npz", None, "wrong-shape", "not-plates"],
    ids=["garbage", "missing-keys", "wrong-shape", "not-plates"],
)
def test_a_bad_crop_cache_is_a_clear_error(tmp_path: Path, content: object) -> None:
    from models.plates.train_line import _load_cache

    path = tmp_path / "c.npz"
    if isinstance(content, bytes):
        path.write_bytes(content)
    elif content is None:
        np.savez(path, y=np.zeros(3))
    elif content == "wrong-shape":
        np.savez(path, x=np.zeros((2, 5, 5), np.uint8), texts=np.array(["京A12345", "京A12346"]))
    else:
        x = np.zeros((1, HEIGHT, WIDTH), np.uint8)
        np.savez(path, x=x, texts=np.array(["x" * 10_000]))
    with pytest.raises(ConfigError, match="--cache"):
        _load_cache(path)


def test_labels_keep_every_character_of_the_longest_plates() -> None:
    from models.plates.train_line import MAX_LABEL, encode_labels

    lab, pad = encode_labels(["WJ0505907", "京A12345"])
    assert MAX_LABEL == 9 and lab.shape == (2, 9)
    assert (lab[0] > 0).all() and pad[0].sum() == 0  # nine characters, none cut off
    assert pad[1].sum() == 2 and ALPHABET[lab[0, -1]] == "7"
    with pytest.raises(ConfigError, match="longer than any plate"):
        encode_labels(["京A123456789"])


def test_the_test_sets_fonts_are_never_training_fonts() -> None:
    from models.plates.fonts import HELD_OUT_FONTS, TRAIN_CJK, TRAIN_LATIN, training_fonts

    names = {Path(f).name for f in (*TRAIN_CJK, *TRAIN_LATIN) if f is not None}
    assert names and not names & {Path(f).name for f in HELD_OUT_FONTS}
    assert {Path(f).name for f in HELD_OUT_FONTS} >= {
        "NotoSerifCJK-Bold.ttc", "wqy-microhei.ttc", "LiberationSansNarrow-Bold.ttf"
    }  # fmt: skip
    picked = {training_fonts(23_000, i) for i in range(400)}
    assert (None, None) in picked and len(picked) > 10  # the default and many other pairs
    assert not {Path(f).name for pair in picked for f in pair if f is not None} & {
        Path(f).name for f in HELD_OUT_FONTS
    }


@pytest.mark.parametrize(
    ("name", "face"),
    [("NotoSansCJK-Bold.ttc", 2), ("NotoSerifCJK-Bold.ttc", 2), ("wqy-microhei.ttc", 0),
     ("uming.ttc", 0), ("gbsn00lp.ttf", 0)],
)  # fmt: skip
def test_a_collection_gives_its_simplified_face(name: str, face: int) -> None:
    from models.plates.synth import _face_index

    assert _face_index(Path("/fonts") / name) == face


def test_stroke_variety_thickens_and_thins_the_characters_and_is_off_by_default() -> None:
    """`--strokes`: the crops' strokes change weight (either way), the shape and range stay, and
    without it the batches are what they were (the shipped model's fit is reproducible)."""
    from models.plates.train_line import _augment, _restroke

    plate = render_plate("苏E12345", "ordinary", np.random.default_rng(3))
    grey = cv2.cvtColor(
        cv2.resize(plate, (128, 32), interpolation=cv2.INTER_AREA), cv2.COLOR_BGR2GRAY
    )
    x = np.stack([grey] * 64)
    plain = _augment(x, np.random.default_rng(5))
    again = _augment(x, np.random.default_rng(5), strokes=False)
    assert np.array_equal(plain, again)
    varied = _augment(x, np.random.default_rng(5), strokes=True)
    assert varied.shape == x.shape and varied.dtype == np.float32
    assert varied.min() >= 0.0 and varied.max() <= 255.0
    # The same gain and polarity draws come first: only the stroke step differs.
    changed = np.abs(varied - plain).reshape(len(x), -1).max(axis=1) > 20
    assert 0.4 < changed.mean() < 1.0
    # Thicker and thinner strokes both happen: the count of bright pixels moves both ways.
    rng = np.random.default_rng(11)
    bright = (grey > 128).mean()
    moved = [(_restroke(grey.astype(np.float32), rng) > 128).mean() - bright for _ in range(200)]
    assert min(moved) < -0.03 and max(moved) > 0.03


def test_elastic_bends_the_glyphs_a_little_and_is_off_by_default() -> None:
    """`--elastic`: most crops of a batch are warped by at most ~2 px (the plate stays where it
    was), each warp differs, and without it the batches are what they were."""
    from models.plates.train_line import _augment, _bend

    plate = render_plate("苏E12345", "ordinary", np.random.default_rng(3))
    grey = cv2.cvtColor(
        cv2.resize(plate, (128, 32), interpolation=cv2.INTER_AREA), cv2.COLOR_BGR2GRAY
    )
    x = np.stack([grey] * 64)
    plain = _augment(x, np.random.default_rng(5))
    assert np.array_equal(plain, _augment(x, np.random.default_rng(5), elastic=False))
    bent = _augment(x, np.random.default_rng(5), elastic=True)
    assert bent.shape == x.shape and bent.dtype == np.float32
    assert bent.min() >= 0.0 and bent.max() <= 255.0
    changed = np.abs(bent - plain).reshape(len(x), -1).max(axis=1) > 20
    assert 0.5 < changed.mean() < 0.9  # 70 % of the crops
    rng = np.random.default_rng(11)
    a, b = _bend(grey.astype(np.float32), rng), _bend(grey.astype(np.float32), rng)
    assert not np.array_equal(a, b)
    # Small: the bent crop is closer to the crop than the crop moved by 3 px.
    moved = np.roll(grey.astype(np.float32), 3, axis=1)
    for bent_one in (a, b):
        assert np.abs(bent_one - grey).mean() < np.abs(moved - grey).mean()


def test_a_line_reading_unsure_only_of_its_province_ends_the_crop_when_the_province_is_vouched(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The line model sure of every character but the province, the province classifier sure of
    苏 on the snapped crop: the reading is taken with 苏 and PP-OCR never runs. Off, or with the
    classifier unsure, PP-OCR reads the crop as before."""
    from models.plates.reader import PlateReader

    scene = _plate_scene()

    def reader(line_province: bool, vouched: str | None) -> tuple[PlateReader, list[int]]:
        r = PlateReader(line_province=line_province, cell_accept=1.1, cell_min=1.1)
        real = r._read_line
        runs: list[int] = []

        def unsure_province(*a: object) -> tuple[object, tuple[float, ...]]:
            read, probs = real(*a)  # type: ignore[arg-type]
            if read is None:
                return read, probs
            # The province read wrong and unsure, the rest sure (as on real plates).
            wrong = dataclasses.replace(read, text="京" + read.text[1:], confidence=0.3)
            return wrong, (0.3, *probs[1:])

        monkeypatch.setattr(r, "_read_line", unsure_province)
        assert r.province is not None
        monkeypatch.setattr(r.province, "vouch", lambda crop, text, grid: vouched)
        real_ocr = r.ocr.recognise

        def counted(crops: list[np.ndarray]) -> list[np.ndarray]:
            runs.append(len(crops))
            return real_ocr(crops)

        monkeypatch.setattr(r.ocr, "recognise", counted)
        return r, runs

    on, runs = reader(True, "苏E12345")
    assert [x.text for x in on.read(scene)] == ["苏E12345"] and runs == []
    off, runs = reader(False, "苏E12345")
    assert [x.text for x in off.read(scene)] == ["苏E12345"] and runs  # PP-OCR read it
    unsure, runs = reader(True, None)
    assert [x.text for x in unsure.read(scene)] == ["苏E12345"] and runs


def test_the_gate_setting_sets_how_sure_a_reading_must_be_to_end_the_search(
    tmp_path: Path,
) -> None:
    from pydantic import ValidationError

    from edge.gate import GateConfig, GateLoop

    default = GateLoop(GateConfig(source=str(tmp_path), presence=False), lambda *e: None)
    first = GateLoop(
        GateConfig(source=str(tmp_path), plate_settle=0.0, presence=False), lambda *e: None
    )
    assert default.reader.settle == 0.9 and first.reader.settle == 0.0
    for bad in (-0.1, 1.5, float("nan"), "sure"):
        with pytest.raises(ValidationError):
            GateConfig(source=str(tmp_path), plate_settle=bad)  # type: ignore[arg-type]


def test_the_training_font_is_put_back_even_when_making_a_plate_fails() -> None:
    from models.plates import synth
    from models.plates.fonts import drawn_in_training_fonts, training_fonts

    seed, i = 23_000, next(j for j in range(100) if training_fonts(23_000, j)[0] is not None)
    with pytest.raises(RuntimeError), drawn_in_training_fonts(seed, i):
        assert synth._FONTS  # the plate's pair is in use inside
        raise RuntimeError("a plate failed")
    assert synth._FONTS == []  # the default again
    with drawn_in_training_fonts(seed, i, on=False):
        assert synth._FONTS == []
