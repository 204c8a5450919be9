"""The province's second look: positions per plate kind, wrong provinces put right, hostile crops."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from typer.testing import CliRunner

from carpulse.cli import app
from core.errors import ConfigError
from models.plates.cells import SNAPPED_GRID
from models.plates.province import PROVINCE_PATH, ProvinceCheck, province_positions
from models.plates.quad import warp_quad
from models.plates.reader import PlateReader
from models.plates.syntax import PROVINCES
from models.plates.synth import render_plate
from models.plates.train import train_province


@pytest.fixture(scope="module")
def check() -> ProvinceCheck:
    return ProvinceCheck()


@pytest.mark.parametrize(
    ("text", "positions"),
    [
        ("京A12345", [0]),
        ("粤B1234警", [0]),
        ("WJ川54303", [2]),  # armed police: WJ first
        ("WJ0112345", []),  # old armed police: a region code, no province
        ("应急闽682F", [2]),  # emergency motorcycle
        ("使123456", []),  # embassy
        ("粤Z1234港", []),  # Hong Kong entry: 粤Z only, nothing to check
        ("京A1234", []),  # invalid: no template
        ("", []),
    ],
)
def test_province_positions_follow_the_template(text: str, positions: list[int]) -> None:
    assert province_positions(text) == positions


def _crop(text: str, kind: str) -> np.ndarray:
    plate = render_plate(text, kind, np.random.default_rng(3))
    h, w = plate.shape[:2]
    quad = np.array([[0, 0], [w, 0], [w, h], [0, h]], np.float32)
    # The size a gate camera sees: about 150 px wide.
    small = np.ascontiguousarray(plate[::3, ::3])
    return warp_quad(small, quad / 3)


@pytest.mark.parametrize(
    ("truth", "kind", "wrong"),
    [
        ("琼SU188警", "police", "京SU188警"),
        ("藏EMP2C6", "ordinary", "皖EMP2C6"),
        ("WJ川54303", "armed-police", "WJ闽54303"),
        ("蒙R37G6领", "consulate", "豫R37G6领"),
    ],
)
def test_a_wrong_province_is_put_right(
    check: ProvinceCheck, truth: str, kind: str, wrong: str
) -> None:
    crop = _crop(truth, kind)
    assert check.check(crop, wrong, SNAPPED_GRID) == truth
    assert check.check(crop, truth, SNAPPED_GRID) == truth  # a right one stays


def test_only_the_province_changes_and_hostile_crops_leave_the_text(check: ProvinceCheck) -> None:
    crop = _crop("川C84962", "ordinary")
    out = check.check(crop, "京C84962", SNAPPED_GRID)
    assert out[1:] == "C84962" and out[0] in PROVINCES
    for bad in (
        np.zeros((2, 2, 3), np.uint8),
        np.full((48, 150), np.nan),
        np.zeros((48, 150, 5), np.uint8),
        "not an image",
    ):
        assert check.check(bad, "京C84962", SNAPPED_GRID) == "京C84962"  # type: ignore[arg-type]
    assert check.check(crop, "使123456", SNAPPED_GRID) == "使123456"  # no province to check


def test_the_shipped_model_exists_and_a_missing_one_is_a_config_error(tmp_path: Path) -> None:
    assert PROVINCE_PATH.exists() and PROVINCE_PATH.stat().st_size < 1_000_000
    with pytest.raises(ConfigError, match="plates train"):
        PlateReader(province_model=tmp_path / "missing.npz")


def test_province_training_is_deterministic_and_the_command_runs(tmp_path: Path) -> None:
    a = train_province(tmp_path / "a.npz", seed=7, plates=40, hidden=8, epochs=2)
    b = train_province(tmp_path / "b.npz", seed=7, plates=40, hidden=8, epochs=2, jobs=2)
    assert a["weights_sha256"] == b["weights_sha256"] and a["cells"] == b["cells"] > 30
    with pytest.raises(ConfigError, match="evaluation set"):
        train_province(tmp_path / "c.npz", seed=100, plates=4)
    out = tmp_path / "p.npz"
    args = ["plates", "train", "--province", "--out", str(out), "--scenes", "6"]
    res = CliRunner().invoke(app, [*args, "--hidden", "8", "--epochs", "1", "--json"])
    assert res.exit_code == 0, res.output
    assert out.exists() and '"model": "province"' in res.output


@pytest.mark.parametrize(
    ("truth", "kind", "read"),
    [("琼SU188警", "police", "京SU188警"), ("藏EMP2C6", "ordinary", "藏EMP2C6")],
)
def test_vouch_gives_the_province_it_is_sure_of_whatever_the_reading_said(
    check: ProvinceCheck, truth: str, kind: str, read: str
) -> None:
    assert check.vouch(_crop(truth, kind), read, SNAPPED_GRID) == truth


def test_vouch_says_nothing_without_a_province_or_a_sure_one(check: ProvinceCheck) -> None:
    crop = _crop("川C84962", "ordinary")
    assert check.vouch(crop, "使123456", SNAPPED_GRID) is None  # no province in the template
    assert check.vouch(crop, "not a plate", SNAPPED_GRID) is None
    flat = np.full((48, 150, 3), 128, np.uint8)  # nothing drawn: no province is sure
    assert check.vouch(flat, "京C84962", SNAPPED_GRID) is None
    noise = np.random.default_rng(1).integers(0, 256, (48, 150, 3), dtype=np.uint8)
    assert check.vouch(noise, "京C84962", SNAPPED_GRID) is None
    for bad in (np.zeros((2, 2, 3), np.uint8), np.full((48, 150), np.nan), "not an image"):
        assert check.vouch(bad, "京C84962", SNAPPED_GRID) is None  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("truth", "kind", "wrong", "position"),
    [("藏EMP2C6", "ordinary", "皖EMP2C6", 0), ("WJ川54303", "armed-police", "WJ闽54303", 2)],
)
def test_a_held_province_stays_however_sure_the_classifier_is(
    check: ProvinceCheck, truth: str, kind: str, wrong: str, position: int
) -> None:
    crop = _crop(truth, kind)
    assert check.check(crop, wrong, SNAPPED_GRID) == truth  # the classifier is sure
    assert check.check(crop, wrong, SNAPPED_GRID, frozenset({position})) == wrong
    assert check.check(crop, wrong, SNAPPED_GRID, frozenset({position + 1})) == truth


class _Swap:
    """A province classifier that always wants 京 where the reading is not held."""

    def __init__(self) -> None:
        self.held: list[frozenset[int]] = []

    def check(
        self, crop: np.ndarray, text: str, grid: object, keep: frozenset[int] = frozenset()
    ) -> str:
        self.held.append(keep)
        return text if 0 in keep else "京" + text[1:]

    def vouch(self, crop: np.ndarray, text: str, grid: object) -> None:
        return None


def test_the_reader_lets_the_classifier_replace_only_unsure_provinces(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    reader = PlateReader(threads=1)
    swap = _Swap()
    monkeypatch.setattr(reader, "province", swap)
    crop = _crop("藏EMP2C6", "ordinary")
    rect = ((100.0, 50.0), (150.0, 48.0), 0.0)
    read, _ = reader._recognise([(0, crop, crop)], [rect], "colour")[0]
    # A clean plate: its province read surely, so the classifier's 京 is not taken.
    assert read.char_probs and read.char_probs[0] >= reader.province_keep
    assert read.text == "藏EMP2C6" and swap.held[-1] == frozenset({0})
    reader.province_keep = 1.01  # off: the classifier has the last word, as before
    read, _ = reader._recognise([(0, crop, crop)], [rect], "colour")[0]
    assert read.text == "京EMP2C6" and swap.held[-1] == frozenset()
    assert read.char_probs == ()  # the classifier's 京 was read by no recogniser
    assert "char_probs" not in read.as_dict()  # events carry what they carried


@pytest.mark.parametrize("bad", [-0.1, 1.5, float("nan")])
def test_province_keep_out_of_range_is_a_config_error(bad: float) -> None:
    with pytest.raises(ConfigError, match="province_keep"):
        PlateReader(threads=1, province_keep=bad)
