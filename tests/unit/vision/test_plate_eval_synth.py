"""The reader and ``carpulse eval plates`` on synthetic photos (made here, nothing from ../shared)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from models.plates.decode import PlateDecoder
from models.plates.syntax import kind_of

ALPHABET = ["<blank>", *"WJ京粤Z使应急消港A0123456789", "·", " "]


def _frames(text: str, rng: np.random.Generator) -> np.ndarray:
    path = "_" + "_".join(text) + "_"
    probs = rng.uniform(0.0, 0.02, (len(path), len(ALPHABET)))
    for t, ch in enumerate(path):
        probs[t, 0 if ch == "_" else ALPHABET.index(ch)] += 0.9
    return probs / probs.sum(axis=1, keepdims=True)


@pytest.mark.parametrize(
    "text", ["WJ京1234消", "WJ0112345", "使014578", "粤Z1234港", "京A1234应急"]
)
def test_constrained_decoding_reads_the_new_kinds(text: str) -> None:
    d = PlateDecoder(ALPHABET)
    got = d.constrained(_frames(text, np.random.default_rng(3)))
    assert got is not None and got.text == text and kind_of(got.text) is not None


def test_a_kind_the_frames_do_not_support_is_not_forced() -> None:
    d = PlateDecoder(ALPHABET)
    # Five digits after 京A: ordinary plate, not emergency (no frame gives 应 or 急 any mass).
    got = d.constrained(_frames("京A12345", np.random.default_rng(4)))
    assert got is not None and got.text == "京A12345"


@pytest.mark.slow
def test_eval_on_a_small_synthetic_set(tmp_path: Path) -> None:
    from carpulse.evals.plates import main
    from models.plates.synth import write_set

    write_set(tmp_path, 6, seed=31)
    res = main(["--images", str(tmp_path), "--no-latency"])
    assert res["images"] == 6 and res["plates_counted"] >= 5
    counted = sum(int(v.split("/")[1]) for v in res["per_kind"].values())
    assert counted == res["plates_counted"]
    assert res["exact_accuracy"] is not None and res["exact_accuracy"] >= 0.5, res["wrong"]
    assert res["reader"] == {"line": True, "settle": 0.9, "min_confidence": 0.5}
    base = res["baseline"]
    assert base["name"].startswith("rapidocr") and 0.0 <= base["exact_accuracy"] <= 1.0
    assert "accuracy_ratio_vs_baseline" in res or base["exact_accuracy"] == 0.0


@pytest.mark.parametrize("settle", ["-0.1", "1.5", "nan"])
def test_eval_refuses_a_settle_outside_zero_to_one(tmp_path: Path, settle: str) -> None:
    from carpulse.evals.plates import main
    from core.errors import ConfigError
    from models.plates.synth import write_set

    write_set(tmp_path, 1, seed=32)
    with pytest.raises(ConfigError, match="--settle"):
        main(["--images", str(tmp_path), "--no-latency", "--no-baseline", "--settle", settle])
