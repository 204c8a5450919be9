"""The plate-font cell recogniser: every GA 36 kind, hostile crops and images, the train command."""

from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np
import pytest
from typer.testing import CliRunner

from carpulse.cli import app
from core.errors import ConfigError
from models.plates.cells import CLASSES, MODEL_PATH, CellReader, cell_centres, cell_features
from models.plates.quad import warp_quad
from models.plates.syntax import KINDS, kind_of
from models.plates.synth import random_text, render_plate
from models.plates.train import train, weights_sha256

KIND_NAMES = [k for k, _, _ in KINDS]


@pytest.fixture(scope="module")
def reader() -> CellReader:
    return CellReader()


def _photo(text: str, kind: str, angle: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """A rendered plate rotated by ``angle`` degrees on a grey wall, and its four corners."""
    plate = render_plate(text, kind, np.random.default_rng(seed))
    h, w = plate.shape[:2]
    scene = np.full((h * 3, w * 2, 3), 90, np.uint8)
    x0, y0 = w // 2, h
    scene[y0 : y0 + h, x0 : x0 + w] = plate
    quad = np.array([[x0, y0], [x0 + w, y0], [x0 + w, y0 + h], [x0, y0 + h]], np.float32)
    m = cv2.getRotationMatrix2D((x0 + w / 2, y0 + h / 2), angle, 0.5)
    scene = cv2.warpAffine(scene, m, (scene.shape[1], scene.shape[0]), flags=cv2.INTER_AREA)
    quad = (np.c_[quad, np.ones(4)] @ m.T).astype(np.float32)
    return scene, quad


def test_the_shipped_model_is_small_and_matches_the_classes() -> None:
    assert MODEL_PATH.exists() and MODEL_PATH.stat().st_size < 2_000_000
    assert len(CLASSES) == len(set(CLASSES)) and "港" in CLASSES and "W" in CLASSES


@pytest.mark.parametrize("kind", KIND_NAMES)
def test_every_kind_is_read_from_a_deskewed_rendered_plate(reader: CellReader, kind: str) -> None:
    rng = np.random.default_rng(KIND_NAMES.index(kind) + 40)
    hits = 0
    for i in range(4):
        text = random_text(kind, rng)
        scene, quad = _photo(text, kind, angle=(-12, -4, 5, 11)[i], seed=i)
        got = reader.read(warp_quad(scene, quad))
        assert got is not None and kind_of(got.text) is not None  # always a valid number
        hits += got.text == text
    assert hits >= 3, kind


def test_cell_layout_is_inside_the_crop_and_ordered() -> None:
    for n in (7, 8, 9):
        centres, pitch = cell_centres(n)
        assert len(centres) == n and np.all(np.diff(centres) > 0)
        assert centres[0] - pitch / 2 > 0 and centres[-1] + pitch / 2 < 1
    assert cell_features(np.zeros((48, 150, 3), np.uint8), 7) is not None


HOSTILE = {
    "empty": np.zeros((0, 0, 3), np.uint8),
    "one_pixel": np.zeros((1, 1, 3), np.uint8),
    "thin": np.zeros((2, 500, 3), np.uint8),
    "garbage": np.random.default_rng(0).integers(0, 256, (48, 160, 3), dtype=np.uint8),
    "float_nan": np.full((48, 160, 3), np.nan),
    "float_huge": np.full((48, 160, 3), 1e300),
    "int32": np.random.default_rng(1).integers(-5000, 5000, (48, 160, 3), dtype=np.int32),
    "bool": np.ones((48, 160, 3), bool),
    "grey": np.full((48, 160), 200, np.uint8),
    "bgra": np.zeros((48, 160, 4), np.uint8),
    "five_channels": np.zeros((48, 160, 5), np.uint8),
    "four_dims": np.zeros((2, 48, 160, 3), np.uint8),
}


@pytest.mark.parametrize("name", list(HOSTILE))
def test_hostile_crops_give_none_or_a_valid_reading(reader: CellReader, name: str) -> None:
    got = reader.read(HOSTILE[name])
    assert got is None or (kind_of(got.text) is not None and 0.0 <= got.confidence <= 1.0)
    assert reader.read("not an image") is None  # type: ignore[arg-type]


@pytest.mark.parametrize("name", [*HOSTILE, "huge"])
def test_the_whole_reader_survives_hostile_images(name: str) -> None:
    from models.plates.reader import PlateReader

    image = np.zeros((4000, 6000, 3), np.uint8) if name == "huge" else HOSTILE[name]
    reads = PlateReader().read(image)
    assert isinstance(reads, list) and all(kind_of(r.text) is not None for r in reads)
    if name in ("empty", "one_pixel", "huge", "float_nan", "bool", "five_channels", "four_dims"):
        assert reads == []


def test_a_model_file_of_another_shape_is_refused(tmp_path: Path) -> None:
    bad = tmp_path / "bad.npz"
    np.savez(bad, w1=np.zeros((10, 4)), b1=np.zeros(4), w2=np.zeros((4, 3)), b2=np.zeros(3))
    with pytest.raises(ConfigError, match="plate cell model"):
        CellReader(bad)
    with pytest.raises(ConfigError, match="plates train"):
        CellReader(tmp_path / "missing.npz")


def test_training_is_deterministic_and_the_seed_matters(tmp_path: Path) -> None:
    a = train(tmp_path / "a.npz", seed=7, scenes=5, hidden=8, epochs=2)
    b = train(tmp_path / "b.npz", seed=7, scenes=5, hidden=8, epochs=2)
    c = train(tmp_path / "c.npz", seed=8, scenes=5, hidden=8, epochs=2)
    assert a["weights_sha256"] == b["weights_sha256"] != c["weights_sha256"]
    assert a["cells"] > 0 and a["scenes"] == 5
    with np.load(tmp_path / "a.npz") as z:
        assert weights_sha256({k: z[k] for k in ("w1", "b1", "w2", "b2")}) == a["weights_sha256"]
    CellReader(tmp_path / "a.npz")  # a tiny model still loads and matches the classes
    with pytest.raises(ConfigError, match="evaluation set"):
        train(tmp_path / "d.npz", seed=900, scenes=5, hidden=8, epochs=2)


def test_train_command(tmp_path: Path) -> None:
    out = tmp_path / "m.npz"
    args = ["plates", "train", "--out", str(out), "--scenes", "4", "--hidden", "8", "--epochs", "1"]
    res = CliRunner().invoke(app, [*args, "--json"])
    assert res.exit_code == 0, res.output
    assert out.exists() and '"weights_sha256"' in res.output
    bad = CliRunner().invoke(app, [*args[:-2], "--epochs", "0"])
    assert bad.exit_code != 0 and "--epochs" in bad.output + str(bad.exception)


def test_many_fonts_draw_the_same_plates_in_other_glyphs(tmp_path: Path) -> None:
    from models.plates.province import make_province_cells
    from models.plates.synth import make_sample
    from models.plates.train import make_cells

    before = make_sample(3, 0).image
    xs, ys = make_province_cells(6100, 0, 40)
    xm, ym = make_province_cells(6100, 0, 40, many_fonts=True)
    assert np.array_equal(ys, ym) and len(ys) > 20  # the same plates and provinces
    assert not np.array_equal(xs, xm)  # most drawn in another font
    cs, cy = make_cells(5100, 12)
    cm, cym = make_cells(5100, 12, many_fonts=True)
    assert np.array_equal(cy, cym) and not np.array_equal(cs, cm)
    assert np.array_equal(make_sample(3, 0).image, before)  # the default font is back
    res = CliRunner().invoke(
        app,
        ["plates", "train", "--province", "--many-fonts", "--scenes", "30", "--hidden", "8",
         "--epochs", "1", "--seed", "6100", "--out", str(tmp_path / "p.npz"), "--json"],
    )  # fmt: skip
    assert res.exit_code == 0, res.output
    assert '"many_fonts": true' in res.output


def test_a_synthetic_sample_knows_its_plate_corners() -> None:
    from models.plates.synth import make_sample

    found = 0
    for i in range(12):
        s = make_sample(77, i)
        if not s.text:
            assert s.quad is None
            continue
        assert s.quad is not None and s.quad.shape == (4, 2)
        h, w = s.image.shape[:2]
        centre = s.quad.mean(axis=0)
        assert 0 <= centre[0] <= w and 0 <= centre[1] <= h
        # The plate's own pixels are inside the quad: a warp of it is not flat.
        assert float(warp_quad(s.image, s.quad).std()) > 10
        found += 1
    assert found >= 8


def test_the_reader_reads_a_rendered_plate_with_and_without_the_cells() -> None:
    from models.plates.reader import PlateReader

    scene, _ = _photo("苏E12345", "ordinary", angle=6, seed=3)
    both, ocr_only = PlateReader(cell_model=MODEL_PATH), PlateReader()
    assert both.cells is not None and ocr_only.cells is None  # off unless asked for
    assert both.cell_min == both.min_confidence == 0.5
    assert [r.text for r in both.read(scene)] == ["苏E12345"]
    assert [r.text for r in ocr_only.read(scene)] == ["苏E12345"]
    strict = PlateReader(min_confidence=0.999999, cell_accept=1.1, cell_model=MODEL_PATH)
    assert strict.read(scene) == []  # no reading is that sure: the bar applies to the cells too


def test_a_cell_reading_unsure_of_its_province_gives_way_to_pp_ocr() -> None:
    """Under a font the cells never saw they misread the province at 0.9-0.99 (BENCHMARKS.md): such a
    reading neither ends the crop nor beats PP-OCR's valid reading; with the rule off it wins."""
    from models.plates.cells import CellReading
    from models.plates.reader import PlateReader

    scene, _ = _photo("苏E12345", "ordinary", angle=6, seed=3)

    class WrongProvince:
        def read(self, crop: np.ndarray, grid: object = None) -> CellReading:
            return CellReading("粤E12345", (0.95, 1.0, 1.0, 1.0, 1.0, 1.0, 1.0), -0.01)

    # (the province classifier off: it would put the right province back in either way)
    guarded = PlateReader(province_model=None)
    trusting = PlateReader(province_model=None, cell_first_accept=0.0)
    assert guarded.cell_first_accept == 0.999
    guarded.cells = trusting.cells = WrongProvince()  # type: ignore[assignment]
    assert [r.text for r in guarded.read(scene)] == ["苏E12345"]
    assert [r.text for r in trusting.read(scene)] == ["粤E12345"]


def test_the_cells_are_off_unless_the_gate_or_the_eval_asks(tmp_path: Path) -> None:
    """Off by default (the line model reads what they read, 2.6 ms a crop less); ``[gate]
    plate_cells`` and ``carpulse eval plates --cells`` turn them on, and the crops are still
    snapped for the line model and the province classifier without them."""
    from carpulse.evals.plates import main
    from edge.gate import GateConfig, GateLoop
    from models.plates.reader import PlateReader
    from models.plates.synth import write_set

    off = GateLoop(GateConfig(source=str(tmp_path), presence=False), lambda *e: None)
    on = GateLoop(
        GateConfig(source=str(tmp_path), plate_cells=True, presence=False), lambda *e: None
    )
    assert off.reader.cells is None and on.reader.cells is not None
    assert off.reader._snapped_readers
    from pydantic import ValidationError

    for bad in ("maybe", 2, float("nan"), [1]):
        with pytest.raises(ValidationError):
            GateConfig(source=str(tmp_path), plate_cells=bad)  # type: ignore[arg-type]
    bare = PlateReader(line_model=None, province_model=None)
    assert not bare._snapped_readers  # no reader of a snapped crop: no snap is made
    bare.cells = CellReader()
    assert bare._snapped_readers  # models given later count too
    write_set(tmp_path / "set", 3, seed=32)
    calls: list[int] = []
    real = CellReader.read

    def counted(self, crop, grid=None):  # type: ignore[no-untyped-def]
        calls.append(1)
        return real(self, crop, grid)

    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(CellReader, "read", counted)
        res = main(["--images", str(tmp_path / "set"), "--no-latency", "--no-baseline", "--cells"])
        assert res["reader"]["cells"] is True and calls
        calls.clear()
        res = main(["--images", str(tmp_path / "set"), "--no-latency", "--no-baseline"])
        assert res["reader"]["cells"] is False and not calls
