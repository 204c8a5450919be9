"""PP-OCR's neck and head retrained on plates: the shipped weights, how they load into the graph,
hostile weight files, the gate and eval switches, and ``carpulse plates train --rec`` end to end."""

from __future__ import annotations

import hashlib
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from core.errors import ConfigError
from models.plates.decode import plate_chars
from models.plates.ocr import PaddleOcr
from models.plates.reader import PlateReader
from models.plates.rec_neck import (
    CLASSES_KEY,
    HEAD_W,
    REC_NECK_PATH,
    REC_NECK_SHA256,
    load_weights,
)
from models.plates.synth import render_plate

pytest.importorskip("onnxruntime")
pytest.importorskip("onnx")


def _crop(text: str, kind: str = "ordinary", step: int = 3) -> np.ndarray:
    plate = render_plate(text, kind, np.random.default_rng(5))
    return np.ascontiguousarray(plate[::step, ::step])


def test_the_shipped_weights_are_the_measured_ones() -> None:
    assert hashlib.sha256(REC_NECK_PATH.read_bytes()).hexdigest() == REC_NECK_SHA256
    weights, classes = load_weights(REC_NECK_PATH)
    assert classes[0] == "" and set(classes[1:]) <= plate_chars() | {" "}
    assert weights[HEAD_W].shape == (120, len(classes))
    assert 500_000 < sum(w.size for w in weights.values()) < 700_000


def test_the_neck_changes_the_recogniser_and_keeps_its_classes() -> None:
    narrow = plate_chars()
    tuned = PaddleOcr(threads=1, narrow=narrow, neck=REC_NECK_PATH)
    plain = PaddleOcr(threads=1, narrow=narrow)
    assert tuned.alphabet == plain.alphabet
    crop = _crop("苏E12345")
    a, b = tuned.recognise([crop])[0], plain.recognise([crop])[0]
    assert a.shape == b.shape
    assert np.allclose(a.sum(-1), 1.0, atol=1e-4)
    assert np.abs(a - b).max() > 1e-3  # other weights, other probabilities


def test_fused_and_unfused_tuned_graphs_agree() -> None:
    crop = _crop("京A8C6D9")
    fused = PaddleOcr(threads=1, neck=REC_NECK_PATH, narrow=plate_chars())
    plain = PaddleOcr(threads=1, neck=REC_NECK_PATH, narrow=plate_chars(), fuse=False)
    assert np.abs(fused.recognise([crop])[0] - plain.recognise([crop])[0]).max() < 1e-4


@pytest.mark.parametrize(
    ("text", "kind", "step"),
    [
        ("苏E12345", "ordinary", 3),
        ("粤B0X7D学", "coach", 3),
        ("川AD12345", "new-energy-small", 2),
    ],
)
def test_the_reader_reads_drawn_plates_with_it(text: str, kind: str, step: int) -> None:
    reader = PlateReader(threads=1)
    assert reader.ocr._neck == REC_NECK_PATH  # on by default
    crop = _crop(text, kind, step)
    scene = np.full((crop.shape[0] * 4, crop.shape[1] * 3, 3), 90, np.uint8)
    y, x = crop.shape[0] * 2, crop.shape[1]
    scene[y : y + crop.shape[0], x : x + crop.shape[1]] = crop
    assert [r.text for r in reader.read(scene)] == [text]


def _write(path: Path, **arrays: object) -> Path:
    with path.open("wb") as fh:
        np.savez(fh, **arrays)  # type: ignore[arg-type]
    return path


def _shipped() -> dict[str, np.ndarray]:
    with np.load(REC_NECK_PATH) as npz:
        return {k: npz[k] for k in npz.files}


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ("nan", "not finite"),
        ("inf", "not finite"),
        ("float64", "not float32"),
        ("shape", r"is \(3, 3\)"),
        ("unknown-name", "no weight of the recogniser"),
        ("unknown-class", "not in the recogniser's alphabet"),
        ("no-classes", CLASSES_KEY),
        ("classes-not-text", CLASSES_KEY),
        ("head-columns", "the head"),
        ("only-classes", "no weights"),
    ],
)
def test_hostile_weight_files_are_clear_errors(tmp_path: Path, change: str, message: str) -> None:
    w = _shipped()
    name = next(k for k in w if k not in (CLASSES_KEY, HEAD_W) and w[k].ndim == 4)
    if change == "nan":
        w[name] = w[name].copy()
        w[name].flat[7] = np.nan
    elif change == "inf":
        w[HEAD_W] = w[HEAD_W].copy()
        w[HEAD_W][0, 0] = np.inf
    elif change == "float64":
        w[name] = w[name].astype(np.float64)
    elif change == "shape":
        w[name] = np.zeros((3, 3), np.float32)
    elif change == "unknown-name":
        w["conv_that_is_not_there"] = np.zeros((2, 2), np.float32)
    elif change == "unknown-class":
        w[CLASSES_KEY] = np.array(["", "😀", *w[CLASSES_KEY][2:]])
    elif change == "no-classes":
        del w[CLASSES_KEY]
    elif change == "classes-not-text":
        w[CLASSES_KEY] = np.arange(len(w[CLASSES_KEY]))
    elif change == "head-columns":
        w[HEAD_W] = w[HEAD_W][:, :-1]
    elif change == "only-classes":
        w = {CLASSES_KEY: w[CLASSES_KEY]}
    path = _write(tmp_path / "neck.npz", **w)
    with pytest.raises(ConfigError, match=message):
        PaddleOcr(threads=1, neck=path, narrow=plate_chars())


@pytest.mark.parametrize(
    "content",
    [b"", b"not an npz at all", b"PK\x03\x04" + b"\x00" * 64],
    ids=["empty", "text", "zip"],
)
def test_unreadable_weight_files_are_clear_errors(tmp_path: Path, content: bytes) -> None:
    path = tmp_path / "neck.npz"
    path.write_bytes(content)
    with pytest.raises(ConfigError, match=r"not a readable \.npz"):
        PaddleOcr(threads=1, neck=path)


def test_a_pickled_weight_file_is_refused(tmp_path: Path) -> None:
    w = _shipped()
    w["evil"] = np.array([{"a": 1}], dtype=object)
    path = _write(tmp_path / "neck.npz", **w)
    with pytest.raises(ConfigError, match=r"not a readable \.npz"):
        PaddleOcr(threads=1, neck=path)


def test_a_missing_weight_file_is_a_clear_error(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="do not exist"):
        PaddleOcr(threads=1, neck=tmp_path / "none.npz")


def test_the_gate_setting_turns_the_neck_off(tmp_path: Path) -> None:
    from edge.gate import GateConfig, GateLoop

    on = GateLoop(GateConfig(source=str(tmp_path), presence=False), lambda *e: None)
    off = GateLoop(
        GateConfig(source=str(tmp_path), plate_rec_neck=False, presence=False), lambda *e: None
    )
    assert on.reader.ocr._neck == REC_NECK_PATH and off.reader.ocr._neck is None


def test_train_command_end_to_end(tmp_path: Path) -> None:
    """`carpulse plates train --rec` in its own process, tiny: features, fit, the weights written
    and checked against the graph the reader loads, and a reader that loads them."""
    pytest.importorskip("jax")
    pytest.importorskip("optax")
    out = tmp_path / "neck.npz"
    argv = ["--out", str(out), "--photos", "6", "--val", "3", "--epochs", "1", "--seed", "777"]
    argv += ["--batch", "1"]
    res = subprocess.run(
        [sys.executable, "-m", "carpulse", "plates", "train", "--rec", *argv, "--json"],
        capture_output=True,
        text=True,
        timeout=600,
        check=False,
    )
    assert res.returncode == 0, res.stderr[-2000:]
    summary = json.loads(res.stdout.strip().splitlines()[-1])
    assert out.exists() and summary["bytes"] == out.stat().st_size
    assert summary["crops"] >= 6 and summary["export_max_abs_error"] < 1e-3
    assert "epoch 1/1" in res.stderr  # progress on long work
    ocr = PaddleOcr(threads=1, neck=out, narrow=plate_chars())
    assert ocr.recognise([_crop("苏E12345")])[0].shape[1] == len(ocr.alphabet)
    refusals = (
        (["--seed", "9100"], "evaluation seed"),
        (["--lr", "nan"], "--lr"),
        (["--photos", "2", "--val", "0", "--batch", "64"], "smaller --batch"),
    )
    for bad, why in refusals:
        refused = subprocess.run(
            [sys.executable, "-m", "carpulse", "plates", "train", "--rec", "--out", str(out), *bad],
            capture_output=True,
            text=True,
            timeout=120,
            check=False,
        )
        assert refused.returncode != 0 and why in refused.stderr + refused.stdout
