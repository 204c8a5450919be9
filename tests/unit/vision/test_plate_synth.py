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
from models.plates.synth import main as synth_main
from models.plates.synth import make_sample, random_text, render_plate, write_set


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
