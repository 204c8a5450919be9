"""``carpulse plates train --find``: fit the plate finder (``models.plates.find``) and export it to ONNX.

Training frames come from ``synth.make_sample`` with seeds of their own (never an evaluation seed),
through the JPEG round trip the evaluation's photos go through. Each photo is placed at a random
spot of a larger canvas (a plate smaller in the frame, portrait frames as well as landscape), twice,
and letterboxed to the net's input. A cell is a plate centre when its centre lies in the plate's
middle (the quad shrunk towards its centroid), and the centroid's own cell always is. The fit uses
JAX (``pip install 'carpulse[models]'``): focal loss on the score, smooth L1 on the corners of the
centre cells, Adam with cosine decay, one fixed seed. The ONNX graph (Conv, Relu) is written with
``onnx.helper`` and checked against ``find.reference_out`` before it is saved.
"""

from __future__ import annotations

import argparse
import hashlib
import time
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path
from typing import Any

import cv2
import numpy as np

from core.errors import ConfigError
from models.plates.crops import as_decoded
from models.plates.find import (
    ARCH,
    CELLS,
    FIND_PATH,
    HEAD,
    OFFSET_SCALE,
    SIDE,
    STRIDE,
    letterbox,
    reference_out,
)
from models.plates.synth import make_sample
from models.plates.train_line import RESERVED_SEEDS

CENTRE_SHRINK = 0.4  # the plate's middle: its quad shrunk to this share around the centroid
NO_QUAD = np.full((4, 2), np.nan, np.float32)


def _canvas(image: np.ndarray, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """``image`` at a random spot of a larger canvas (paint in a vertical gradient); returns the
    canvas and the image's offset in it."""
    h, w = image.shape[:2]
    if rng.random() < 0.4:  # portrait, as a phone or a high-mounted gate camera gives
        ch, cw = round(w * rng.uniform(1.1, 1.9)), round(w * rng.uniform(1.0, 1.2))
    else:
        ch, cw = round(h * rng.uniform(1.0, 1.8)), round(w * rng.uniform(1.0, 1.8))
    ch, cw = max(ch, h), max(cw, w)
    base = rng.uniform(20, 230, 3)
    grad = np.linspace(rng.uniform(0.5, 1.0), rng.uniform(1.0, 1.4), ch)
    rows = np.clip(grad[:, None] * base[None, :], 0, 255).astype(np.uint8)
    canvas = np.empty((ch, cw, 3), np.uint8)
    canvas[:] = rows[:, None, :]
    y0, x0 = int(rng.integers(0, ch - h + 1)), int(rng.integers(0, cw - w + 1))
    canvas[y0 : y0 + h, x0 : x0 + w] = image
    return canvas, np.array([x0, y0], np.float32)


def _distract(image: np.ndarray, quad: np.ndarray | None, rng: np.random.Generator) -> None:
    """Draw things a finder must not take for a plate, away from the plate (in place): a radiator
    grille (parallel bars in a plate-shaped box) and a line of text with no plate around it."""
    h, w = image.shape[:2]
    centre = quad.mean(axis=0) if quad is not None else None
    reach = float(np.linalg.norm(quad[1] - quad[0])) if quad is not None else 0.0
    for _ in range(int(rng.integers(1, 4))):
        bw = float(rng.uniform(0.1, 0.45)) * w
        bh = bw / float(rng.uniform(1.5, 5.0))
        x, y = float(rng.uniform(0, w - bw)), float(rng.uniform(0, h - bh))
        if centre is not None and np.hypot(x + bw / 2 - centre[0], y + bh / 2 - centre[1]) < reach:
            continue
        box = (int(x), int(y), int(x + bw), int(y + bh))
        dark, light = rng.uniform(0, 90, 3).tolist(), rng.uniform(120, 255, 3).tolist()
        if rng.random() < 0.6:  # a grille: bars across or along the box
            cv2.rectangle(image, box[:2], box[2:], dark, -1)
            n = int(rng.integers(3, 12))
            along = rng.random() < 0.5
            for k in range(n):
                if along:
                    yy = int(y + (k + 0.5) * bh / n)
                    cv2.line(image, (box[0], yy), (box[2], yy), light, max(1, int(bh / n / 3)))
                else:
                    xx = int(x + (k + 0.5) * bw / n)
                    cv2.line(image, (xx, box[1]), (xx, box[3]), light, max(1, int(bw / n / 3)))
        else:  # a sign's or a sticker's text, no plate frame
            chars = "ABCDEFGHJKLMNPQRSTUVWXYZ0123456789"
            text = "".join(chars[int(rng.integers(len(chars)))] for _ in range(rng.integers(3, 9)))
            scale = bh / 30.0
            cv2.putText(image, text, (box[0], box[3]), int(rng.integers(0, 8)), scale, light, 2)


def _frames(
    seed: int, start: int, stop: int, per_photo: int, distract: float = 0.0
) -> tuple[np.ndarray, np.ndarray]:
    """Frames ``start..stop`` of ``seed`` as letterboxed uint8 inputs ``[N, SIDE, SIDE, 3]`` and
    their plate quads in input pixels ``[N, 4, 2]`` (NaN: no plate); ``distract``: the share of
    photos given a grille or a line of text away from the plate."""
    xs, quads = [], []
    for i in range(start, stop):
        s = make_sample(seed, i)
        image = as_decoded(s)
        rng = np.random.default_rng([seed, i, 1])
        busy = np.random.default_rng([seed, i, 2])  # its own draws: the canvases stay the same
        if distract > 0 and busy.random() < distract:
            _distract(image, s.quad, busy)
        for _ in range(per_photo):
            canvas, offset = _canvas(image, rng)
            x, scale = letterbox(canvas)
            xs.append(np.clip((x.transpose(1, 2, 0) + 0.5) * 255.0 + 0.5, 0, 255).astype(np.uint8))
            quads.append((s.quad + offset) * scale if s.quad is not None else NO_QUAD)
    return np.stack(xs), np.stack(quads).astype(np.float32)


def make_frames(
    seed: int, photos: int, per_photo: int = 2, jobs: int = 1, distract: float = 0.0
) -> tuple[np.ndarray, np.ndarray]:
    """The training frames (the same for any ``jobs``)."""
    bounds = [(seed, a, min(a + 250, photos), per_photo, distract) for a in range(0, photos, 250)]
    if jobs > 1:
        with ProcessPoolExecutor(jobs) as pool:
            parts = list(pool.map(_frames, *zip(*bounds, strict=True)))
    else:
        parts = [_frames(*b) for b in bounds]
    return np.concatenate([p[0] for p in parts]), np.concatenate([p[1] for p in parts])


def targets(quads: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Score targets ``[N, CELLS, CELLS]`` (1 at a plate's centre cells) and corner offsets
    ``[N, 8, CELLS, CELLS]`` (in ``OFFSET_SCALE`` units, from each cell's centre)."""
    n = len(quads)
    obj = np.zeros((n, CELLS, CELLS), np.float32)
    off = np.zeros((n, 8, CELLS, CELLS), np.float32)
    centres = (np.arange(CELLS, dtype=np.float32) + 0.5) * STRIDE
    for k, quad in enumerate(quads):
        if not np.all(np.isfinite(quad)):
            continue
        mid = quad.mean(axis=0)
        inner = (mid + (quad - mid) * CENTRE_SHRINK) / STRIDE - 0.5  # in cell units
        mask = np.zeros((CELLS, CELLS), np.uint8)
        cv2.fillPoly(mask, [np.round(inner * 16).astype(np.int32)], 1, shift=4)
        ci, cj = int(mid[1] // STRIDE), int(mid[0] // STRIDE)
        if 0 <= ci < CELLS and 0 <= cj < CELLS:
            mask[ci, cj] = 1
        obj[k] = mask
        for c in range(4):
            off[k, 2 * c] = (quad[c, 0] - centres[None, :]) / OFFSET_SCALE
            off[k, 2 * c + 1] = (quad[c, 1] - centres[:, None]) / OFFSET_SCALE
    return obj, off


def load_params(path: Path) -> dict[str, np.ndarray]:
    """The weights of a finder ONNX model (to go on fitting from)."""
    import onnx
    from onnx import numpy_helper

    if not path.exists():
        raise ConfigError(f"--init {path} does not exist")
    try:
        model = onnx.load(str(path))
    except Exception as err:  # onnx raises its own untyped errors
        raise ConfigError(f"--init {path}: not an ONNX model ({err})") from err
    params = {t.name: numpy_helper.to_array(t).astype(np.float32) for t in model.graph.initializer}
    want = init_params(0)
    if set(params) != set(want) or any(params[k].shape != v.shape for k, v in want.items()):
        raise ConfigError(f"--init {path}: not a plate finder of this shape")
    return params


def init_params(seed: int) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    params: dict[str, np.ndarray] = {}
    cin = 3
    for i, (cout, _, _) in enumerate(ARCH):
        std = np.sqrt(2.0 / (cin * 9))
        params[f"c{i}_w"] = (rng.normal(0, std, (cout, cin, 3, 3))).astype(np.float32)
        params[f"c{i}_b"] = np.zeros(cout, np.float32)
        cin = cout
    params["head_w"] = (rng.normal(0, 0.01, (HEAD, cin, 1, 1))).astype(np.float32)
    head_b = np.zeros(HEAD, np.float32)
    head_b[0] = -4.0  # a plate centre is rare: start near its prior
    params["head_b"] = head_b
    return params


def _jax_out(params: Any, x: Any) -> Any:
    import jax

    h = x
    for i, (_, stride, dil) in enumerate(ARCH):
        h = jax.lax.conv_general_dilated(
            h,
            params[f"c{i}_w"],
            (stride, stride),
            ((dil, dil), (dil, dil)),
            rhs_dilation=(dil, dil),
        )
        h = jax.nn.relu(h + params[f"c{i}_b"][None, :, None, None])
    h = jax.lax.conv_general_dilated(h, params["head_w"], (1, 1), ((0, 0), (0, 0)))
    return h + params["head_b"][None, :, None, None]


def fit(
    frames: np.ndarray,
    quads: np.ndarray,
    epochs: int,
    seed: int,
    lr: float = 2e-3,
    batch: int = 32,
    progress: Any = None,
    init: dict[str, np.ndarray] | None = None,
) -> tuple[dict[str, np.ndarray], list[float]]:
    """Adam on focal loss (score) plus smooth L1 (corners of the centre cells)."""
    try:
        import jax
        import jax.numpy as jnp
        import optax
    except ImportError as err:
        raise ConfigError("training needs JAX: pip install 'carpulse[models]'") from err
    obj_all, off_all = targets(quads)
    steps = epochs * max(1, len(frames) // batch)
    opt = optax.adam(optax.cosine_decay_schedule(lr, max(1, steps), 0.02))
    start = init if init is not None else init_params(seed)
    params = {k: jnp.asarray(v) for k, v in start.items()}
    state = opt.init(params)

    def loss_fn(p: Any, xb: Any, ob: Any, fb: Any) -> Any:
        out = _jax_out(p, xb)
        logit = out[:, 0]
        prob = jax.nn.sigmoid(logit)
        ce = optax.sigmoid_binary_cross_entropy(logit, ob)
        weight = jnp.where(ob > 0.5, (1 - prob) ** 2, prob**2)
        npos = jnp.maximum(ob.sum(), 1.0)
        focal = (weight * ce).sum() / npos
        diff = jnp.abs(out[:, 1:] - fb)
        smooth = jnp.where(diff < 0.1, 5.0 * diff**2, diff - 0.05)
        reg = (smooth.sum(axis=1) * ob).sum() / npos
        return focal + reg

    @jax.jit
    def step(p: Any, s: Any, xb: Any, ob: Any, fb: Any) -> Any:
        loss, grads = jax.value_and_grad(loss_fn)(p, xb, ob, fb)
        updates, s = opt.update(grads, s, p)
        return optax.apply_updates(p, updates), s, loss

    rng = np.random.default_rng(seed)
    history = []
    for epoch in range(epochs):
        order = rng.permutation(len(frames))
        losses = []
        for a in range(0, len(order) - batch + 1, batch):
            idx = np.sort(order[a : a + batch])
            xb = standardise(frames[idx])
            params, state, loss = step(params, state, xb, obj_all[idx], off_all[idx])
            losses.append(float(loss))
        history.append(float(np.mean(losses)) if losses else float("nan"))
        if progress is not None:
            progress(epoch + 1, epochs, history[-1])
    return {k: np.asarray(v, np.float32) for k, v in params.items()}, history


def standardise(frames: np.ndarray) -> np.ndarray:
    """uint8 ``[N, SIDE, SIDE, 3]`` -> the net's float32 ``[N, 3, SIDE, SIDE]`` (as ``letterbox``)."""
    return frames.transpose(0, 3, 1, 2).astype(np.float32) / 255.0 - 0.5


def to_onnx(params: dict[str, np.ndarray]) -> bytes:
    from onnx import TensorProto, helper, numpy_helper

    inits = [
        numpy_helper.from_array(np.ascontiguousarray(v, np.float32), k) for k, v in params.items()
    ]
    nodes = []
    cur = "x"
    for i, (_, stride, dil) in enumerate(ARCH):
        nodes.append(
            helper.make_node(
                "Conv",
                [cur, f"c{i}_w", f"c{i}_b"],
                [f"conv{i}"],
                pads=[dil] * 4,
                strides=[stride, stride],
                dilations=[dil, dil],
            )
        )
        nodes.append(helper.make_node("Relu", [f"conv{i}"], [f"relu{i}"]))
        cur = f"relu{i}"
    nodes.append(helper.make_node("Conv", [cur, "head_w", "head_b"], ["out"]))
    graph = helper.make_graph(
        nodes,
        "carpulse_plate_find",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["n", 3, SIDE, SIDE])],
        [helper.make_tensor_value_info("out", TensorProto.FLOAT, ["n", HEAD, CELLS, CELLS])],
        inits,
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    return bytes(model.SerializeToString())


def check_export(blob: bytes, params: dict[str, np.ndarray], x: np.ndarray) -> float:
    """Largest absolute difference of the ONNX model from ``reference_out`` on ``x``."""
    import onnxruntime as ort

    sess = ort.InferenceSession(blob, providers=["CPUExecutionProvider"])
    got = sess.run(None, {"x": x})[0]
    return float(np.abs(got - reference_out(params, x)).max())


def recall(params: dict[str, np.ndarray], frames: np.ndarray, quads: np.ndarray) -> float:
    """Share of the plates whose best-scoring cell is one of their centre cells (a quick check)."""
    obj, _ = targets(quads)
    has = np.isfinite(quads).all(axis=(1, 2))
    if not has.any():
        return float("nan")
    hits = 0
    for a in range(0, len(frames), 64):
        out = reference_out(params, standardise(frames[a : a + 64]))[:, 0]
        for k in range(len(out)):
            if has[a + k]:
                i, j = np.unravel_index(int(np.argmax(out[k])), out[k].shape)
                hits += bool(obj[a + k, i, j])
    return hits / int(has.sum())


def train(
    out: Path = FIND_PATH,
    seed: int = 27_000,
    photos: int = 8_000,
    epochs: int = 8,
    jobs: int = 1,
    lr: float = 2e-3,
    cache: Path | None = None,
    progress: Any = None,
    init: Path | None = None,
    distract: float = 0.0,
) -> dict[str, Any]:
    """Make frames, fit, export to ``out``; returns a summary with the model's SHA-256."""
    if seed in RESERVED_SEEDS:
        raise ConfigError(f"seed {seed} is an evaluation set: pick another")
    if not 1 <= photos <= 500_000 or not 1 <= epochs <= 500 or not 1 <= jobs <= 64:
        raise ConfigError("--photos 1..500000, --epochs 1..500, --jobs 1..64")
    if not 1e-6 <= lr <= 1.0:
        raise ConfigError("--lr 1e-6..1")
    if not 0.0 <= distract <= 1.0:
        raise ConfigError("--distract 0..1")
    start = load_params(init) if init is not None else None
    t0 = time.perf_counter()
    if cache is not None and cache.exists():
        with np.load(cache) as z:
            frames, quads = z["frames"], z["quads"]
    else:
        frames, quads = make_frames(seed, photos, jobs=jobs, distract=distract)
        if cache is not None:
            np.savez(cache, frames=frames, quads=quads)
    t1 = time.perf_counter()
    hold = max(1, len(frames) // 20)  # the last 5 % checks the fit, not trained on
    params, history = fit(
        frames[:-hold], quads[:-hold], epochs, seed, lr, progress=progress, init=start
    )
    t2 = time.perf_counter()
    blob = to_onnx(params)
    err = check_export(blob, params, standardise(frames[:4]))
    if not err < 1e-3:
        raise ConfigError(f"ONNX export differs from the reference by {err}")
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_bytes(blob)
    return {
        "out": str(out),
        "bytes": len(blob),
        "sha256": hashlib.sha256(blob).hexdigest(),
        "seed": seed,
        "init": str(init) if init is not None else None,
        "distract": distract,
        "frames": len(frames),
        "epochs": epochs,
        "loss": [round(v, 4) for v in history],
        "held_back_frames": hold,
        "held_back_centre_recall": round(recall(params, frames[-hold:], quads[-hold:]), 4),
        "export_max_abs_error": err,
        "seconds": {"data": round(t1 - t0, 1), "fit": round(t2 - t1, 1)},
    }


def main(argv: list[str]) -> dict[str, Any]:
    """``carpulse plates train --find``."""
    import sys

    ap = argparse.ArgumentParser(prog="carpulse plates train --find", description=__doc__)
    ap.add_argument("--out", type=Path, default=FIND_PATH, help="model file to write (.onnx)")
    ap.add_argument("--seed", type=int, default=27_000, help="training seed (not an eval seed)")
    ap.add_argument("--photos", type=int, default=8_000, help="synthetic photos (2 frames each)")
    ap.add_argument("--epochs", type=int, default=8, help="passes over the frames")
    ap.add_argument("--jobs", type=int, default=1, help="processes making frames (same result)")
    ap.add_argument("--lr", type=float, default=2e-3, help="peak learning rate (cosine decay)")
    ap.add_argument(
        "--cache", type=Path, default=None, help="keep the frames in this .npz (read back)"
    )
    ap.add_argument("--init", type=Path, default=None, help="go on from this model's weights")
    ap.add_argument(
        "--distract",
        type=float,
        default=0.0,
        help="share of photos given a grille or a line of text away from the plate (0..1)",
    )
    args = ap.parse_args(argv)

    def progress(epoch: int, total: int, loss: float) -> None:
        print(f"epoch {epoch}/{total}: loss {loss:.4f}", file=sys.stderr, flush=True)

    return train(
        args.out,
        args.seed,
        args.photos,
        args.epochs,
        args.jobs,
        args.lr,
        args.cache,
        progress,
        args.init,
        args.distract,
    )
