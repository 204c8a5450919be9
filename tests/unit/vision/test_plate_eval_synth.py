"""The reader and ``carpulse eval plates`` on synthetic photos (made here, nothing from ../shared)."""

from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np
import pytest

from models.plates.decode import PlateDecoder
from models.plates.syntax import kind_of
from tests.unit.vision.ctc import ctc_frames

ALPHABET = ["<blank>", *"WJ京粤Z使应急消港A0123456789", "·", " "]


def _frames(text: str, rng: np.random.Generator) -> np.ndarray:
    return ctc_frames("_" + "_".join(text) + "_", ALPHABET, rng)


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
    assert res["reader"] == {
        "line": True, "cells": False, "finder": False, "settle": 0.9, "colour_kinds": True,
        "red_marks": True, "serial": True, "rec_neck": True, "province_vote": 0.8,
        "min_confidence": 0.5,
    }  # fmt: skip
    assert set(res["by_condition"]) >= {"plate width px", "night"}, res["by_condition"]
    assert "by_condition" in res["baseline"]
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


def test_plate_only_probabilities_drop_mass_on_characters_no_plate_holds() -> None:
    # A frame that gives 排-like mass (a character outside every plate template) to a class the
    # plate alphabet lacks: the reading is the same, its characters' probabilities rise.
    alphabet = [*ALPHABET, "排"]
    rng = np.random.default_rng(5)
    frames = _frames("京A12345", rng)
    probs = np.concatenate([frames, np.zeros((len(frames), 1))], axis=1)
    probs[5, -1] = probs[5].max() * 1.5  # the frame of "1" (blank, 京, blank, A, blank, 1)
    probs /= probs.sum(axis=1, keepdims=True)
    raw = PlateDecoder(alphabet).constrained(probs)
    only = PlateDecoder(alphabet, plate_only=True).constrained(probs)
    assert raw is not None and only is not None and raw.text == only.text == "京A12345"
    assert raw.char_probs[2] < 0.5 < only.char_probs[2]
    assert all(o >= r - 1e-12 for o, r in zip(only.char_probs, raw.char_probs, strict=True))


def test_accuracy_by_condition_buckets_and_the_mounting_guide() -> None:
    from carpulse.evals.plates import by_condition

    cond = {
        "a": {"plate_width_px": 90.0, "tilt": 0.1, "angle": -25.0, "motion_px": 0.0, "night": 1.0},
        "b": {"plate_width_px": 200.0, "tilt": 0.1, "angle": 5.0, "motion_px": 0.0, "night": 0.0},
        "c": {"plate_width_px": 300.0, "tilt": 0.35, "angle": 5.0, "motion_px": 0.0, "night": 0.0},
        "d": {"plate_width_px": 400.0, "tilt": 0.0, "angle": 0.0, "motion_px": 6.0, "night": 0.0},
        "e": {"plate_width_px": 1e300, "tilt": 0.0, "angle": 60.0, "motion_px": 0.0, "night": 0.0},
    }
    exact = {"a": False, "b": True, "c": False, "d": True, "e": True, "photo": True}
    got = by_condition(exact, cond)
    assert got["plate width px"] == {"0-100": "0/1", "150-250": "1/1", ">=250": "2/3"}
    assert got["roll deg (abs)"] == {"0-10": "2/3", "20-45": "0/1", ">=45": "1/1"}
    assert got["night"] == {"0-0.5": "3/4", ">=0.5": "0/1"}
    # Within the guide: b and e (a too small, c yawed, d moving); "photo" has no conditions.
    assert got["within mounting guide"] == {"exact": "2/2", "exact_accuracy": 1.0}
    assert by_condition(exact, {}) == {}
    # A photo without one of the guide's conditions is not counted in it.
    partial = {"f": {"plate_width_px": 300.0, "tilt": 0.0}}
    assert "within mounting guide" not in by_condition({"f": True}, partial)


@pytest.mark.parametrize("bad", ["NaN", "Infinity", '"wide"', "true", "[1]"])
def test_conditions_that_are_not_finite_numbers_are_refused(tmp_path: Path, bad: str) -> None:
    from carpulse.evals.plates import load_conditions
    from core.errors import ConfigError

    path = tmp_path / "labels.json"
    path.write_text(
        '{"x.jpg": {"plates": [], "conditions": {"tilt": 0.1, "plate_width_px": BAD}},'
        ' "y.jpg": {"plates": []}}'.replace("BAD", bad),
        encoding="utf-8",
    )
    with pytest.raises(ConfigError, match=r"x\.jpg"):
        load_conditions(path)


def test_conditions_are_read_where_present(tmp_path: Path) -> None:
    from carpulse.evals.plates import load_conditions

    path = tmp_path / "labels.json"
    path.write_text(
        '{"x.jpg": {"plates": [], "conditions": {"tilt": 1, "plate_width_px": 1e30}},'
        ' "y.jpg": {"plates": []}, "z.jpg": "junk"}',
        encoding="utf-8",
    )
    assert load_conditions(path) == {"x.jpg": {"tilt": 1.0, "plate_width_px": 1e30}}


def test_perturbed_variants_are_deterministic_and_differ() -> None:
    from models.plates.perturb import perturbed
    from models.plates.synth import make_sample

    img = make_sample(33, 0).image
    a, ca = perturbed(img, "a.jpg", 0, seed=1)
    b, cb = perturbed(img, "a.jpg", 0, seed=1)
    c, cc = perturbed(img, "a.jpg", 1, seed=1)
    d, _ = perturbed(img, "b.jpg", 0, seed=1)
    assert np.array_equal(a, b) and ca == cb
    assert ca != cc and (a.shape != c.shape or not np.array_equal(a, c))
    assert a.shape != d.shape or not np.array_equal(a, d)
    assert a.dtype == np.uint8 and a.shape[2] == 3
    assert a.shape[0] <= img.shape[0] and a.shape[1] <= img.shape[1]
    assert 0.6 <= ca["scale"] <= 1.0 and abs(ca["angle"]) <= 15 and 0 <= ca["tilt"] <= 0.35


@pytest.mark.parametrize(
    "extra", [["--perturb", "-1"], ["--perturb", "51"], ["--perturb", "1", "--perturb-seed", "-1"]]
)
def test_eval_refuses_perturb_options_out_of_range(tmp_path: Path, extra: list[str]) -> None:
    from carpulse.evals.plates import main
    from core.errors import ConfigError
    from models.plates.synth import write_set

    write_set(tmp_path, 1, seed=32)
    with pytest.raises(ConfigError, match="--perturb"):
        main(["--images", str(tmp_path), "--no-latency", "--no-baseline", *extra])


def test_perturb_roll_widens_the_roll_only() -> None:
    from models.plates.perturb import perturbed
    from models.plates.synth import make_sample

    img = make_sample(33, 0).image
    rolls = [perturbed(img, "a.jpg", k, seed=4, max_roll=80.0)[1]["angle"] for k in range(40)]
    assert max(abs(a) for a in rolls) > 30.0 and all(abs(a) <= 80.0 for a in rolls)
    # The other draws are the same: the default variants are those the figures were taken on.
    _, cw = perturbed(img, "a.jpg", 3, seed=4, max_roll=80.0)
    _, cp = perturbed(img, "a.jpg", 3, seed=4)
    assert {k: v for k, v in cw.items() if k != "angle"} == {
        k: v for k, v in cp.items() if k != "angle"
    }
    assert abs(cp["angle"]) <= 15.0 and cw["angle"] == pytest.approx(
        cp["angle"] * 80.0 / 15.0, abs=0.02
    )


@pytest.mark.parametrize("roll", ["-1", "90.5", "nan", "inf"])
def test_eval_refuses_a_perturb_roll_out_of_range(tmp_path: Path, roll: str) -> None:
    from carpulse.evals.plates import main
    from core.errors import ConfigError
    from models.plates.synth import write_set

    write_set(tmp_path, 1, seed=32)
    args = ["--images", str(tmp_path), "--no-latency", "--no-baseline", "--perturb", "1"]
    with pytest.raises(ConfigError, match="--perturb-roll"):
        main([*args, "--perturb-roll", roll])


def test_perturb_frame_pastes_the_same_variant_into_a_larger_frame() -> None:
    from models.plates.perturb import perturbed
    from models.plates.synth import make_sample

    img = make_sample(33, 0).image
    plain, cp = perturbed(img, "a.jpg", 2, seed=4)
    big, cb = perturbed(img, "a.jpg", 2, seed=4, frame=2560)
    assert big.shape == (1440, 2560, 3) and cb == {**cp, "frame_px": 2560.0}
    # The variant itself is in there, unchanged, somewhere.
    hit = cv2.matchTemplate(big, plain, cv2.TM_SQDIFF)
    assert float(hit.min()) == 0.0
    # A frame smaller than the variant grows to hold it.
    small, _ = perturbed(img, "a.jpg", 2, seed=4, frame=100)
    assert small.shape[0] >= plain.shape[0] and small.shape[1] >= plain.shape[1]


@pytest.mark.parametrize("frame", [0, 1920])
def test_perturb_grey_is_the_same_variant_in_monochrome(frame: int) -> None:
    from models.plates.perturb import perturbed
    from models.plates.synth import make_sample

    img = make_sample(33, 0).image
    colour, cc = perturbed(img, "a.jpg", 3, seed=5, frame=frame)
    grey, cg = perturbed(img, "a.jpg", 3, seed=5, frame=frame, grey=True)
    assert cg == {**cc, "grey": 1.0} and grey.shape == colour.shape
    # Luminance in all three channels: the colour variant's own, pixel for pixel.
    assert np.array_equal(grey[..., 0], grey[..., 1]) and np.array_equal(grey[..., 1], grey[..., 2])
    assert np.array_equal(grey[..., 0], cv2.cvtColor(colour, cv2.COLOR_BGR2GRAY))
    # The colour variant has colour (a synthetic plate is blue, yellow, green or white on a scene).
    assert int(np.abs(colour[..., 0].astype(int) - colour[..., 2]).max()) > 30


def test_eval_reads_grey_variants_when_asked(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import models.plates.perturb as perturb
    from carpulse.evals.plates import main
    from core.errors import ConfigError
    from models.plates.synth import write_set

    made: list[bool] = []  # whether each variant the eval read was monochrome
    real = perturb.perturbed

    def spy(*a: object, **k: object) -> tuple[np.ndarray, dict[str, float]]:
        img, cond = real(*a, **k)  # type: ignore[arg-type]
        made.append(bool(np.array_equal(img[..., 0], img[..., 2])))
        return img, cond

    monkeypatch.setattr(perturb, "perturbed", spy)
    write_set(tmp_path, 2, seed=35)
    args = ["--images", str(tmp_path), "--no-latency", "--no-baseline", "--perturb", "1"]
    plain = main(args)["perturbed"]
    assert made == [False, False]
    grey = main([*args, "--perturb-grey"])["perturbed"]
    assert made[2:] == [True, True]
    assert plain["grey"] is False and grey["grey"] is True
    assert grey["images"] == plain["images"] == 2
    assert 0 <= grey["exact_correct"] <= grey["plates_counted"] == plain["plates_counted"]
    # Without variants to change, the options are a clear error, not a run that ignores them.
    for extra in (["--perturb-grey"], ["--perturb-frame", "1920"], ["--perturb-roll", "30"]):
        with pytest.raises(ConfigError, match="--perturb K"):
            main([*args[:-2], *extra])


@pytest.mark.parametrize("frame", ["1", "639", "3841", "7680", "-640", "1e9"])
def test_eval_refuses_a_perturb_frame_out_of_range(tmp_path: Path, frame: str) -> None:
    from carpulse.evals.plates import main
    from core.errors import ConfigError
    from models.plates.synth import write_set

    write_set(tmp_path, 1, seed=32)
    args = ["--images", str(tmp_path), "--no-latency", "--no-baseline", "--perturb", "1"]
    with pytest.raises((ConfigError, SystemExit)):
        main([*args, "--perturb-frame", frame])


def test_a_huge_perturb_seed_is_taken(tmp_path: Path) -> None:
    from carpulse.evals.plates import main
    from models.plates.synth import write_set

    write_set(tmp_path, 1, seed=32)
    args = ["--images", str(tmp_path), "--no-latency", "--no-baseline", "--perturb", "1"]
    res = main([*args, "--perturb-seed", str(2**80)])
    assert res["perturbed"]["images"] == 1 and res["perturbed"]["seed"] == 2**80


def test_eval_times_the_perturbed_variants_too(tmp_path: Path) -> None:
    from carpulse.evals.plates import main
    from models.plates.synth import write_set

    write_set(tmp_path, 2, seed=33)
    args = ["--images", str(tmp_path), "--no-baseline", "--repeats", "1", "--perturb", "2"]
    pert = main(args)["perturbed"]
    lat = pert["latency"]
    assert pert["images"] == 4 and pert["p50_ms"] == lat["p50_ms"] > 0.0
    assert lat["p50_ms"] <= lat["p95_ms"] <= lat["max_ms"]
    assert "latency" not in main([*args, "--no-latency"])["perturbed"]


def test_eval_says_where_the_time_goes(tmp_path: Path) -> None:
    """Each timed set reports its reader's steps per image (the issue: measure where the time goes
    first): the leaves and the rest add up to the frame, a synthetic plate is read by the line
    model or PP-OCR after a locator, and the off-the-shelf baseline has no steps."""
    from carpulse.evals.plates import main
    from models.plates.synth import write_set

    write_set(tmp_path, 3, seed=34)
    res = main(["--images", str(tmp_path), "--repeats", "2", "--perturb", "1"])
    for lat in (res["latency"]["threads_1"], res["perturbed"]["latency"]):
        steps = lat["steps"]
        frame = steps.pop("frame")
        assert frame["calls"] == 1.0 and frame["ms"] > 0.0
        # The time of a frame is split, not counted twice: the steps are leaves.
        assert sum(v["ms"] for v in steps.values()) == pytest.approx(
            frame["ms"], rel=0.01, abs=0.01
        )
        assert steps["other"]["ms"] >= 0.0 and 0.0 <= steps["other"]["share"] < 0.5
        assert {"colour locator", "corner fit"} <= set(steps)
        assert steps.keys() & {"line model", "PP-OCR recogniser"}
        assert all(v["calls"] > 0 for k, v in steps.items() if k != "other")
        # Mean time per image of the timed runs: close to the median-based mean of the latency.
        assert frame["ms"] == pytest.approx(lat["mean_ms"], rel=0.5)
    assert "steps" not in res["latency"]["baseline_threads_1"]


@pytest.mark.slow
def test_eval_reads_perturbed_variants_too(tmp_path: Path) -> None:
    from carpulse.evals.plates import main
    from models.plates.synth import write_set

    write_set(tmp_path, 3, seed=34)
    res = main(["--images", str(tmp_path), "--no-latency", "--perturb", "2"])
    pert = res["perturbed"]
    assert pert["images"] == 6 and pert["variants_per_photo"] == 2
    assert pert["plates_counted"] == 2 * res["plates_counted"]
    assert 0 <= pert["exact_correct"] <= pert["plates_counted"]
    assert set(pert["by_condition"]) >= {"yaw (far edge shrink)", "roll deg (abs)"}
    assert "exact_correct" in pert["baseline"]


def test_eval_reads_with_the_finder_when_asked(tmp_path: Path) -> None:
    from carpulse.evals.plates import main
    from models.plates.synth import write_set

    write_set(tmp_path, 4, seed=31)
    res = main(["--images", str(tmp_path), "--no-latency", "--no-baseline", "--finder"])
    assert res["reader"]["finder"] is True
    assert res["stages"].get("finder", 0) >= 1, res["stages"]
