"""Deskew: a rolled and tilted plate is found by its corners and warped back upright."""

from __future__ import annotations

import cv2
import numpy as np
import pytest

from models.plates.quad import order_corners, percentile, refine, stroke_count, warp_quad
from models.plates.synth import render_plate

PLATE = render_plate("苏E9E0A5", "ordinary")


def _scene(corners: np.ndarray) -> np.ndarray:
    """The plate warped onto a grey 640 x 480 background at ``corners`` (TL, TR, BR, BL)."""
    h, w = PLATE.shape[:2]
    src = np.array([[0, 0], [w, 0], [w, h], [0, h]], np.float32)
    m = cv2.getPerspectiveTransform(src, corners.astype(np.float32))
    scene = np.full((480, 640, 3), 110, np.uint8)
    cover = cv2.warpPerspective(np.full((h, w), 255, np.uint8), m, (640, 480)) > 127
    warped = cv2.warpPerspective(PLATE, m, (640, 480))
    scene[cover] = warped[cover]
    return scene


def _rolled_and_tilted(roll_deg: float, yaw: float) -> np.ndarray:
    dx, dy = 110.0, 35.0
    c = np.array([[-dx, -dy], [dx, -dy * (1 - yaw)], [dx, dy * (1 - yaw)], [-dx, dy]], np.float32)
    r = np.deg2rad(roll_deg)
    rot = np.array([[np.cos(r), -np.sin(r)], [np.sin(r), np.cos(r)]], np.float32)
    return c @ rot.T + np.array([320, 240], np.float32)


def test_order_corners_whatever_the_input_order() -> None:
    box = np.array([[10, 10], [100, 12], [98, 40], [12, 38]], np.float32)
    for perm in ([2, 0, 3, 1], [3, 2, 1, 0], [1, 3, 0, 2]):
        assert np.array_equal(order_corners(box[perm]), box)


@pytest.mark.parametrize(("roll", "yaw"), [(0, 0), (18, 0), (-22, 0.3), (8, 0.4)])
def test_refine_finds_the_corners_of_a_tilted_plate(roll: float, yaw: float) -> None:
    truth = _rolled_and_tilted(roll, yaw)
    scene = _scene(truth)
    # A loose box, as a locator gives: the min-area rectangle, a little off-centre and too big.
    (cx, cy), (w, h), ang = cv2.minAreaRect(truth)
    quad = refine(scene, ((cx + 4, cy - 3), (w * 1.15, h * 1.2), ang))
    assert quad is not None
    assert float(np.abs(quad - truth).max()) < 8.0, (quad, truth)


def test_warped_plate_is_upright_and_matches_the_render() -> None:
    truth = _rolled_and_tilted(-15, 0.35)
    crop = warp_quad(_scene(truth), truth, out_h=48, margin=0.0)
    # Yaw shortens one side, so the estimated aspect runs a little over the true 3.14.
    assert crop.shape[0] == 48 and 2.9 <= crop.shape[1] / 48 <= 4.2
    want = cv2.resize(PLATE, (crop.shape[1], 48), interpolation=cv2.INTER_AREA)
    a = cv2.cvtColor(crop, cv2.COLOR_BGR2GRAY).astype(np.float32).ravel()
    b = cv2.cvtColor(want, cv2.COLOR_BGR2GRAY).astype(np.float32).ravel()
    assert float(np.corrcoef(a, b)[0, 1]) > 0.8
    # Without deskewing (the rotated box alone), the same comparison is clearly worse.
    (cx, cy), (w, h), ang = cv2.minAreaRect(truth)
    from models.plates.ocr import crop_rect

    plain = cv2.resize(crop_rect(_scene(truth), ((cx, cy), (w, h), ang)), (crop.shape[1], 48))
    c = cv2.cvtColor(plain, cv2.COLOR_BGR2GRAY).astype(np.float32).ravel()
    assert float(np.corrcoef(c, b)[0, 1]) < float(np.corrcoef(a, b)[0, 1])


def test_refine_gives_up_on_a_flat_region() -> None:
    flat = np.full((200, 300, 3), 128, np.uint8)
    noise = np.random.default_rng(0).integers(0, 255, (200, 300, 3), dtype=np.uint8)
    assert refine(noise, ((150, 100), (120, 40), 0.0)) is None
    assert refine(flat, ((5, 5), (4, 2), 0.0)) is None  # too small


def test_stroke_count_tells_text_from_paint() -> None:
    crop = cv2.resize(PLATE, (151, 48))
    assert stroke_count(crop) >= 10
    assert stroke_count(np.full((48, 151, 3), 90, np.uint8)) < 4
    assert stroke_count(np.zeros((3, 3, 3), np.uint8)) == 0.0


def test_stroke_count_sees_text_under_glare_and_not_a_shaded_panel() -> None:
    crop = cv2.resize(PLATE, (151, 48)).astype(np.float32)
    # Headlamp glare: a dim plate whose right half is washed out (one Otsu threshold over the
    # raw band put the whole bright half on one side and counted a few strokes only).
    slope = np.linspace(0.0, 1.0, crop.shape[1], dtype=np.float32)[None, :, None]
    glare = np.clip(crop * 0.25 + 200 * slope**2, 0, 255).astype(np.uint8)
    assert stroke_count(glare) >= 10
    rng = np.random.default_rng(1)
    ramp = np.linspace(60, 200, 151, dtype=np.float32)[None, :, None] * np.ones((48, 151, 3))
    for sd in (2.0, 5.0, 10.0):  # a shaded panel with sensor noise: no strokes
        panel = np.clip(ramp + rng.normal(0, sd, ramp.shape), 0, 255).astype(np.uint8)
        assert stroke_count(panel) < 4


@pytest.mark.parametrize("dtype", [np.uint8, np.int16, np.float32, np.float64])
def test_percentile_is_numpys_bit_for_bit(dtype: type) -> None:
    """The reader's percentile gives NumPy's value exactly (its call sites' dtypes and q), so a
    reading cannot change by it; sizes from 1 value, ties, extremes and q at 0 and 100."""
    rng = np.random.default_rng(5)
    for trial in range(400):
        n = int(rng.choice([1, 2, 3, 7, 48, 97, 1000, 9216]))
        shape = (n,) if trial % 2 else (1, n)
        if np.issubdtype(dtype, np.integer):
            # Many ties, or a wide range (int16 as the stroke test's flattened band, -127..383:
            # NumPy's own difference of two int16 values wraps past 32,767).
            lo, hi = (0, 4) if trial % 5 == 0 else (0, 255) if dtype == np.uint8 else (-999, 999)
            x = rng.integers(lo, hi, shape, endpoint=True).astype(dtype)
        else:
            x = (rng.normal(0, 1, shape) * 10.0 ** rng.integers(-3, 30)).astype(dtype)
        for q in (0, 5, 10, 50, 90, 95, 100, float(rng.uniform(0, 100))):
            want = float(np.percentile(x, q))
            assert percentile(x, q) == want, (dtype, n, q)
    # The cells' band is grey levels: the uint8 image gives what its float32 copy gave with a
    # tuple of q (float64 arithmetic), which is what ``cells._canvas`` computed before.
    band = rng.integers(0, 256, (28, 192)).astype(np.uint8)
    lo, hi = np.percentile(band.astype(np.float32), (5, 95))
    assert (percentile(band, 5), percentile(band, 95)) == (float(lo), float(hi))


def test_percentile_refuses_what_numpy_refuses() -> None:
    with pytest.raises(ValueError):
        percentile(np.zeros(0), 50)
    for q in (-1.0, 100.5, float("nan")):
        with pytest.raises(ValueError):
            percentile(np.arange(5), q)


@pytest.mark.parametrize("roll", [-85.0, -60.0, -45.0, -30.0, 0.0, 30.0, 45.0, 46.0, 60.0, 85.0])
def test_order_corners_puts_a_long_side_on_top_at_any_roll(roll: float) -> None:
    """TL -> TR is a long side run rightwards, whatever the roll under 90 degrees: ordering by
    x + y (the corner nearest the frame's top-left first) turned a plate rolled 45 degrees or more
    on its side, and the recogniser read a squashed column."""
    r = np.deg2rad(roll)  # image y down: a positive roll turns the plate clockwise on screen
    along, up = np.array([np.cos(r), np.sin(r)]), np.array([np.sin(r), -np.cos(r)])
    c = np.array([300.0, 200.0])
    want = np.array(
        [
            c - 110 * along + 35 * up,
            c + 110 * along + 35 * up,
            c + 110 * along - 35 * up,
            c - 110 * along - 35 * up,
        ],
        np.float32,
    )
    for perm in ([0, 1, 2, 3], [2, 0, 3, 1], [3, 2, 1, 0], [1, 3, 0, 2]):
        got = order_corners(want[perm])
        assert np.allclose(got, want, atol=1e-3), (roll, perm, got)


def test_order_corners_of_a_square_keeps_the_top_left_rule() -> None:
    """A quad whose sides are about equal has no long side: the corner nearest the frame's
    top-left comes first, clockwise from there, as before."""
    r = np.deg2rad(30.0)
    rot = np.array([[np.cos(r), -np.sin(r)], [np.sin(r), np.cos(r)]])
    square = (np.array([[-20, -20], [20, -20], [20, 20], [-20, 20]]) @ rot.T + 100).astype(
        np.float32
    )
    got = order_corners(square[[2, 3, 0, 1]])
    assert got[0].tolist() == square[np.argmin(square.sum(axis=1))].tolist()
    assert np.allclose(got, np.roll(square, -int(np.argmin(square.sum(axis=1))), axis=0))


@pytest.mark.parametrize("roll", [-70.0, -50.0, 50.0, 70.0])
def test_crop_rect_of_a_plate_rolled_past_45_degrees_is_upright(roll: float) -> None:
    from models.plates.ocr import crop_rect

    truth = _rolled_and_tilted(roll, 0.0)
    crop = crop_rect(_scene(truth), cv2.minAreaRect(truth))
    assert crop.shape[1] > 2.5 * crop.shape[0]  # lying, not standing
    want = cv2.resize(PLATE, (crop.shape[1], crop.shape[0]), interpolation=cv2.INTER_AREA)
    a = cv2.cvtColor(crop, cv2.COLOR_BGR2GRAY).astype(np.float32).ravel()
    b = cv2.cvtColor(want, cv2.COLOR_BGR2GRAY).astype(np.float32).ravel()
    assert float(np.corrcoef(a, b)[0, 1]) > 0.8
