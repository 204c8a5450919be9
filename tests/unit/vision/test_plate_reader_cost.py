"""What the plate reader spends its recogniser runs on: one crop per run, a two-row layout only
when the crop does not read as one row."""

from __future__ import annotations

import cv2
import numpy as np
import pytest

from models.plates.synth import render_plate

RECT = ((100.0, 50.0), (200.0, 80.0), 0.0)


@pytest.fixture(scope="module")
def reader():  # type: ignore[no-untyped-def]
    from models.plates.reader import PlateReader

    return PlateReader(threads=1)


@pytest.fixture
def runs(reader, monkeypatch: pytest.MonkeyPatch) -> list[list[tuple[int, int]]]:  # type: ignore[no-untyped-def]
    """The crop shapes of each ``recognise`` call the reader makes."""
    calls: list[list[tuple[int, int]]] = []
    real = reader.ocr.recognise

    def counted(crops: list[np.ndarray]) -> list[np.ndarray]:
        calls.append([c.shape[:2] for c in crops])
        return real(crops)

    monkeypatch.setattr(reader.ocr, "recognise", counted)
    return calls


def _two_rows(plate: np.ndarray) -> np.ndarray:
    """A one-row plate laid out as GA 36's two-row plates: its first two characters centred above."""
    h, w = plate.shape[:2]
    top, bottom = plate[:, : int(w * 0.30)], plate[:, int(w * 0.30) :]
    width = bottom.shape[1]
    canvas = np.full((int(h * 2.2), width, 3), plate[2, 2], np.uint8)
    small = cv2.resize(top, (width // 2, int(h * 0.75)))
    y0 = int(0.05 * canvas.shape[0])
    canvas[y0 : y0 + small.shape[0], width // 4 : width // 4 + small.shape[1]] = small
    big = cv2.resize(bottom, (width, int(h * 1.2)))
    canvas[canvas.shape[0] - big.shape[0] - 2 : canvas.shape[0] - 2] = big
    return canvas


def test_each_crop_is_recognised_at_its_own_width(reader) -> None:  # type: ignore[no-untyped-def]
    plate = render_plate("苏E9E0A5", "ordinary", np.random.default_rng(1))
    narrow = cv2.resize(plate, (150, 48), interpolation=cv2.INTER_AREA)
    wide = cv2.resize(plate, (400, 48), interpolation=cv2.INTER_AREA)
    together = reader.ocr.recognise([narrow, wide])
    alone = reader.ocr.recognise([narrow])[0]
    # Padded to the widest crop of a batch, the narrow crop had 50 frames instead of its own 19
    # and other probabilities.
    assert together[0].shape == alone.shape and alone.shape[0] < together[1].shape[0]
    np.testing.assert_allclose(together[0], alone, atol=1e-5)


def test_a_two_row_shaped_crop_that_reads_as_one_row_is_not_laid_out_again(reader, runs) -> None:  # type: ignore[no-untyped-def]
    plate = render_plate("苏E9E0A5", "ordinary", np.random.default_rng(1))
    squeezed = cv2.resize(plate, (322, 140), interpolation=cv2.INTER_AREA)  # aspect 2.3: "double"
    got = reader._recognise([(0, squeezed, None)], [RECT], "colour")
    assert got[0][0].text == "苏E9E0A5"
    assert runs == [[(140, 322)]]  # one run of the crop itself, no two-row layout beside it


def test_a_two_row_plate_is_read_from_its_one_row_layout(reader, runs) -> None:  # type: ignore[no-untyped-def]
    crop = _two_rows(render_plate("沪AN924挂", "trailer", np.random.default_rng(1)))
    got = reader._recognise([(0, crop, None)], [RECT], "colour")
    assert got[0][0].text == "沪AN924挂"
    # The crop as one row first (nothing valid), then the rows side by side, each in its own run.
    assert len(runs) == 2 and all(len(r) == 1 for r in runs)
    assert runs[0][0] == crop.shape[:2] and runs[1][0][1] > 2 * runs[1][0][0]


def test_a_two_row_shaped_crop_with_little_text_is_not_laid_out(reader, runs) -> None:  # type: ignore[no-untyped-def]
    """A squarish blob of plate colour (a sign, a sticker, a lamp) that PP-OCR reads as under three
    characters (here "HM", strokes enough to be read) is not laid out as two rows (a second run at
    twice the width); a two-row plate's five-character bottom row is read even squeezed, so it
    still is (the two-row test above)."""
    rng = np.random.default_rng(8)
    blob = np.full((120, 200, 3), (40, 160, 230), np.uint8)  # yellow, aspect 1.7: "double"
    cv2.putText(blob, "HM", (20, 90), cv2.FONT_HERSHEY_SIMPLEX, 2.5, (20, 20, 20), 6)
    blob = cv2.add(blob, rng.integers(0, 20, blob.shape, np.uint8))
    got = reader._recognise([(0, blob, None)], [RECT], "colour")
    assert got == {} and len(runs) == 1 and runs[0][0] == blob.shape[:2]
    # ``split_min_seen = 0``: laid out whatever the first run saw, as before.
    runs.clear()
    reader.split_min_seen = 0
    try:
        assert reader._recognise([(0, blob, None)], [RECT], "colour") == {}
    finally:
        reader.split_min_seen = 3
    assert len(runs) == 2 and runs[1][0][1] > 2 * runs[1][0][0]


@pytest.mark.parametrize("bad", [-1, 17])
def test_split_min_seen_out_of_range_is_a_config_error(bad: int) -> None:
    from core.errors import ConfigError
    from models.plates.reader import PlateReader

    with pytest.raises(ConfigError, match="split_min_seen"):
        PlateReader(split_min_seen=bad)


def test_a_one_row_crop_of_two_row_shape_goes_to_the_plate_models_not_the_layout(
    reader, runs
) -> None:  # type: ignore[no-untyped-def]
    """A blue colour candidate (``one_row``): a squeezed plate in a loose box is read by the cells
    and the line model as one row; as a two-row shape it skipped them and went to PP-OCR."""
    plate = render_plate("苏E9E0A5", "ordinary", np.random.default_rng(1))
    squeezed = cv2.resize(plate, (322, 140), interpolation=cv2.INTER_AREA)  # aspect 2.3
    got = reader._recognise([(0, squeezed, None)], [RECT], "colour", one_row=True)
    assert got[0][0].text == "苏E9E0A5" and runs == []  # no PP-OCR run at all
    got = reader._recognise([(0, squeezed, None)], [RECT], "colour", one_row=False)
    assert got[0][0].text == "苏E9E0A5" and len(runs) == 1


def test_a_blue_candidate_is_read_as_one_row_unless_shaped_as_a_motorcycle_plate(
    reader, monkeypatch: pytest.MonkeyPatch
) -> None:  # type: ignore[no-untyped-def]
    from models.plates import reader as reader_module
    from models.plates.locate import Candidate

    seen: list[bool] = []
    cands = [Candidate(RECT, colour, 0.9, 100.0, 1.0) for colour in ("blue", "yellow")]
    # A light motorcycle's plate: blue, two rows, 220 x 140 mm (a box of 1.6:1, here rolled).
    cands.append(Candidate(((100.0, 50.0), (70.0, 110.0), 80.0), "blue", 0.9, 100.0, 1.0))
    monkeypatch.setattr(reader_module, "colour_candidates", lambda image: list(cands))
    monkeypatch.setattr(reader_module, "edge_candidates", lambda image, width: [])
    monkeypatch.setattr(reader, "detector_sides", ())

    def fake(image, rects, stage, guesses=None, ocr=True, one_row=False):  # type: ignore[no-untyped-def]
        seen.append(one_row)
        return []

    monkeypatch.setattr(reader, "_read_crops", fake)
    reader._search(np.zeros((100, 200, 3), np.uint8))
    # Yellow may be a two-row plate (lorries, motorcycles); blue only in a motorcycle's shape.
    assert seen == [True, False, False]
    monkeypatch.setattr(reader, "blue_one_row", False)
    seen.clear()
    reader._search(np.zeros((100, 200, 3), np.uint8))
    assert seen == [False, False, False]


def test_the_cells_pick_per_template_is_the_plain_loop_even_with_ties(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    from models.plates import cells as c

    cells = c.CellReader()
    crop = render_plate("苏E9E0A5", "ordinary", np.random.default_rng(1))
    rng = np.random.default_rng(3)
    seen: list[np.ndarray] = []

    def hostile(x: np.ndarray) -> np.ndarray:
        p = rng.random((len(x), len(c.CLASSES))).astype(np.float32) ** 8
        p[rng.random(p.shape) < 0.4] = 0.0  # clipped to the same log-probability: ties
        p /= p.sum(axis=1, keepdims=True)
        seen.append(p)
        return p

    monkeypatch.setattr(cells.model, "probs", hostile)
    for _ in range(5):
        got = cells.read(crop)
        logp = np.log(np.maximum(seen[-1], 1e-12))
        blocks: dict[int, list[np.ndarray]] = {}
        start = 0
        for n in c.LENGTHS:  # the layouts in the reader's order: length, stretch, shift
            for _ in range(len(cells.stretches) * len(cells.shifts)):
                blocks.setdefault(n, []).append(logp[start : start + n])
                start += n
        want: tuple[str, float] | None = None
        for allowed in c._ALLOWED:
            for lp in blocks[len(allowed)]:
                picks = [int(a[np.argmax(lp[p, a])]) for p, a in enumerate(allowed)]
                score = float(lp[np.arange(len(picks)), picks].mean())
                if want is None or score > want[1]:
                    want = ("".join(c.CLASSES[i] for i in picks), score)
        assert got is not None and (got.text, got.score) == want


def _fake_search(monkeypatch: pytest.MonkeyPatch, reader, confidences: list[float]):  # type: ignore[no-untyped-def]
    """Three colour candidates whose crops read ``AAA<i>`` at ``confidences[i]``; no other stage
    finds anything. Returns the list of candidates read."""
    from models.plates import reader as mod
    from models.plates.locate import Candidate
    from models.plates.reader import PlateRead

    cands = [Candidate(((10.0 * i, 5.0), (40.0, 12.0), 0.0), "blue", 1, 1, 1) for i in range(3)]
    monkeypatch.setattr(mod, "colour_candidates", lambda image: cands)
    monkeypatch.setattr(mod, "edge_candidates", lambda image, width: [])
    monkeypatch.setattr(reader.ocr, "detect", lambda image, side: [])
    seen: list[int] = []

    def read_crops(image, rects, stage, guesses=None, ocr=True, one_row=False):  # type: ignore[no-untyped-def]
        if not rects:  # the text detector found no box
            return []
        i = int(rects[0][0][0] // 10)
        seen.append(i)
        conf = confidences[i]
        return [] if conf < 0 else [PlateRead(f"苏E1234{i}", conf, rects[0], "", stage, "")]

    monkeypatch.setattr(reader, "_read_crops", read_crops)
    return seen


@pytest.mark.parametrize(
    ("settle", "confidences", "want", "read"),
    [
        (0.9, [0.6, 0.95, 0.99], "苏E12341", [0, 1]),  # the weak first reading does not end it
        (0.9, [0.6, -1, 0.7], "苏E12342", [0, 1, 2]),  # nothing settles: the most confident
        (0.9, [0.7, -1, 0.7], "苏E12340", [0, 1, 2]),  # a tie keeps the earlier
        (0.9, [0.92, 0.99, 0.99], "苏E12340", [0]),  # a sure first reading ends it
        (0.0, [0.6, 0.95, 0.99], "苏E12340", [0]),  # 0: the first valid reading, as before
        (0.9, [-1, -1, -1], None, [0, 1, 2]),
    ],
)
def test_a_reading_below_settle_does_not_end_the_search(
    reader, monkeypatch: pytest.MonkeyPatch, settle: float, confidences, want, read
) -> None:  # type: ignore[no-untyped-def]
    seen = _fake_search(monkeypatch, reader, confidences)
    monkeypatch.setattr(reader, "settle", settle)
    got = reader.read(np.full((60, 200, 3), 90, np.uint8))
    assert [r.text for r in got] == ([want] if want else [])
    assert seen == read


@pytest.mark.parametrize("settle", [-0.1, 1.5, float("nan")])
def test_a_settle_outside_zero_to_one_is_refused(settle: float) -> None:
    from core.errors import ConfigError
    from models.plates.reader import PlateReader

    with pytest.raises(ConfigError, match="settle"):
        PlateReader(settle=settle)


@pytest.mark.parametrize("name", ["ccpd_demo_4.jpg", "ccpd_fn_fn4.jpg"])
def test_small_colour_blobs_are_read_after_the_plate(name: str, runs, reader) -> None:  # type: ignore[no-untyped-def]
    """A small green blob ranked above the plate by the colour locator (a sticker, a sign) no
    longer costs PP-OCR runs before the plate is read: the same plate, fewer runs."""
    from models.plates.locate import colour_candidates
    from models.plates.reader import SMALL_CANDIDATE
    from tests.conftest import require_data

    img = cv2.imread(str(require_data("plates") / name))
    first = colour_candidates(img)[0]
    assert max(first.rect[1]) < SMALL_CANDIDATE  # the locator's top pick is the small blob
    reader.small_last = False
    try:
        by_score = [r.text for r in reader.read(img)]
        n_by_score = len(runs)
        runs.clear()
        reader.small_last = True
        small_last = [r.text for r in reader.read(img)]
    finally:
        reader.small_last = True
    assert small_last == by_score and len(small_last) == 1
    assert len(runs) < n_by_score, (runs, n_by_score)


@pytest.mark.parametrize(
    ("shape", "size"),
    [((720, 1160), (320, 199)), ((1160, 720), (320, 516)), ((651, 1029), (480, 304)),
     ((37, 1000), (27, 2)), ((20, 30), (64, 40)), ((16, 16), (16, 16)), ((40, 40), (0, 0))],
)  # fmt: skip
def test_shrink_is_the_area_resize_at_a_whole_factor_cost(
    shape: tuple[int, int], size: tuple[int, int]
) -> None:
    """The locators' and the detector's downscale: the requested size, close to OpenCV's area
    resize (what it replaced, 4 ms on a 1160 x 720 frame), any ratio, up or down."""
    from models.plates.locate import shrink

    rng = np.random.default_rng(5)
    base = cv2.resize(rng.integers(0, 256, (shape[0] // 8 + 1, shape[1] // 8 + 1, 3), np.uint8),
                      shape[::-1], interpolation=cv2.INTER_CUBIC)  # fmt: skip
    out = shrink(base, size)
    size = (max(1, size[0]), max(1, size[1]))  # a zero side gives one pixel, not an OpenCV error
    assert out.shape == (size[1], size[0], 3) and out.dtype == np.uint8
    ref = cv2.resize(base, size, interpolation=cv2.INTER_AREA)
    assert float(np.abs(out.astype(float) - ref.astype(float)).mean()) < 3.0


def test_a_frame_is_block_averaged_once_per_factor_within_a_read(
    reader, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A 2560 px frame is shrunk for the colour and edge locators and each detector pass (8
    shrinks, 2 block sizes): inside ``shrink_memo`` each block size is averaged once, with the
    same pixels as without it; outside it, nothing is kept (a camera buffer refilled in place is
    never read stale)."""
    from models.plates import locate

    rng = np.random.default_rng(11)
    frame = cv2.resize(rng.integers(0, 256, (90, 160, 3), np.uint8), (2560, 1440),
                       interpolation=cv2.INTER_CUBIC)  # fmt: skip
    plain = [locate.shrink(frame, s) for s in ((640, 360), (640, 352), (320, 192))]
    areas: list[tuple[int, ...]] = []
    real = cv2.resize

    def counted(src, dsize, *args, **kwargs):  # type: ignore[no-untyped-def]
        if kwargs.get("interpolation") == cv2.INTER_AREA:
            areas.append(src.shape)
        return real(src, dsize, *args, **kwargs)

    monkeypatch.setattr(locate.cv2, "resize", counted)
    with locate.shrink_memo():
        memo = [locate.shrink(frame, s) for s in ((640, 360), (640, 352), (320, 192))]
        again = locate.shrink(frame, (640, 360))
        frame[:] = 0  # changed inside the memo: the memo's promise is broken, it reads stale
        stale = locate.shrink(frame, (640, 360))
    assert len(areas) == 2  # factors (4, 4) and (8, 7)
    assert all(np.array_equal(a, b) for a, b in zip(plain, memo, strict=True))
    assert np.array_equal(again, memo[0]) and np.array_equal(stale, memo[0])
    areas.clear()
    fresh = locate.shrink(frame, (640, 360))  # outside: computed again, from the new pixels
    assert len(areas) == 1 and not fresh.any()
    # Another array of the same shape is not taken for the frame.
    with locate.shrink_memo():
        first = locate.shrink(np.full_like(frame, 200), (640, 360))
        second = locate.shrink(np.full_like(frame, 50), (640, 360))
    assert int(first[0, 0, 0]) == 200 and int(second[0, 0, 0]) == 50
    # The reader reads a large frame inside one memo: each block size averaged once (a lit frame:
    # a dark one is searched again brightened, another frame).
    lit = cv2.resize(rng.integers(60, 200, (90, 160, 3), np.uint8), (2560, 1440),
                     interpolation=cv2.INTER_CUBIC)  # fmt: skip
    areas.clear()
    reader.read(lit)
    assert len(areas) >= 2 and len(areas) == len(set(areas)), areas


def test_step_times_are_kept_only_while_set(reader) -> None:  # type: ignore[no-untyped-def]
    """``PlateReader.timings``: off by default (nothing kept), on for the frames read while set;
    a frame with no plate-like colour still times its locators and the text detector."""
    from models.plates.reader import StepTimes

    rng = np.random.default_rng(3)
    frame = cv2.resize(rng.integers(60, 200, (40, 60, 3), np.uint8), (640, 400))
    assert reader.timings is None
    reader.read(frame)
    steps = StepTimes()
    reader.timings = steps
    try:
        reader.read(frame)
        reader.read(frame)
    finally:
        reader.timings = None
    reader.read(frame)  # not counted
    out = steps.per_frame_ms()
    assert steps.calls["frame"] == 2
    assert out["colour locator"]["calls"] == 1.0 and out["text detector"]["calls"] >= 1.0
    parts = sum(v["ms"] for k, v in out.items() if k != "frame")
    assert parts == pytest.approx(out["frame"]["ms"], rel=1e-3, abs=1e-3)
    assert StepTimes().per_frame_ms()["frame"] == {"ms": 0.0, "calls": 1.0, "share": 1.0}
