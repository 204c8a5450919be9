"""Snapping a located plate's corners to its character row: a shifted or scaled box comes back."""

from __future__ import annotations

import hashlib

import cv2
import numpy as np
import pytest

from models.plates.cells import MODEL_PATH, CellReader
from models.plates.quad import grow_quad, order_corners, rect_quad, refine, snap, warp_quad
from models.plates.reader import PlateReader
from models.plates.synth import render_plate

PLATES = [
    ("苏E9E0A5", "ordinary"),  # blue, white characters
    ("鲁B1234挂", "trailer"),  # yellow, black characters
    ("粤B1234警", "police"),  # white, black characters and a red one
    ("粤AD12345", "new-energy-small"),  # green gradient, eight characters
    pytest.param(
        "使123456",
        "embassy",
        marks=pytest.mark.xfail(
            strict=True,
            reason="red 使 on black is faint in grey: the row's left end is a character off "
            "(redness edges fixed it here but read fewer TUNE plates)",
        ),
    ),
]
KNOWN = [(p.values[0], p.values[1]) if hasattr(p, "values") else p for p in PLATES]


def _scene(
    text: str, kind: str, roll: float, yaw: float, seed: int
) -> tuple[np.ndarray, np.ndarray]:
    """A rendered plate rolled and yawed on a cluttered grey wall, and its true corners."""
    plate = render_plate(text, kind, np.random.default_rng(seed))
    h, w = plate.shape[:2]
    dx, dy = 120.0, 120.0 * h / w
    c = np.array([[-dx, -dy], [dx, -dy * (1 - yaw)], [dx, dy * (1 - yaw)], [-dx, dy]], np.float32)
    r = np.deg2rad(roll)
    rot = np.array([[np.cos(r), -np.sin(r)], [np.sin(r), np.cos(r)]], np.float32)
    truth = (c @ rot.T + np.array([320, 240], np.float32)).astype(np.float32)
    src = np.array([[0, 0], [w, 0], [w, h], [0, h]], np.float32)
    m = cv2.getPerspectiveTransform(src, truth)
    rng = np.random.default_rng(seed)
    scene = np.full((480, 640, 3), 100, np.uint8)
    for _ in range(6):  # clutter the locator and the snap must ignore
        x0, y0 = int(rng.integers(0, 600)), int(rng.integers(0, 440))
        cv2.rectangle(scene, (x0, y0), (x0 + 60, y0 + 30), rng.uniform(0, 255, 3).tolist(), -1)
    cover = cv2.warpPerspective(np.full((h, w), 255, np.uint8), m, (640, 480)) > 127
    scene[cover] = cv2.warpPerspective(plate, m, (640, 480))[cover]
    return scene, truth


def _err(quad: np.ndarray, truth: np.ndarray) -> tuple[float, float]:
    """Largest corner error as fractions of the plate's width and height (in the plate's frame)."""
    unit = np.array([[0, 0], [1, 0], [1, 1], [0, 1]], np.float32)
    m = cv2.getPerspectiveTransform(order_corners(truth), unit)
    u = cv2.perspectiveTransform(order_corners(quad)[None], m)[0] - unit
    return float(np.abs(u[:, 0]).max()), float(np.abs(u[:, 1]).max())


def _off(
    truth: np.ndarray, shift_x: float, shift_y: float, grow_x: float, grow_y: float
) -> np.ndarray:
    """``truth`` moved by fractions of its width and height and grown (or shrunk) on each side."""
    q = grow_quad(order_corners(truth), grow_x, grow_y)
    across = (q[1] - q[0] + q[2] - q[3]) / 2
    down = (q[3] - q[0] + q[2] - q[1]) / 2
    return (q + shift_x * across + shift_y * down).astype(np.float32)


OFFSETS = [
    (0.0, 0.15, 0.0, 0.0),  # a box a sixth of the plate too low
    (0.0, -0.12, 0.0, 0.1),  # too high and too tall
    (0.04, 0.0, 0.05, -0.12),  # to the right, too wide and too short
    (-0.05, 0.08, -0.04, 0.15),  # everything at once
]


@pytest.mark.parametrize(("text", "kind"), PLATES)
@pytest.mark.parametrize("offset", OFFSETS)
def test_snap_recovers_a_shifted_or_scaled_quad(
    text: str, kind: str, offset: tuple[float, float, float, float]
) -> None:
    scene, truth = _scene(text, kind, roll=KNOWN.index((text, kind)) * 4 - 8, yaw=0.2, seed=3)
    start = _off(truth, *offset)
    ex0, ey0 = _err(start, truth)
    got = snap(scene, start)
    assert got is not None
    ex, ey = _err(got, truth)
    # Within a twentieth of the height and a twentieth of the width of the true corners, and
    # closer than where it started.
    assert ey < 0.06 and ex < 0.05, (ex, ey, ex0, ey0)
    assert max(ex, ey) < max(ex0, ey0)


@pytest.mark.parametrize("offset", OFFSETS)
def test_snap_finds_the_rows_of_an_embassy_plate(offset: tuple[float, float, float, float]) -> None:
    scene, truth = _scene("使123456", "embassy", roll=8, yaw=0.2, seed=3)
    got = snap(scene, _off(truth, *offset))
    assert got is not None
    assert _err(got, truth)[1] < 0.06


def test_snapped_crop_reads_where_the_loose_crop_does_not() -> None:
    cells = CellReader()
    scene, truth = _scene("苏E9E0A5", "ordinary", roll=10, yaw=0.25, seed=7)
    start = _off(truth, 0.0, 0.2, 0.0, 0.15)
    loose = cells.read(warp_quad(scene, start))
    got = snap(scene, start)
    assert got is not None
    snapped = cells.read(warp_quad(scene, got))
    assert snapped is not None and snapped.text == "苏E9E0A5"
    assert loose is None or loose.score < snapped.score


def test_the_reader_gives_the_cells_the_snapped_crop() -> None:
    scene, truth = _scene("鲁B1234挂", "trailer", roll=-12, yaw=0.3, seed=11)
    # The min-area rectangle around the plate, low and too tall: what an edge candidate gives.
    (cx, cy), (w, h), ang = cv2.minAreaRect(truth)
    rect = ((cx, cy + 0.1 * min(w, h)), (w * 1.05, h * 1.3), ang)
    start = refine(scene, rect)
    snapped = snap(scene, start if start is not None else rect_quad(rect))
    assert snapped is not None
    crop = warp_quad(scene, snapped)
    want = hashlib.sha256(np.ascontiguousarray(crop).tobytes()).hexdigest()
    reads = PlateReader(cell_model=MODEL_PATH)._read_crops(scene, [rect], "edge")
    assert [(r.text, r.crop_sha256) for r in reads] == [("鲁B1234挂", want)]
    # Without snapping the cells read another crop; a text detector's box is never snapped.
    plain = PlateReader(cell_model=MODEL_PATH, snap_passes=0)._read_crops(scene, [rect], "edge")
    assert [r.text for r in plain] == ["鲁B1234挂"] and plain[0].crop_sha256 != want
    boxed = PlateReader(cell_model=MODEL_PATH)._read_crops(scene, [rect], "detector")
    assert all(r.crop_sha256 != want for r in boxed)


@pytest.mark.parametrize("roll", [-60.0, 50.0])
def test_the_reader_reads_a_plate_rolled_past_45_degrees(roll: float) -> None:
    """A gate camera mounted on its side or a car on a ramp: the plate comes out upright (at 60
    degrees the reader read 3 of the 42 shared photos' plates before, 39 after)."""
    scene, _ = _scene("苏E9E0A5", "ordinary", roll, 0.0, 3)
    assert "苏E9E0A5" in [r.text for r in PlateReader().read(scene)]


def test_rect_quad_puts_the_long_side_across() -> None:
    q = rect_quad(((100.0, 50.0), (30.0, 90.0), 80.0))
    width = float(np.linalg.norm(q[1] - q[0]))
    height = float(np.linalg.norm(q[3] - q[0]))
    assert width == pytest.approx(90, abs=0.5) and height == pytest.approx(30, abs=0.5)


GOOD = np.array([[200, 200], [440, 200], [440, 276], [200, 276]], np.float32)
HOSTILE_QUADS = {
    "nan": np.full((4, 2), np.nan, np.float32),
    "inf": np.array([[0, 0], [np.inf, 0], [np.inf, 10], [0, 10]], np.float32),
    "huge": GOOD * 1e12,
    "one_point": np.full((4, 2), 100, np.float32),
    "collinear": np.array([[0, 0], [10, 0], [20, 0], [30, 0]], np.float32),
    "three_points": GOOD[:3],
    "tall": GOOD[:, ::-1] * np.array([0.2, 2.0], np.float32),
    "strings": np.array([["a", "b"]] * 4),
}


@pytest.mark.parametrize("name", sorted(HOSTILE_QUADS))
def test_hostile_quads_give_none(name: str) -> None:
    scene, _ = _scene("苏E9E0A5", "ordinary", roll=0, yaw=0, seed=1)
    assert snap(scene, HOSTILE_QUADS[name]) is None


HOSTILE_IMAGES = {
    "flat": np.full((480, 640, 3), 128, np.uint8),
    "noise": np.random.default_rng(0).integers(0, 256, (480, 640, 3), dtype=np.uint8),
    "stripes": np.tile(((np.arange(640) // 3) % 2 * 255).astype(np.uint8), (480, 1))[
        :, :, None
    ].repeat(3, axis=2),
    "tiny": np.zeros((4, 4, 3), np.uint8),
    "bgra": np.zeros((480, 640, 4), np.uint8),
    "float": np.full((480, 640, 3), 0.5),
    "grey": np.full((480, 640), 90, np.uint8),
}


@pytest.mark.parametrize("name", sorted(HOSTILE_IMAGES))
def test_hostile_images_give_none_or_a_plate_shaped_quad(name: str) -> None:
    got = snap(HOSTILE_IMAGES[name], GOOD)
    if got is not None:  # noise may look like strokes: then still a sane plate shape
        assert got.shape == (4, 2) and np.all(np.isfinite(got))
        width = float(np.linalg.norm(got[1] - got[0]))
        height = float(np.linalg.norm(got[3] - got[0]))
        assert height >= 4 and 1.2 <= width / height <= 8.0
    if name in ("flat", "tiny", "bgra", "float", "grey"):
        assert got is None
