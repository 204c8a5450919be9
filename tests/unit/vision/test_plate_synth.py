"""Synthetic gate photos: deterministic from (seed, index), every plate kind, labels the eval reads."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import numpy as np
import pytest
from typer.testing import CliRunner

from carpulse.cli import app
from carpulse.evals.plates import load_labels
from core.errors import ConfigError
from models.plates.syntax import KINDS, kind_of
from models.plates.synth import (
    TWO_ROW,
    make_sample,
    random_text,
    render_plate,
    render_two_row,
    write_set,
)
from models.plates.synth import main as synth_main


def _sha(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def test_same_seed_same_image_different_seed_different_image() -> None:
    a, b = make_sample(3, 5), make_sample(3, 5)
    assert np.array_equal(a.image, b.image) and a.text == b.text and a.conditions == b.conditions
    c = make_sample(4, 5)
    assert a.image.shape != c.image.shape or not np.array_equal(a.image, c.image)


def test_image_i_does_not_depend_on_the_set_size(tmp_path: Path) -> None:
    write_set(tmp_path / "small", 3, seed=21)
    write_set(tmp_path / "large", 5, seed=21)
    for i in range(3):
        name = f"synth_s21_{i:05d}.jpg"
        assert _sha(tmp_path / "small" / name) == _sha(tmp_path / "large" / name)
    small = json.loads((tmp_path / "small" / "labels.json").read_text(encoding="utf-8"))
    large = json.loads((tmp_path / "large" / "labels.json").read_text(encoding="utf-8"))
    assert all(small[k] == large[k] for k in small)


@pytest.mark.parametrize("kind", [k for k, _, _ in KINDS])
def test_every_kind_renders_a_valid_number(kind: str) -> None:
    rng = np.random.default_rng(7)
    for _ in range(20):
        text = random_text(kind, rng)
        assert kind_of(text) == kind, text
    plate = render_plate(text, kind, rng)
    assert plate.shape == (140, 440 if len(text) <= 7 else 480, 3) and plate.dtype == np.uint8
    # Characters are drawn: the plate is not one flat colour.
    assert float(plate.std()) > 20


def test_plate_colours_follow_the_kind() -> None:
    blue = render_plate("京A12345", "ordinary").reshape(-1, 3).mean(axis=0)  # BGR
    assert blue[0] > blue[2] + 60
    black = render_plate("沪A1234领", "consulate").mean()
    white = render_plate("鄂F8888警", "police").mean()
    assert black < 90 < 150 < white


def test_labels_are_in_the_eval_format(tmp_path: Path) -> None:
    summary = write_set(tmp_path, 8, seed=5)
    labels = load_labels(tmp_path / "labels.json")
    assert summary["images"] == 8 and len(labels) == 8
    for name, plates in labels.items():
        assert (tmp_path / name).stat().st_size > 1000
        for p in plates:
            assert kind_of(p["text"]) == p["kind"] and p["confidence"] == "high"


def test_bad_sizes_are_refused(tmp_path: Path) -> None:
    with pytest.raises(ConfigError):
        write_set(tmp_path, 0, seed=1)


def test_cli_writes_a_set(tmp_path: Path) -> None:
    out = tmp_path / "set"
    res = CliRunner().invoke(
        app, ["plates", "synth", "--out", str(out), "--n", "2", "--seed", "9", "--json"]
    )
    assert res.exit_code == 0, res.output
    doc = json.loads(res.output)
    assert doc["images"] == 2 and doc["seed"] == 9
    assert sorted(p.name for p in out.iterdir()) == [
        "labels.json",
        "synth_s9_00000.jpg",
        "synth_s9_00001.jpg",
    ]


def test_a_set_in_another_font_has_the_same_plates_in_other_glyphs(tmp_path: Path) -> None:
    serif = Path("/usr/share/fonts/opentype/noto/NotoSerifCJK-Bold.ttc")
    if not serif.exists():
        pytest.skip("Noto Serif CJK (Debian fonts-noto-cjk) is not installed")
    from models.plates.synth import make_sample, use_font

    plain = make_sample(4, 1, kinds=("police",))
    use_font(serif)
    try:
        other = make_sample(4, 1, kinds=("police",))
    finally:
        use_font(None)
    again = make_sample(4, 1, kinds=("police",))
    assert other.text == plain.text and np.array_equal(again.image, plain.image)
    assert not np.array_equal(other.image, plain.image)
    with pytest.raises(ConfigError, match="does not exist"):
        use_font(tmp_path / "none.ttf")
    out = synth_main(
        ["--out", str(tmp_path / "s"), "--n", "3", "--seed", "5", "--font", str(serif)]
    )
    assert (
        out["font"] == str(serif) and len(json.loads((tmp_path / "s/labels.json").read_text())) == 3
    )
    with pytest.raises(ConfigError, match="--latin-font needs --font"):
        synth_main(["--out", str(tmp_path / "t"), "--latin-font", str(serif)])


# Two-row plates (GA 36: lorries' and buses' rear plates, trailers, motorcycles).


def _ink_rows(plate: np.ndarray) -> np.ndarray:
    """Share of each row's pixels far from the plate's background colour (the characters)."""
    bg = np.median(plate.reshape(-1, 3), axis=0)
    far = np.abs(plate.astype(np.int16) - bg.astype(np.int16)).max(axis=2) > 80
    return far.mean(axis=1)


@pytest.mark.parametrize(("kind", "colour", "size"), TWO_ROW)
def test_two_row_plates_put_two_small_characters_over_the_rest(
    kind: str, colour: str, size: tuple[int, int]
) -> None:
    rng = np.random.default_rng(3)
    text = random_text(kind, rng)
    plate = render_two_row(text, kind, colour, size)
    assert plate.shape == (size[1], size[0], 3) and plate.dtype == np.uint8
    rows = _ink_rows(plate)
    h = size[1]
    # Ink in both rows, a clear gap between them, and the bottom row's characters taller.
    top = np.nonzero(rows[int(0.05 * h) : int(0.40 * h)] > 0.05)[0]
    bottom = np.nonzero(rows[int(0.40 * h) : int(0.95 * h)] > 0.05)[0]
    assert top.size > 0.15 * h and bottom.size > top.size * 1.4
    assert rows[int(0.37 * h) : int(0.41 * h)].max() < 0.05
    # The top row is centred and narrower than the bottom one.
    cols = np.abs(plate.astype(np.int16) - plate[h // 2, 2].astype(np.int16)).max(axis=2) > 80
    top_cols = np.nonzero(cols[int(0.08 * h) : int(0.33 * h), 10:-10].any(axis=0))[0] + 10
    bottom_cols = np.nonzero(cols[int(0.45 * h) : int(0.9 * h), 10:-10].any(axis=0))[0] + 10
    assert top_cols.max() - top_cols.min() < 0.6 * (bottom_cols.max() - bottom_cols.min())
    assert abs((top_cols.max() + top_cols.min()) / 2 - size[0] / 2) < 0.08 * size[0]


def test_a_police_two_row_plate_has_a_red_last_character() -> None:
    plate = render_two_row("鄂F8888警", "police", "white", (220, 140)).astype(np.int16)
    red = (plate[:, :, 2] > 150) & (plate[:, :, 1] < 90) & (plate[:, :, 0] < 90)  # BGR
    ys, xs = np.nonzero(red)
    assert ys.size > 100 and ys.min() > 0.4 * 140 and xs.min() > 0.7 * 220


def test_two_row_share_picks_two_row_plates_without_changing_the_rest() -> None:
    two = [make_sample(41, i, two_row=1.0) for i in range(40)]
    plated = [s for s in two if s.text]
    assert len(plated) >= 30
    for s in plated:
        assert s.conditions["two_row"] == 1.0 and kind_of(s.text) == s.kind
        assert s.kind in {k for k, _, _ in TWO_ROW}
        assert s.quad is not None
        # The plate's corners: about 2:1 (440 x 220) or 1.6:1 (220 x 140), never 3:1.
        top = float(np.linalg.norm(s.quad[1] - s.quad[0]))
        side = float(np.linalg.norm(s.quad[3] - s.quad[0]))
        assert top / side < 2.6, (s.text, top / side)
    assert all(s.conditions["two_row"] == 0.0 for s in two if not s.text)
    half = [make_sample(41, i, two_row=0.5).conditions["two_row"] for i in range(200)]
    assert 0.3 < sum(half) / len(half) < 0.7
    # Without two-row plates the conditions have no such key and the images are the old ones.
    plain = make_sample(41, 0)
    assert "two_row" not in plain.conditions
    # With kinds, only their two-row layouts (none for a kind GA 36 draws in one row).
    assert all(make_sample(41, i, ("trailer",), 1.0).kind == "trailer" for i in range(5))
    hk = make_sample(41, 0, ("hong-kong",), 1.0)
    assert hk.kind == "hong-kong" and hk.conditions["two_row"] == 0.0


@pytest.mark.parametrize("share", [-0.1, 1.5, float("nan"), float("inf")])
def test_a_bad_two_row_share_is_refused(share: float, tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="between 0 and 1"):
        make_sample(1, 0, two_row=share)
    with pytest.raises(ConfigError, match="between 0 and 1"):
        write_set(tmp_path, 2, seed=1, two_row=share)


def test_cli_writes_a_two_row_set_the_eval_buckets(tmp_path: Path) -> None:
    from carpulse.evals.plates import by_condition, load_conditions

    out = synth_main(["--out", str(tmp_path), "--n", "6", "--seed", "41", "--two-row", "1"])
    labels = json.loads((tmp_path / "labels.json").read_text(encoding="utf-8"))
    plated = [v for v in labels.values() if v["plates"]]
    assert out["two_row"] == len(plated) >= 4
    assert all(v["conditions"]["two_row"] == 1.0 for v in plated)
    conditions = load_conditions(tmp_path / "labels.json")
    got = by_condition({name: True for name, v in labels.items() if v["plates"]}, conditions)
    assert got["two-row plate"] == {">=0.5": f"{len(plated)}/{len(plated)}"}
    with pytest.raises(SystemExit):
        synth_main(["--out", str(tmp_path / "x"), "--two-row", "many"])


def test_kinds_makes_a_set_of_those_kinds_only(tmp_path: Path) -> None:
    out = synth_main(
        ["--out", str(tmp_path), "--n", "8", "--seed", "43", "--kinds", "new-energy-small, macau"]
    )
    assert set(out["kinds"]) <= {"new-energy-small", "macau"} and sum(out["kinds"].values()) == 8
    labels = load_labels(tmp_path / "labels.json")
    assert len(labels) == 8
    assert all(
        kind_of(p["text"]) in ("new-energy-small", "macau") for v in labels.values() for p in v
    )
    # Without --kinds the set is the one earlier versions made (the kinds argument is None).
    plain = synth_main(["--out", str(tmp_path / "all"), "--n", "2", "--seed", "43"])
    assert sum(plain["kinds"].values()) == 2
    assert _sha(tmp_path / "all" / "synth_s43_00000.jpg") == _sha_of_sample(43, 0)


def _sha_of_sample(seed: int, index: int) -> str:
    import cv2

    s = make_sample(seed, index)
    quality = int(s.conditions["jpeg_quality"])
    ok, buf = cv2.imencode(".jpg", s.image, [cv2.IMWRITE_JPEG_QUALITY, quality])
    assert ok
    return hashlib.sha256(buf.tobytes()).hexdigest()


@pytest.mark.parametrize(
    "spec", ["", ",", "nope", "ordinary,nope", "new_energy", "x" * 10_000, "ordinary;coach"]
)
def test_unknown_kinds_are_refused_before_anything_is_written(spec: str, tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="kinds are ordinary"):
        synth_main(["--out", str(tmp_path / "x"), "--kinds", spec])
    assert not (tmp_path / "x").exists()


@pytest.mark.parametrize("kinds", [(), ("nope",), ("ordinary", "")])
def test_write_set_refuses_bad_kinds_too(kinds: tuple[str, ...], tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="kinds are ordinary"):
        write_set(tmp_path / "x", 2, seed=1, kinds=kinds)
    assert not (tmp_path / "x").exists()
