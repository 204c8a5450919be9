"""The learned plate finder: the shipped ONNX model against its NumPy reference, plates found on
synthetic photos it never trained on, hostile frames and outputs, the targets it is fitted to, and
the training command end to end (tiny)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import cv2
import numpy as np
import pytest

pytest.importorskip("onnxruntime")

from core.errors import ConfigError
from models.plates.crops import as_decoded
from models.plates.find import (
    CELLS,
    FIND_PATH,
    HEAD,
    SIDE,
    STRIDE,
    PlateFinder,
    decode,
    letterbox,
    quad_rect,
    reference_out,
)
from models.plates.synth import make_sample
from models.plates.train_find import (
    check_export,
    init_params,
    load_params,
    make_frames,
    standardise,
    targets,
    to_onnx,
)

# Synthetic photos of an evaluation seed (TUNE): never trained on.
TUNE_SEED = 9100


@pytest.fixture(scope="module")
def finder() -> PlateFinder:
    return PlateFinder()


def test_the_shipped_model_is_small_and_matches_its_numpy_reference() -> None:
    assert FIND_PATH.stat().st_size < 1_000_000
    params = load_params(FIND_PATH)
    frames = [as_decoded(make_sample(TUNE_SEED, i)) for i in range(2)]
    x = np.stack([letterbox(f)[0] for f in frames])
    import onnxruntime as ort

    got = ort.InferenceSession(str(FIND_PATH), providers=["CPUExecutionProvider"]).run(
        None, {"x": x}
    )[0]
    assert got.shape == (2, HEAD, CELLS, CELLS)
    assert np.abs(got - reference_out(params, x)).max() < 1e-3


def test_it_finds_most_plates_of_photos_it_never_saw(finder: PlateFinder) -> None:
    """On 60 TUNE photos (an evaluation seed): the best box holds the plate's centre and is about
    the plate's size, for at least 85 % of the plates."""
    hits = plates = 0
    for i in range(60):
        s = make_sample(TUNE_SEED, i)
        if s.quad is None:
            continue
        plates += 1
        found = finder.find(as_decoded(s))
        if not found:
            continue
        (cx, cy), (w, _), _ = found[0][1]
        true_w = float(np.linalg.norm(s.quad[1] - s.quad[0]))
        inside = cv2.pointPolygonTest(s.quad.astype(np.float32), (cx, cy), False) >= 0
        hits += bool(inside and 0.6 < w / true_w < 1.6)
    assert plates >= 50
    assert hits / plates >= 0.85, (hits, plates)


def test_a_plain_frame_gives_no_box(finder: PlateFinder) -> None:
    """(Uniform noise does give boxes, at up to 0.79: like grilles, one reason it ships off.)"""
    flat = np.full((480, 640, 3), 128, np.uint8)
    assert finder.find(flat) == []
    ramp = np.repeat(np.linspace(0, 255, 640, dtype=np.uint8)[None, :, None], 480, 0)
    assert finder.find(np.repeat(ramp, 3, 2)) == []


@pytest.mark.parametrize("shape", [(16, 16, 3), (16, 4000, 3), (4000, 16, 3), (1000, 1000, 3)])
def test_letterbox_keeps_the_frame_in_the_corner_at_scale(shape: tuple[int, int, int]) -> None:
    image = np.full(shape, 255, np.uint8)
    x, scale = letterbox(image)
    assert x.shape == (3, SIDE, SIDE) and x.dtype == np.float32
    assert scale == pytest.approx(SIDE / max(shape[:2]))
    h, w = max(1, round(shape[0] * scale)), max(1, round(shape[1] * scale))
    assert np.allclose(x[:, :h, :w], 0.5) and np.all(x[:, h:, :] == 0) and np.all(x[:, :, w:] == 0)


@pytest.mark.parametrize("bad", [np.nan, np.inf, -np.inf, 1e30])
def test_hostile_outputs_give_no_box_or_a_finite_one(bad: float) -> None:
    out = np.zeros((HEAD, CELLS, CELLS), np.float32)
    out[0] = -10.0
    out[0, 5, 5] = bad
    out[1:, 5, 5] = bad
    found = decode(out, 0.5, 0.3, 2)
    if np.isnan(bad) or bad < 0:  # no score, or a score of 0
        assert found == []
    rects = [quad_rect(q) for _, q in found]
    assert all(r is None or all(np.isfinite(np.ravel(r[0] + r[1] + (r[2],)))) for r in rects)


def test_decode_keeps_local_peaks_above_the_threshold_best_first() -> None:
    out = np.zeros((HEAD, CELLS, CELLS), np.float32)
    out[0] = -8.0
    out[0, 10, 10], out[0, 10, 11] = 3.0, 2.0  # one plate, two neighbouring cells
    out[0, 20, 4] = 1.0
    out[0, 2, 2] = -0.1  # below 0.5
    found = decode(out, 1.0, 0.5, 5)
    assert len(found) == 2 and found[0][0] > found[1][0]
    centre = np.array([10.5 * STRIDE, 10.5 * STRIDE])
    assert np.allclose(found[0][1], centre[None, :])  # zero offsets: the cell's centre
    assert len(decode(out, 1.0, 0.5, 1)) == 1


def test_quad_rect_gives_the_long_side_first_and_refuses_slivers() -> None:
    tall = np.array([[0, 0], [30, 0], [30, 100], [0, 100]], np.float32)
    (_, _), (w, h), _ = quad_rect(tall, (1.0, 1.0))  # type: ignore[misc]
    assert w == pytest.approx(100) and h == pytest.approx(30)
    assert quad_rect(np.array([[0, 0], [100, 0], [100, 2], [0, 2]], np.float32)) is None


def test_targets_mark_the_centre_and_point_at_the_corners() -> None:
    quad = np.array([[100, 120], [180, 118], [181, 145], [101, 147]], np.float32)
    none = np.full((4, 2), np.nan, np.float32)
    obj, off = targets(np.stack([quad, none]))
    assert obj[1].sum() == 0 and obj[0].sum() >= 1
    ci, cj = int(quad.mean(0)[1] // STRIDE), int(quad.mean(0)[0] // STRIDE)
    assert obj[0, ci, cj] == 1
    for i, j in zip(*np.nonzero(obj[0]), strict=True):  # every centre cell decodes to the quad
        centre = np.array([(j + 0.5) * STRIDE, (i + 0.5) * STRIDE])
        assert np.allclose(centre + off[0, :, i, j].reshape(4, 2) * 32.0, quad, atol=1e-3)
    _, cols = np.nonzero(obj[0])
    assert np.all(np.abs(cols * STRIDE + STRIDE / 2 - quad[:, 0].mean()) < 40)


def test_the_export_matches_the_reference_for_fresh_weights() -> None:
    params = init_params(5)
    x = np.random.default_rng(1).uniform(-0.5, 0.5, (2, 3, SIDE, SIDE)).astype(np.float32)
    assert check_export(to_onnx(params), params, x) < 1e-4


def test_frames_are_the_same_whatever_the_jobs() -> None:
    one = make_frames(27_123, 3, per_photo=2, jobs=1)
    two = make_frames(27_123, 3, per_photo=2, jobs=2)
    assert one[0].shape == (6, SIDE, SIDE, 3) and one[1].shape == (6, 4, 2)
    assert np.array_equal(one[0], two[0]) and np.array_equal(one[1], two[1], equal_nan=True)
    assert standardise(one[0]).shape == (6, 3, SIDE, SIDE)


@pytest.mark.parametrize(
    "args, message",
    [
        (["--seed", "9100"], "evaluation set"),
        (["--photos", "0"], "--photos"),
        (["--epochs", "0"], "--epochs"),
        (["--lr", "nan"], "--lr"),
        (["--distract", "1.5"], "--distract"),
        (["--distract", "nan"], "--distract"),
    ],
)
def test_training_refuses_bad_arguments(args: list[str], message: str, tmp_path: Path) -> None:
    from models.plates.train_find import main

    with pytest.raises(ConfigError, match=message):
        main(["--out", str(tmp_path / "f.onnx"), *args])


def test_the_training_command_writes_a_model_the_finder_loads(tmp_path: Path) -> None:
    pytest.importorskip("jax")
    out = tmp_path / "find.onnx"
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "carpulse",
            "plates",
            "train",
            "--find",
            "--out",
            str(out),
            "--photos",
            "12",
            "--epochs",
            "1",
        ],
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    summary = json.loads(proc.stdout)
    assert summary["frames"] == 24 and summary["export_max_abs_error"] < 1e-3
    assert "epoch 1/1" in proc.stderr
    PlateFinder(out).find(np.zeros((100, 100, 3), np.uint8))


def test_a_find_threshold_outside_zero_to_one_is_refused() -> None:
    from models.plates.reader import PlateReader

    with pytest.raises(ConfigError, match="find_threshold"):
        PlateReader(find_threshold=float("nan"))


def test_the_reader_reads_the_finders_boxes_when_asked() -> None:
    """Opt-in (``find_model``): on TUNE photos some plates are read from the finder's box itself,
    before any colour candidate; off (the default) the stage never runs."""
    from models.plates.reader import PlateReader

    on, off = PlateReader(find_model=FIND_PATH), PlateReader()
    assert off.finder is None and on.finder is not None
    stages_on, stages_off = [], []
    for i in range(12):
        s = make_sample(TUNE_SEED, i)
        if not s.text:
            continue
        img = as_decoded(s)
        stages_on += [r.stage for r in on.read(img) if r.text == s.text]
        stages_off += [r.stage for r in off.read(img) if r.text == s.text]
    assert stages_on.count("finder") >= 3, stages_on
    assert "finder" not in stages_off


def test_the_gate_setting_turns_the_finder_on(tmp_path: Path) -> None:
    from edge.gate import GateConfig, GateLoop

    off = GateLoop(GateConfig(source=str(tmp_path), presence=False), lambda *e: None)
    on = GateLoop(
        GateConfig(source=str(tmp_path), plate_finder=True, presence=False), lambda *e: None
    )
    assert off.reader.finder is None and on.reader.finder is not None


def test_distractors_change_the_frames_but_never_the_plates() -> None:
    plain = make_frames(27_124, 4, per_photo=1)
    busy = make_frames(27_124, 4, per_photo=1, distract=1.0)
    assert np.array_equal(plain[1], busy[1], equal_nan=True)  # the same plates, same places
    assert not np.array_equal(plain[0], busy[0])


@pytest.mark.parametrize("content", [b"not onnx", None])
def test_init_must_be_a_finder_model(tmp_path: Path, content: bytes | None) -> None:
    from models.plates.train_find import main

    path = tmp_path / "init.onnx"
    if content is not None:
        path.write_bytes(content)
    with pytest.raises(ConfigError, match="--init"):
        main(["--out", str(tmp_path / "f.onnx"), "--photos", "2", "--init", str(path)])


def test_init_refuses_a_model_of_another_shape(tmp_path: Path) -> None:
    from models.plates.line import LINE_PATH

    with pytest.raises(ConfigError, match="shape"):
        load_params(LINE_PATH)
    assert set(load_params(FIND_PATH)) == set(init_params(0))


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"threshold": float("nan")}, "find_threshold"),
        ({"threshold": 1.5}, "find_threshold"),
        ({"top": 0}, "find_top"),
        ({"top": -3}, "find_top"),
        ({"top": 10**9}, "find_top"),
    ],
)
def test_the_finder_refuses_bad_settings(kwargs: dict[str, float], message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        PlateFinder(**kwargs)  # type: ignore[arg-type]
    from models.plates.reader import PlateReader

    with pytest.raises(ConfigError, match=message):
        PlateReader(find_model=FIND_PATH, **{f"find_{k}": v for k, v in kwargs.items()})


def test_boxes_off_the_frame_or_larger_than_it_are_dropped(
    finder: PlateFinder, monkeypatch: pytest.MonkeyPatch
) -> None:
    out = np.zeros((1, HEAD, CELLS, CELLS), np.float32)
    out[0, 0] = -10.0
    out[0, 0, 4, 4] = 5.0  # a box far off the frame: corners 3,200 px to the right
    out[0, 1::2, 4, 4] = 100.0
    out[0, 0, 20, 20] = 5.0  # a box ten frames wide
    out[0, 1:, 20, 20] = np.array([-300, -1, 300, -1, 300, 1, -300, 1], np.float32)
    out[0, 0, 12, 12] = 4.0  # a plate-sized box in the frame
    out[0, 1:, 12, 12] = np.array([-2, -0.5, 2, -0.5, 2, 0.5, -2, 0.5], np.float32)
    monkeypatch.setattr(finder.session, "run", lambda names, feed: [out])
    monkeypatch.setattr(finder, "top", 3)
    found = finder.find(np.zeros((256, 256, 3), np.uint8))
    assert len(found) == 1 and found[0][1][0] == pytest.approx((100.0, 100.0))
