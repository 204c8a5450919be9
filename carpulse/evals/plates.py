"""``carpulse eval plates``: plate reading accuracy and CPU latency on labelled photos (../shared/data/plates)."""

from __future__ import annotations

import argparse
import itertools
import json
import os
import time
from pathlib import Path
from typing import Any

import cv2
import numpy as np

from core.argtypes import count
from core.datasets import shared_data_dir
from core.errors import ConfigError
from models.plates.perturb import DEFAULT_ROLL
from models.plates.syntax import kind_of, normalise
from models.plates.vote import _distance

COUNTED = ("high", "medium")  # low-confidence labels may be wrong: not in exact accuracy


def _labels_doc(path: Path) -> Any:
    """The parsed labels.json (an error naming the file if it cannot be read or parsed)."""
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as err:
        raise ConfigError(f"labels {path}: {err}") from err


def load_labels(path: Path) -> dict[str, list[dict[str, Any]]]:
    """``image -> plates`` from labels.json; errors name the file and the entry."""
    doc = _labels_doc(path)
    if not isinstance(doc, dict):
        raise ConfigError(f"labels {path}: top level must be an object")
    out: dict[str, list[dict[str, Any]]] = {}
    for name, entry in doc.items():
        plates = entry.get("plates") if isinstance(entry, dict) else None
        if not isinstance(plates, list) or not all(
            isinstance(p, dict) and isinstance(p.get("text"), str) for p in plates
        ):
            raise ConfigError(f"labels {path}: entry {name!r}: 'plates' must be a list of {{text}}")
        out[name] = plates
    return out


# Synthetic photos' conditions (labels.json ``conditions``, written by ``carpulse plates synth``)
# in buckets fixed here, the same for every run and set: ``(name, key, edges)``; a value ``v``
# (its absolute value: roll is signed) falls in the bucket ``edges[i] <= |v| < edges[i + 1]``.
CONDITION_BUCKETS: tuple[tuple[str, str, tuple[float, ...]], ...] = (
    ("plate width px", "plate_width_px", (0.0, 100.0, 150.0, 250.0, float("inf"))),
    ("yaw (far edge shrink)", "tilt", (0.0, 0.15, 0.3, float("inf"))),
    ("roll deg (abs)", "angle", (0.0, 10.0, 20.0, 45.0, float("inf"))),
    ("gaussian blur sigma", "blur", (0.0, 1.0, float("inf"))),
    ("motion blur px", "motion_px", (0.0, 1.0, float("inf"))),
    ("night", "night", (0.0, 0.5, float("inf"))),
    # Sets written with ``carpulse plates synth --two-row SHARE`` (1: a two-row plate).
    ("two-row plate", "two_row", (0.0, 0.5, float("inf"))),
)
# Where a gate camera is mounted as README.md ("Mounting a gate camera") asks: the plate at least
# 150 px wide, its far edge at least 70 % of the near edge's height (yaw under 0.3), the car
# stopped. A photo without one of these conditions (a real photo) is not counted in it.
GUIDE = {"plate_width_px": (150.0, float("inf")), "tilt": (0.0, 0.3), "motion_px": (0.0, 1.0)}


def load_conditions(path: Path) -> dict[str, dict[str, float]]:
    """``image -> conditions`` (finite numbers only) from a labels.json that has them (synthetic
    sets); photos without them are left out. Errors name the file and the entry."""
    doc = _labels_doc(path)
    out: dict[str, dict[str, float]] = {}
    for name, entry in doc.items() if isinstance(doc, dict) else ():
        cond = entry.get("conditions") if isinstance(entry, dict) else None
        if cond is None:
            continue
        if not isinstance(cond, dict) or not all(
            isinstance(v, int | float) and not isinstance(v, bool) and np.isfinite(v)
            for v in cond.values()
        ):
            raise ConfigError(
                f"labels {path}: entry {name!r}: 'conditions' must map names to finite numbers"
            )
        out[name] = {str(k): float(v) for k, v in cond.items()}
    return out


def _bucket_label(edges: tuple[float, ...], i: int) -> str:
    lo, hi = edges[i], edges[i + 1]
    return f">={lo:g}" if hi == float("inf") else f"{lo:g}-{hi:g}"


def by_condition(
    exact_by_image: dict[str, bool], conditions: dict[str, dict[str, float]]
) -> dict[str, Any]:
    """Exact readings per condition bucket (``"right/counted"``) and within the mounting guide."""
    out: dict[str, Any] = {}
    for title, key, edges in CONDITION_BUCKETS:
        counts = [[0, 0] for _ in edges[:-1]]
        for name, ok in exact_by_image.items():
            value = conditions.get(name, {}).get(key)
            if value is None:
                continue
            value = abs(value)
            for i in range(len(edges) - 1):
                if edges[i] <= value < edges[i + 1]:
                    counts[i][0] += ok
                    counts[i][1] += 1
                    break
        if any(c[1] for c in counts):
            out[title] = {
                _bucket_label(edges, i): f"{c[0]}/{c[1]}" for i, c in enumerate(counts) if c[1]
            }
    inside = [
        ok
        for name, ok in exact_by_image.items()
        if name in conditions
        and all(k in conditions[name] for k in GUIDE)
        and all(lo <= abs(conditions[name][k]) < hi for k, (lo, hi) in GUIDE.items())
    ]
    if inside:
        out["within mounting guide"] = {
            "exact": f"{sum(inside)}/{len(inside)}",
            "exact_accuracy": round(sum(inside) / len(inside), 4),
        }
    return out


def _latency(reader: Any, images: dict[str, np.ndarray], repeats: int) -> dict[str, Any]:
    """Per-image time percentiles; for our reader (it has ``timings``), where the time goes too:
    ``steps``, mean ms and calls per image of each step of the timed runs (``StepTimes``)."""
    from models.plates.reader import StepTimes

    steps = StepTimes() if hasattr(reader, "timings") else None
    per_image, cpu_image = [], []
    for img in images.values():
        reader.read(img)  # warm: first call compiles kernels / allocates
        runs, cpu = [], []
        for _ in range(repeats):
            if steps is not None:
                reader.timings = steps
            t0, c0 = time.perf_counter(), time.process_time()
            try:
                reader.read(img)
            finally:
                if steps is not None:
                    reader.timings = None
            runs.append((time.perf_counter() - t0) * 1000)
            cpu.append((time.process_time() - c0) * 1000)
        per_image.append(float(np.median(runs)))
        cpu_image.append(float(np.median(cpu)))
    arr, carr = np.array(per_image), np.array(cpu_image)
    extra: dict[str, Any] = {} if steps is None else {"steps": steps.per_frame_ms()}
    return {
        # CPU time of this process: what the work costs when the cores are not shared.
        "cpu_p50_ms": round(float(np.percentile(carr, 50)), 2),
        "cpu_p95_ms": round(float(np.percentile(carr, 95)), 2),
        "p50_ms": round(float(np.percentile(arr, 50)), 2),
        "p95_ms": round(float(np.percentile(arr, 95)), 2),
        "mean_ms": round(float(arr.mean()), 2),
        "max_ms": round(float(arr.max()), 2),
        **extra,
    }


class OffTheShelf:
    """RapidOCR 1.4.4 as shipped (whole image, its own detector, classifier and recogniser), one thread.

    It reads a plate if one of its text lines, or two neighbouring lines joined (it may split a
    plate at the separator dot), normalises to the label.
    """

    def __init__(self) -> None:
        from rapidocr_onnxruntime import RapidOCR

        self.ocr = RapidOCR(intra_op_num_threads=1, inter_op_num_threads=1)

    def read(self, image: np.ndarray) -> list[str]:
        result, _ = self.ocr(image)
        lines = [normalise(str(r[1])) for r in result or []]
        return lines + [a + b for a, b in itertools.pairwise(lines)]


def _score(
    read: Any,
    images: dict[str, np.ndarray],
    labels: dict[str, list[dict[str, Any]]],
    conditions: dict[str, dict[str, float]] | None = None,
) -> dict[str, Any]:
    """Exact and per-character accuracy of ``read(image) -> texts`` over the labelled images
    (and per condition bucket, for the images with ``conditions``)."""
    exact_by_image: dict[str, bool] = {}
    counted = exact = false_pos = chars_ok = chars_total = 0
    wrong: list[dict[str, Any]] = []
    low: list[dict[str, Any]] = []
    per_kind: dict[str, list[int]] = {}
    for name, img in images.items():
        got = read(img)
        want = labels[name]
        if not want:
            false_pos += len(got)
            if got:
                wrong.append({"image": name, "want": [], "got": got})
            continue
        for plate in want:
            text = plate["text"]
            if plate.get("confidence") not in COUNTED:
                low.append({"image": name, "label": text, "got": got})
                continue
            counted += 1
            best = min(got, key=lambda g: _distance(g, text), default="")
            exact += best == text
            exact_by_image[name] = exact_by_image.get(name, True) and best == text
            chars_total += len(text)
            chars_ok += max(0, len(text) - _distance(best, text))
            kind = str(plate.get("kind") or kind_of(text) or "other")
            per_kind.setdefault(kind, [0, 0])
            per_kind[kind][0] += best == text
            per_kind[kind][1] += 1
            if best != text:
                wrong.append({"image": name, "want": text, "got": got[:4]})
    return {
        "plates_counted": counted,
        "exact_correct": exact,
        "exact_accuracy": round(exact / counted, 4) if counted else None,
        "char_accuracy": round(chars_ok / chars_total, 4) if chars_total else None,
        "false_positives": false_pos,
        "per_kind": {k: f"{v[0]}/{v[1]}" for k, v in sorted(per_kind.items())},
        "by_condition": by_condition(exact_by_image, conditions or {}),
        "wrong": wrong,
        "low_confidence_labels": low,
    }


def _perturbed(
    ours: Any,
    baseline: OffTheShelf | None,
    images: dict[str, np.ndarray],
    labels: dict[str, list[dict[str, Any]]],
    k: int,
    seed: int,
    timed: Any = None,
    repeats: int = 1,
    max_roll: float = DEFAULT_ROLL,
    frame: int = 0,
    grey: bool = False,
) -> dict[str, Any]:
    """Ours (and the baseline) on ``k`` perturbed variants of every photo (``models.plates.perturb``),
    rolled by up to ``max_roll`` degrees either way, in a frame ``frame`` px wide (0: as they are),
    monochrome with ``grey`` (an infrared night camera).

    With ``timed`` (a reader), its CPU time per variant too: the variants are what an unseen gate
    photo looks like more than the photos are, and they fall through to the slower stages more.
    """
    from models.plates.perturb import perturbed

    variants: dict[str, np.ndarray] = {}
    var_labels: dict[str, list[dict[str, Any]]] = {}
    var_conditions: dict[str, dict[str, float]] = {}
    for name, img in images.items():
        for i in range(k):
            key = f"{name}~{i}"
            variants[key], var_conditions[key] = perturbed(
                img, name, i, seed, max_roll, frame, grey
            )
            var_labels[key] = labels[name]
    got = _score(ours, variants, var_labels, var_conditions)
    out: dict[str, Any] = {
        "variants_per_photo": k,
        "seed": seed,
        "max_roll_deg": max_roll,
        "frame_px": frame,
        "grey": grey,
        "images": len(variants),
        **{
            key: got[key]
            for key in (
                "plates_counted",
                "exact_correct",
                "exact_accuracy",
                "char_accuracy",
                "false_positives",
                "by_condition",
            )
        },
        "wrong": got["wrong"][:40],
    }
    if timed is not None:
        lat = _latency(timed, variants, repeats)
        out.update(p50_ms=lat["p50_ms"], p95_ms=lat["p95_ms"], latency=lat)
    if baseline is not None:
        base = _score(baseline.read, variants, var_labels, var_conditions)
        out["baseline"] = {
            key: base[key]
            for key in ("exact_correct", "exact_accuracy", "false_positives", "by_condition")
        }
    return out


def main(argv: list[str]) -> dict[str, Any]:
    ap = argparse.ArgumentParser(prog="carpulse eval plates", description=__doc__)
    ap.add_argument("--images", type=Path, default=None, help="folder (default shared data)")
    ap.add_argument(
        "--labels", type=Path, default=None, help="labels.json (default DIR/labels.json)"
    )
    ap.add_argument(
        "--repeats", type=count(1, 1000), default=3, help="timed reads per image (median)"
    )
    ap.add_argument("--min-confidence", type=float, default=0.5)
    ap.add_argument("--no-latency", action="store_true", help="accuracy only (faster)")
    ap.add_argument(
        "--no-baseline", action="store_true", help="skip off-the-shelf RapidOCR on the same images"
    )
    ap.add_argument(
        "--line",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="the plate-line recogniser (default on; --no-line as [gate] plate_line = false)",
    )
    ap.add_argument(
        "--cells",
        action=argparse.BooleanOptionalAction,
        default=False,
        help="the plate-font cell recogniser too (default off; [gate] plate_cells)",
    )
    ap.add_argument(
        "--finder",
        action=argparse.BooleanOptionalAction,
        default=False,
        help="the learned plate finder too (experimental, default off; [gate] plate_finder)",
    )
    ap.add_argument(
        "--colour-kinds",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="read a plate only as the kinds its colour allows (default on; [gate] "
        "plate_colour_kinds)",
    )
    ap.add_argument(
        "--red-marks",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="read a crop with a red glyph at one end as the kinds with a red character there "
        "(police 警, WJ, 应急, 使; default on; [gate] plate_red_marks)",
    )
    ap.add_argument(
        "--serial",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="let the plate recogniser trained on real photos (CCPD) correct PP-OCR's letters "
        "and digits (default on; [gate] plate_serial)",
    )
    ap.add_argument(
        "--rec-neck",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="run PP-OCR's recogniser with its neck and head retrained on plates (default on; "
        "--no-rec-neck: as PaddleOCR shipped it; [gate] plate_rec_neck)",
    )
    ap.add_argument(
        "--province-vote",
        type=float,
        default=0.8,
        metavar="P",
        help="a reading whose province was read below P has it voted on by PP-OCR over the crop "
        "and six jittered copies (default 0.8; 0: off; [gate] plate_province_vote)",
    )
    ap.add_argument(
        "--settle",
        type=float,
        default=0.9,
        help="a reading below this keeps the search going (0: the first ends it; [gate] plate_settle)",
    )
    ap.add_argument(
        "--all-threads", action="store_true", help="also time ours with every core (default: one)"
    )
    ap.add_argument(
        "--perturb",
        type=int,
        default=0,
        metavar="K",
        help="also read K variants of each photo: rolled, yawed, shrunk, blurred, darkened (0-50)",
    )
    ap.add_argument("--perturb-seed", type=int, default=0, help="seed of the variants")
    ap.add_argument(
        "--perturb-roll",
        type=float,
        default=None,
        metavar="DEG",
        help=f"the variants' largest roll either way, in degrees (0-90; default {DEFAULT_ROLL:g})",
    )
    ap.add_argument(
        "--perturb-frame",
        type=int,
        default=0,
        metavar="W",
        help="paste each variant into a grey frame W px wide (640-3840; default 0: as they are)",
    )
    ap.add_argument(
        "--perturb-grey",
        action="store_true",
        help="make the variants monochrome, as an infrared night camera sees them",
    )
    args = ap.parse_args(argv)
    if not 0 <= args.perturb <= 50:
        raise ConfigError(f"--perturb {args.perturb}: between 0 and 50")
    if args.perturb_seed < 0:  # numpy's seed sequences take non-negative integers only
        raise ConfigError(f"--perturb-seed {args.perturb_seed}: 0 or more")
    if args.perturb_roll is not None and not 0.0 <= args.perturb_roll <= 90.0:  # NaN too
        raise ConfigError(f"--perturb-roll {args.perturb_roll}: between 0 and 90 degrees")
    # (A 3840-px frame's noise is drawn as 200 MB of float64: the cap keeps a small machine safe.)
    if args.perturb_frame != 0 and not 640 <= args.perturb_frame <= 3840:
        raise ConfigError(f"--perturb-frame {args.perturb_frame}: 0, or 640 to 3840 px")
    # They change the variants only: without any, the run would look like theirs and not be.
    if not args.perturb and (
        args.perturb_grey or args.perturb_frame or args.perturb_roll is not None
    ):
        raise ConfigError(
            "--perturb-roll, --perturb-grey and --perturb-frame change the variants: add --perturb K"
        )
    folder = args.images or shared_data_dir() / "plates"
    labels_path = args.labels or folder / "labels.json"
    if not folder.is_dir():
        raise ConfigError(f"plate images folder {folder} does not exist (see ../shared/DATA.md)")
    labels = load_labels(labels_path)
    conditions = load_conditions(labels_path)

    from models.plates.reader import PlateReader

    images: dict[str, np.ndarray] = {}
    unreadable: list[str] = []
    for name in sorted(labels):
        img = cv2.imread(str(folder / name), cv2.IMREAD_COLOR)
        if img is None:
            unreadable.append(name)
            continue
        images[name] = img
    from models.plates.cells import MODEL_PATH
    from models.plates.find import FIND_PATH
    from models.plates.line import LINE_PATH
    from models.plates.rec_neck import REC_NECK_PATH
    from models.plates.serial import SERIAL_PATH

    if not 0.0 <= args.settle <= 1.0:
        raise ConfigError(f"--settle {args.settle}: between 0 and 1")
    if not 0.0 <= args.province_vote <= 1.0:  # NaN too
        raise ConfigError(f"--province-vote {args.province_vote}: between 0 and 1 (0: off)")
    line: dict[str, Any] = {
        "line_model": LINE_PATH if args.line else None,
        "cell_model": MODEL_PATH if args.cells else None,
        "find_model": FIND_PATH if args.finder else None,
        "settle": args.settle,
        "colour_kinds": args.colour_kinds,
        "red_marks": args.red_marks,
        "serial_model": SERIAL_PATH if args.serial else None,
        "rec_neck": REC_NECK_PATH if args.rec_neck else None,
        "province_vote": args.province_vote,
    }
    reader = PlateReader(threads=1, min_confidence=args.min_confidence, **line)
    stages: dict[str, int] = {}

    def ours(img: np.ndarray) -> list[str]:
        reads = reader.read(img)
        for r in reads:
            stages[r.stage] = stages.get(r.stage, 0) + 1
        return [r.text for r in reads]

    result: dict[str, Any] = {
        "images": len(images),
        "unreadable_images": unreadable,
        **_score(ours, images, labels, conditions),
        "stages": dict(stages),  # the photos' own (the variants below read through ``ours`` too)
        "reader": {
            "line": args.line,
            "cells": args.cells,
            "finder": args.finder,
            "settle": args.settle,
            "colour_kinds": args.colour_kinds,
            "red_marks": args.red_marks,
            "serial": args.serial,
            "rec_neck": args.rec_neck,
            "province_vote": args.province_vote,
            "min_confidence": args.min_confidence,
        },
        "cpus": os.cpu_count(),
    }
    baseline = None if args.no_baseline else OffTheShelf()
    if baseline is not None:
        base = _score(baseline.read, images, labels, conditions)
        result["baseline"] = {
            "name": "rapidocr-onnxruntime 1.4.4, whole image, 1 thread",
            **{
                k: base[k]
                for k in ("exact_correct", "exact_accuracy", "char_accuracy", "by_condition")
            },
            "wrong": base["wrong"][:20],
        }
        if base["exact_accuracy"]:
            result["accuracy_ratio_vs_baseline"] = round(
                (result["exact_accuracy"] or 0.0) / base["exact_accuracy"], 3
            )
    if args.perturb:
        result["perturbed"] = _perturbed(
            ours,
            baseline,
            images,
            labels,
            args.perturb,
            args.perturb_seed,
            timed=None if args.no_latency else reader,
            repeats=args.repeats,
            max_roll=DEFAULT_ROLL if args.perturb_roll is None else args.perturb_roll,
            frame=args.perturb_frame,
            grey=args.perturb_grey,
        )
    if not args.no_latency:
        lat1 = _latency(reader, images, args.repeats)
        result.update(p50_ms=lat1["p50_ms"], p95_ms=lat1["p95_ms"])
        result["latency"] = {"threads_1": lat1}
        if args.all_threads:
            result["latency"]["threads_all"] = _latency(
                PlateReader(threads=0, min_confidence=args.min_confidence, **line),
                images,
                args.repeats,
            )
        if baseline is not None:
            lat_b = _latency(baseline, images, args.repeats)
            result["baseline"].update(p50_ms=lat_b["p50_ms"], p95_ms=lat_b["p95_ms"])
            result["latency"]["baseline_threads_1"] = lat_b
            result["speedup_p50_vs_baseline"] = round(
                lat_b["p50_ms"] / max(lat1["p50_ms"], 1e-6), 2
            )
        result["latency_note"] = (
            "per image, decoded image in memory, one onnxruntime thread, median of repeats; "
            "p50/p95 over images"
        )
    return result
