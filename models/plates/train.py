"""``carpulse plates train``: fit the plate-font cell classifier on synthetic plates (fixed seed).

The training photos come from ``synth.make_sample`` with seeds of their own (default 5100; the
evaluation sets use 100 for TUNE and 900 for TEST, and images of different seeds never coincide),
through a JPEG round trip like the evaluation's, each plate drawn in a font pair of
``fonts.training_fonts`` (never a test set's font). Each photo gives three crops: the one the
reader itself makes (a box around the plate, deskewed by ``quad.refine`` and ``warp_quad``, or
the plain rectangle when the corner fit fails), the same box snapped to the character row
(``quad.snap``: the crop the reader gives the cells) and one warped from the true corners moved a
little, so the classifier learns loose corners too. Nothing is downloaded; the same seed gives the same weights
(one BLAS thread, sklearn's ``random_state``), whose SHA-256 the command prints.
"""

from __future__ import annotations

import argparse
import hashlib
import itertools
import time
import warnings
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np

from core.errors import ConfigError
from models.plates.cells import (
    CLASSES,
    FEATURES,
    MODEL_PATH,
    PIXELS,
    cell_features,
    features,
)
from models.plates.crops import as_decoded, locator_crop
from models.plates.fonts import drawn_in_training_fonts
from models.plates.province import PROVINCE_PATH, make_province_cells
from models.plates.quad import rect_quad, snap, warp_quad
from models.plates.synth import make_sample

RESERVED_SEEDS = (100, 900)  # TUNE and TEST: never trained on


def _crops(
    image: np.ndarray,
    quad: np.ndarray,
    rng: np.random.Generator,
    jittered: int = 1,
    snapped: bool = True,
) -> list[np.ndarray]:
    """The reader's own crop of the plate at ``quad`` (a box around it, deskewed by its corner fit,
    or as it is when the fit fails), with ``snapped`` the crop snapped to the character row as the
    reader gives the cells (``quad.snap``), and ``jittered`` crops from jittered true corners."""
    crop, rect, found = locator_crop(image, quad, rng)
    out = [crop]
    width = float(np.linalg.norm(quad[1] - quad[0]))
    height = float(np.linalg.norm(quad[3] - quad[0]))
    for _ in range(jittered):
        jitter = rng.normal(0, 1, (4, 2)) * np.array([0.015 * width, 0.05 * height])
        out.append(warp_quad(image, (quad + jitter).astype(np.float32)))
    if snapped:
        fit = snap(image, found if found is not None else rect_quad(rect))
        if fit is not None:
            out.append(warp_quad(image, fit))
    return out


def make_cells(
    seed: int,
    scenes: int,
    jobs: int = 1,
    jittered: int = 1,
    snapped: bool = True,
    many_fonts: bool = False,
) -> tuple[np.ndarray, np.ndarray]:
    """``(cell windows [N, PIXELS], class index [N])`` from ``scenes`` synthetic photos of ``seed``.

    Photo ``i`` and its crops depend on ``(seed, i)`` only, so ``jobs`` processes give the same
    cells, in the same order, as one. ``many_fonts``: photo ``i``'s plate is drawn in
    ``fonts.training_fonts(seed, i)``, not in the synth default.
    """
    bounds = np.linspace(0, scenes, max(1, min(jobs, scenes)) + 1).astype(int)
    chunks = [
        (seed, int(a), int(b), jittered, snapped, many_fonts) for a, b in itertools.pairwise(bounds)
    ]
    if len(chunks) == 1:
        parts = [_chunk(*chunks[0])]
    else:
        with ProcessPoolExecutor(len(chunks)) as pool:
            parts = list(pool.map(_chunk, *zip(*chunks, strict=True)))
    xs = [x for x, _ in parts if len(x)]
    if not xs:
        raise ConfigError(f"no plates in {scenes} scenes of seed {seed}")
    return np.concatenate(xs), np.concatenate([y for _, y in parts])


def _chunk(
    seed: int,
    start: int,
    stop: int,
    jittered: int = 1,
    snapped: bool = True,
    many_fonts: bool = False,
) -> tuple[np.ndarray, np.ndarray]:
    xs: list[np.ndarray] = []
    ys: list[int] = []
    index = {ch: i for i, ch in enumerate(CLASSES)}
    for i in range(start, stop):
        with drawn_in_training_fonts(seed, i, many_fonts):
            s = make_sample(seed, i)
        if not s.text or s.quad is None:
            continue
        rng = np.random.default_rng([seed, i, 1])
        for crop in _crops(as_decoded(s), s.quad, rng, jittered, snapped):
            feats = cell_features(crop, len(s.text))
            if feats is None:
                continue
            xs.append(feats)
            ys.extend(index[ch] for ch in s.text)
    if not xs:
        return np.empty((0, PIXELS), np.float32), np.empty(0, np.int64)
    return np.concatenate(xs), np.array(ys, np.int64)


def fit(x: np.ndarray, y: np.ndarray, hidden: int, epochs: int, seed: int) -> dict[str, np.ndarray]:
    """Two-layer perceptron weights on ``features(x)``, every class of ``CLASSES`` present (unseen
    ones never win)."""
    from sklearn.exceptions import ConvergenceWarning
    from sklearn.neural_network import MLPClassifier
    from threadpoolctl import threadpool_limits

    mlp = MLPClassifier(
        hidden_layer_sizes=(hidden,),
        alpha=1e-4,
        batch_size=min(256, len(y)),
        learning_rate_init=2e-3,
        max_iter=epochs,
        random_state=seed,
        shuffle=True,
        tol=1e-5,
        n_iter_no_change=max(epochs, 2),
    )
    with threadpool_limits(1), warnings.catch_warnings():  # one thread: the same sums each run
        warnings.simplefilter("ignore", ConvergenceWarning)
        mlp.fit(features(x), y)
    w2 = np.zeros((hidden, len(CLASSES)), np.float32)
    b2 = np.full(len(CLASSES), -30.0, np.float32)
    seen = mlp.classes_.astype(np.int64)
    out_w, out_b = mlp.coefs_[1], mlp.intercepts_[1]
    if len(seen) == 2:  # sklearn keeps one logit for two classes
        out_w = np.concatenate([-out_w, out_w], axis=1) / 2
        out_b = np.concatenate([-out_b, out_b]) / 2
    w2[:, seen], b2[seen] = out_w, out_b
    return {
        "w1": mlp.coefs_[0].astype(np.float32),
        "b1": mlp.intercepts_[0].astype(np.float32),
        "w2": w2,
        "b2": b2,
        "classes": np.array(CLASSES),
    }


def weights_sha256(weights: dict[str, np.ndarray]) -> str:
    h = hashlib.sha256()
    for k in ("w1", "b1", "w2", "b2"):
        h.update(np.ascontiguousarray(weights[k], np.float32).tobytes())
    return h.hexdigest()


def _save(out: Path, weights: dict[str, Any]) -> None:
    """The weights of a fitted perceptron as the ``.npz`` the reader loads."""
    out.parent.mkdir(parents=True, exist_ok=True)
    keys = ("w1", "b1", "w2", "b2", "classes")
    np.savez_compressed(out, **{k: weights[k] for k in keys})


def train(
    out: Path,
    seed: int = 5100,
    scenes: int = 9000,
    hidden: int = 256,
    epochs: int = 40,
    jobs: int = 1,
    jittered: int = 1,
    snapped: bool = True,
    many_fonts: bool = True,
) -> dict[str, Any]:
    """Generate, fit and write the model to ``out``; returns a summary with the weights' hash."""
    if seed in RESERVED_SEEDS:
        raise ConfigError(f"seed {seed} is an evaluation set (TUNE 100, TEST 900): pick another")
    if not 1 <= scenes <= 200_000 or not 4 <= hidden <= 2048 or not 1 <= epochs <= 1000:
        raise ConfigError("--scenes 1..200000, --hidden 4..2048, --epochs 1..1000")
    if not 1 <= jobs <= 64:
        raise ConfigError("--jobs 1..64")
    if not 0 <= jittered <= 16:
        raise ConfigError("--jittered 0..16")
    t0 = time.perf_counter()
    x, y = make_cells(seed, scenes, jobs, jittered, snapped, many_fonts)
    t1 = time.perf_counter()
    weights = fit(x, y, hidden, epochs, seed)
    t2 = time.perf_counter()
    _save(out, weights)
    probs_ok = _train_accuracy(weights, x, y)
    return {
        "out": str(out),
        "bytes": out.stat().st_size,
        "seed": seed,
        "scenes": scenes,
        "cells": len(y),
        "features": FEATURES,
        "hidden": hidden,
        "epochs": epochs,
        "jittered": jittered,
        "snapped": snapped,
        "many_fonts": many_fonts,
        "train_cell_accuracy": round(probs_ok, 4),
        "weights_sha256": weights_sha256(weights),
        "seconds": {"data": round(t1 - t0, 1), "fit": round(t2 - t1, 1)},
    }


def train_province(
    out: Path = PROVINCE_PATH,
    seed: int = 6100,
    plates: int = 24_000,
    hidden: int = 128,
    epochs: int = 30,
    jobs: int = 1,
    many_fonts: bool = True,
) -> dict[str, Any]:
    """Fit the province classifier (``province.ProvinceCheck``) on rendered, degraded plates
    (``many_fonts``: drawn in ``fonts.training_fonts``'s pairs, not all in the synth default)."""
    if seed in RESERVED_SEEDS:
        raise ConfigError(f"seed {seed} is an evaluation set (TUNE 100, TEST 900): pick another")
    if not 1 <= plates <= 1_000_000 or not 4 <= hidden <= 2048 or not 1 <= epochs <= 1000:
        raise ConfigError("--scenes 1..1000000, --hidden 4..2048, --epochs 1..1000")
    if not 1 <= jobs <= 64:
        raise ConfigError("--jobs 1..64")
    t0 = time.perf_counter()
    bounds = np.linspace(0, plates, max(1, min(jobs, plates)) + 1).astype(int)
    starts, stops = [int(a) for a in bounds[:-1]], [int(b) for b in bounds[1:]]
    if len(starts) == 1:
        parts = [make_province_cells(seed, starts[0], stops[0], many_fonts)]
    else:
        with ProcessPoolExecutor(len(starts)) as pool:
            fonts = [many_fonts] * len(starts)
            parts = list(pool.map(make_province_cells, [seed] * len(starts), starts, stops, fonts))
    x = np.concatenate([p[0] for p in parts])
    y = np.concatenate([p[1] for p in parts])
    if not len(y):
        raise ConfigError(f"no province cells in {plates} plates of seed {seed}")
    t1 = time.perf_counter()
    weights = fit(x, y, hidden, epochs, seed)
    t2 = time.perf_counter()
    _save(out, weights)
    return {
        "out": str(out),
        "bytes": out.stat().st_size,
        "model": "province",
        "seed": seed,
        "plates": plates,
        "many_fonts": many_fonts,
        "cells": len(y),
        "hidden": hidden,
        "epochs": epochs,
        "train_cell_accuracy": round(_train_accuracy(weights, x, y), 4),
        "weights_sha256": weights_sha256(weights),
        "seconds": {"data": round(t1 - t0, 1), "fit": round(t2 - t1, 1)},
    }


def _train_accuracy(w: dict[str, np.ndarray], x: np.ndarray, y: np.ndarray) -> float:
    h = np.maximum(features(x) @ w["w1"] + w["b1"], 0.0)
    return float(((h @ w["w2"] + w["b2"]).argmax(axis=1) == y).mean())


def main(argv: list[str]) -> dict[str, Any]:
    """``carpulse plates train``."""
    if "--line" in argv:  # the plate-line recogniser has its own options
        from models.plates import train_line

        return train_line.main([a for a in argv if a != "--line"])
    if "--rec" in argv:  # so has PP-OCR's neck and head
        from models.plates import train_rec

        return train_rec.main([a for a in argv if a != "--rec"])
    if "--find" in argv:  # so has the plate finder
        from models.plates import train_find

        return train_find.main([a for a in argv if a != "--find"])
    ap = argparse.ArgumentParser(prog="carpulse plates train", description=__doc__)
    ap.add_argument("--out", type=Path, default=None, help="model file to write (.npz)")
    ap.add_argument("--seed", type=int, default=None, help="synthetic seed (not 100 or 900)")
    ap.add_argument("--scenes", type=int, default=None, help="synthetic photos to train on (9000)")
    ap.add_argument("--hidden", type=int, default=None, help="hidden units (256)")
    ap.add_argument("--epochs", type=int, default=None, help="passes over the cells (40)")
    ap.add_argument(
        "--jobs", type=int, default=1, help="processes making photos (same result for any value)"
    )
    ap.add_argument(
        "--jittered", type=int, default=1, help="crops from jittered true corners per photo"
    )
    ap.add_argument(
        "--no-snapped",
        action="store_true",
        help="leave out the crop snapped to the character row (the reader's cell crop)",
    )
    ap.add_argument(
        "--line",
        action="store_true",
        help="train the plate-line recogniser instead (CTC, exported to ONNX; "
        "--line --help for its options)",
    )
    ap.add_argument(
        "--rec",
        action="store_true",
        help="fit PP-OCR's recogniser neck and head to plates instead (plate_rec_neck.npz; "
        "--rec --help for its options)",
    )
    ap.add_argument(
        "--province",
        action="store_true",
        help="train the province classifier instead (defaults: --out plate_province.npz, "
        "--seed 6100, --scenes 24000 rendered plates, --hidden 128, --epochs 30)",
    )
    ap.add_argument(
        "--many-fonts",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="draw the training plates in many fonts (models/plates/fonts.py; the default, as "
        "the shipped models were made), or all in Noto Sans CJK Bold as before the eleventh "
        "session (--no-many-fonts)",
    )
    args = ap.parse_args(argv)
    if args.province:
        return train_province(
            args.out if args.out is not None else PROVINCE_PATH,
            6100 if args.seed is None else args.seed,
            24_000 if args.scenes is None else args.scenes,
            128 if args.hidden is None else args.hidden,
            30 if args.epochs is None else args.epochs,
            args.jobs,
            args.many_fonts,
        )
    return train(
        args.out if args.out is not None else MODEL_PATH,
        5100 if args.seed is None else args.seed,
        9000 if args.scenes is None else args.scenes,
        256 if args.hidden is None else args.hidden,
        40 if args.epochs is None else args.epochs,
        args.jobs,
        args.jittered,
        not args.no_snapped,
        args.many_fonts,
    )
