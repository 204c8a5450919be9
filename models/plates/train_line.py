"""``carpulse plates train --line``: fit the plate-line recogniser (``models.plates.line``) and export it
to ONNX.

Training crops come from two generators, both deterministic from their seed and never from the
evaluation seeds: synthetic gate photos (``synth.make_sample``, JPEG round trip) cut as the reader
cuts them (its own corner fit, plus crops from jittered true corners, loose and tight), and single
rendered plates shrunk, degraded and warped from moved corners. The fit uses JAX (``pip install
'carpulse[models]'``; the reader itself needs only onnxruntime): CTC loss, Adam, one fixed seed. The
ONNX graph is written with ``onnx.helper`` from the weights (Conv, Relu, MaxPool, Reshape, MatMul),
and checked against ``line.reference_logits`` before it is saved.
"""

from __future__ import annotations

import argparse
import hashlib
import itertools
import time
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path
from typing import Any

import cv2
import numpy as np

from core.errors import ConfigError
from models.plates.crops import as_decoded, locator_crop
from models.plates.fonts import drawn_in_training_fonts
from models.plates.line import (
    ALPHABET,
    ARCH,
    CHARSET,
    HEIGHT,
    LINE_PATH,
    SEQ_CHANNELS,
    WIDTH,
    reference_logits,
)
from models.plates.quad import warp_quad
from models.plates.reader import _split_rows
from models.plates.syntax import KINDS, TEMPLATES
from models.plates.synth import (
    degraded_plate,
    make_sample,
    random_text,
    render_plate,
)

# Evaluation seeds of this and earlier sessions (synthetic TUNE and held-out sets): never trained on.
RESERVED_SEEDS = frozenset(
    (100, 101, 900, 5151, 6262, 7373, 9100, 9101, 9998, 9999, *range(31001, 31041), 41001, 41002)
)
# The longest plate (the old armed-police WJ plates have nine characters). Until the tenth session
# this was 8 (v3 saw those plates' last character cut off); v4 of the eleventh is fitted with 9.
MAX_LABEL = max(len(t) for t in TEMPLATES)
_INDEX = {ch: i + 1 for i, ch in enumerate(CHARSET)}
_SINGLE_ROW_KINDS = tuple(k for k, _, _ in KINDS)


def _grey(crop: np.ndarray) -> np.ndarray:
    grey = cv2.cvtColor(crop, cv2.COLOR_BGR2GRAY) if crop.ndim == 3 else crop
    return np.asarray(cv2.resize(grey, (WIDTH, HEIGHT), interpolation=cv2.INTER_AREA), np.uint8)


def _photo_crops(
    seed: int, i: int, two_row: float = 0.0, jittered: int = 2, taller: float = 1.35
) -> tuple[list[np.ndarray], str]:
    """Crops of synthetic photo ``i`` and its text: the reader's locator crop and ``jittered``
    crops from jittered true corners (up to ``taller`` times the plate's height). ``two_row``:
    the share of two-row plates (``make_sample``), laid out as the reader lays them out."""
    s = make_sample(seed, i, two_row=two_row)
    if not s.text or s.quad is None:
        return [], ""
    rng = np.random.default_rng([seed, i, 11])
    image = as_decoded(s)
    quad = s.quad
    # Looser locator boxes than the cells' training crops (the line model reads the loose crop).
    out = [locator_crop(image, quad, rng, (0.92, 1.12), (0.9, 1.25))[0]]
    width = float(np.linalg.norm(quad[1] - quad[0]))
    height = float(np.linalg.norm(quad[3] - quad[0]))
    centre = quad.mean(axis=0)
    for _ in range(jittered):
        grow = np.array([rng.uniform(0.95, 1.12), rng.uniform(0.9, taller)])
        jitter = rng.normal(0, 1, (4, 2)) * np.array([0.015 * width, 0.05 * height])
        q = centre + (quad - centre) * grow + jitter
        out.append(warp_quad(image, q.astype(np.float32)))
    if s.conditions.get("two_row", 0.0) > 0:
        out = [_split_rows(c) for c in out]
    return out, s.text


def _rendered_crop(seed: int, i: int) -> tuple[np.ndarray, str]:
    rng = np.random.default_rng([seed, i, 13])
    kind = _SINGLE_ROW_KINDS[int(rng.integers(len(_SINGLE_ROW_KINDS)))]
    text = random_text(kind, rng)
    plate = render_plate(text, kind, rng)
    ph, pw = plate.shape[:2]
    img, pad, scale = degraded_plate(
        plate, rng, width_px=(45, 300), night=(0.15, 0.45), haze_max=0.45, jpeg=(50, 96)
    )
    p = pad * scale
    corners = np.array(
        [[p, p], [p + pw * scale, p], [p + pw * scale, p + ph * scale], [p, p + ph * scale]],
        np.float32,
    )
    grow = np.array([rng.uniform(0.95, 1.12), rng.uniform(0.9, 1.35)], np.float32)
    centre = corners.mean(axis=0)
    jitter = rng.normal(0, 1, (4, 2)) * np.array([0.015 * pw * scale, 0.05 * ph * scale])
    q = centre + (corners - centre) * grow + jitter
    return warp_quad(img, q.astype(np.float32)), text


def _chunk(seed: int, start: int, stop: int, rendered: bool) -> tuple[np.ndarray, list[str]]:
    xs: list[np.ndarray] = []
    ys: list[str] = []
    for i in range(start, stop):
        with drawn_in_training_fonts(seed, i):
            if rendered:
                crop, text = _rendered_crop(seed, i)
                crops = [crop]
            else:
                crops, text = _photo_crops(seed, i)
        for c in crops:
            if c.shape[0] >= 4 and c.shape[1] >= 8:
                xs.append(_grey(c))
                ys.append(text)
    if not xs:
        return np.empty((0, HEIGHT, WIDTH), np.uint8), []
    return np.stack(xs), ys


def make_lines(
    seed: int, photos: int, rendered: int, jobs: int = 1
) -> tuple[np.ndarray, list[str]]:
    """``(grey crops [N, HEIGHT, WIDTH] uint8, texts)``: 3 crops per synthetic photo with a plate,
    one per rendered plate; the same for any ``jobs``."""
    chunks: list[tuple[int, int, int, bool]] = []
    for n, kind_rendered, s in ((photos, False, seed), (rendered, True, seed + 1)):
        if n <= 0:
            continue
        bounds = np.linspace(0, n, max(1, min(jobs * 4, n)) + 1).astype(int)
        chunks += [(s, int(a), int(b), kind_rendered) for a, b in itertools.pairwise(bounds)]
    if jobs == 1:
        parts = [_chunk(*c) for c in chunks]
    else:
        with ProcessPoolExecutor(jobs) as pool:
            parts = list(pool.map(_chunk, *zip(*chunks, strict=True)))
    xs = [x for x, _ in parts if len(x)]
    if not xs:
        raise ConfigError("no training crops")
    return np.concatenate(xs), [t for _, ys in parts for t in ys]


def encode_labels(texts: list[str]) -> tuple[np.ndarray, np.ndarray]:
    """Class indices ``[N, MAX_LABEL]`` and padding masks (1 = padding)."""
    lab = np.zeros((len(texts), MAX_LABEL), np.int32)
    pad = np.ones((len(texts), MAX_LABEL), np.float32)
    for r, t in enumerate(texts):
        if len(t) > MAX_LABEL:
            raise ConfigError(f"{t!r} is longer than any plate ({MAX_LABEL})")
        for c, ch in enumerate(t):
            lab[r, c] = _INDEX[ch]
            pad[r, c] = 0.0
    return lab, pad


def standardise(x: np.ndarray) -> np.ndarray:
    """uint8 crops ``[N, H, W]`` -> float32 ``[N, 1, H, W]`` as ``line.prepare`` makes them."""
    f = x.astype(np.float32)
    mean = f.mean(axis=(1, 2), keepdims=True)
    std = np.maximum(f.std(axis=(1, 2), keepdims=True), 8.0)
    return ((f - mean) / std)[:, None]


def init_params(seed: int) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    params: dict[str, np.ndarray] = {}
    cin, h = 1, HEIGHT
    for i, (cout, pool) in enumerate(ARCH):
        params[f"c{i}_w"] = rng.normal(0, np.sqrt(2 / (9 * cin)), (cout, cin, 3, 3)).astype(
            np.float32
        )
        params[f"c{i}_b"] = np.zeros(cout, np.float32)
        cin, h = cout, h // pool[0]
    fold = cin * h
    params["s_w"] = rng.normal(0, np.sqrt(2 / (3 * fold)), (SEQ_CHANNELS, fold, 1, 3)).astype(
        np.float32
    )
    params["s_b"] = np.zeros(SEQ_CHANNELS, np.float32)
    params["o_w"] = rng.normal(0, np.sqrt(1 / SEQ_CHANNELS), (SEQ_CHANNELS, len(ALPHABET))).astype(
        np.float32
    )
    params["o_b"] = np.zeros(len(ALPHABET), np.float32)
    return params


def _jax_logits(params: Any, x: Any) -> Any:
    import jax
    import jax.numpy as jnp

    h = x
    for i, (_, pool) in enumerate(ARCH):
        h = jax.lax.conv_general_dilated(
            h,
            params[f"c{i}_w"],
            (1, 1),
            ((1, 1), (1, 1)),
            dimension_numbers=("NCHW", "OIHW", "NCHW"),
        )
        h = jax.nn.relu(h + params[f"c{i}_b"][None, :, None, None])
        h = jax.lax.reduce_window(h, -jnp.inf, jax.lax.max, (1, 1, *pool), (1, 1, *pool), "VALID")
    n, c, hh, ww = h.shape
    h = h.reshape(n, c * hh, 1, ww)
    h = jax.lax.conv_general_dilated(
        h, params["s_w"], (1, 1), ((0, 0), (1, 1)), dimension_numbers=("NCHW", "OIHW", "NCHW")
    )
    h = jax.nn.relu(h + params["s_b"][None, :, None, None])
    h = h[:, :, 0, :].transpose(0, 2, 1)
    return h @ params["o_w"] + params["o_b"]


def fit(
    x: np.ndarray,
    texts: list[str],
    epochs: int,
    seed: int,
    batch: int = 128,
    lr: float = 2e-3,
    progress: Any = None,
    init: dict[str, np.ndarray] | None = None,
    strokes: bool = False,
    elastic: bool = False,
) -> tuple[dict[str, np.ndarray], list[float]]:
    """CTC fit with Adam (cosine decay); returns the weights and the mean loss of each epoch."""
    try:
        import jax
        import jax.numpy as jnp
        import optax
    except ImportError as err:
        raise ConfigError("training needs JAX: pip install 'carpulse[models]'") from err
    labels, label_pad = encode_labels(texts)
    batch = max(1, min(batch, len(x)))
    start = init_params(seed)
    if init is not None:  # go on from a model's weights (same architecture)
        if set(init) != set(start) or any(init[k].shape != start[k].shape for k in start):
            raise ConfigError("--init: the model's weights do not fit this architecture")
        start = init
    params = {k: jnp.asarray(v) for k, v in start.items()}
    steps = epochs * max(1, len(x) // batch)
    opt = optax.adam(optax.cosine_decay_schedule(lr, max(1, steps), 0.02))
    state = opt.init(params)

    def loss_fn(p: Any, xb: Any, lb: Any, pb: Any) -> Any:
        logits = _jax_logits(p, xb)
        lpad = jnp.zeros(logits.shape[:2], jnp.float32)
        return optax.ctc_loss(logits, lpad, lb, pb, blank_id=0).mean()

    @jax.jit
    def step(p: Any, s: Any, xb: Any, lb: Any, pb: Any) -> Any:
        loss, grads = jax.value_and_grad(loss_fn)(p, xb, lb, pb)
        updates, s = opt.update(grads, s, p)
        return optax.apply_updates(p, updates), s, loss

    rng = np.random.default_rng(seed)
    history: list[float] = []
    for epoch in range(epochs):
        order = rng.permutation(len(x))
        losses = []
        for b in range(len(x) // batch):
            idx = order[b * batch : (b + 1) * batch]
            xb = standardise(_augment(x[idx], rng, strokes, elastic))
            params, state, loss = step(params, state, xb, labels[idx], label_pad[idx])
            losses.append(float(loss))
        history.append(float(np.mean(losses)) if losses else float("nan"))
        if progress is not None:
            progress(epoch + 1, epochs, history[-1])
    return {k: np.asarray(v, np.float32) for k, v in params.items()}, history


def _augment(
    x: np.ndarray, rng: np.random.Generator, strokes: bool = False, elastic: bool = False
) -> np.ndarray:
    """Cheap per-batch variety: inverted polarity (white-on-dark plates) and contrast changes;
    with ``strokes`` also ``_restroke``'s stroke weights, blur and slight stretches; with
    ``elastic`` ``_bend``'s smooth warps of the glyphs' shapes."""
    out = x.astype(np.float32)
    flip = rng.random(len(x)) < 0.15
    out[flip] = 255.0 - out[flip]
    gain = rng.uniform(0.6, 1.2, (len(x), 1, 1)).astype(np.float32)
    out = np.clip(out * gain, 0, 255)
    if strokes:
        for k in range(len(out)):
            out[k] = _restroke(out[k], rng)
    if elastic:
        for j in np.flatnonzero(rng.random(len(out)) < 0.7):
            out[j] = _bend(out[j], rng)
    return out


def _bend(img: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """One grey crop with its glyphs' shapes bent (a smooth random displacement of up to 0.8-2
    px, correlated over 2.5-4 px, about a fifth of a character): curves, stroke ends and angles
    change as between two fonts' drawings of a glyph (Simard et al., 2003, elastic distortion)."""
    h, w = img.shape
    sigma = rng.uniform(2.5, 4.0)
    alpha = rng.uniform(0.8, 2.0)
    field = []
    for _ in range(2):
        d = cv2.GaussianBlur(rng.uniform(-1.0, 1.0, (h, w)).astype(np.float32), (0, 0), sigma)
        field.append(d * np.float32(alpha / (float(np.abs(d).max()) + 1e-6)))
    xs, ys = np.meshgrid(np.arange(w, dtype=np.float32), np.arange(h, dtype=np.float32))
    out = cv2.remap(
        img, xs + field[0], ys + field[1], cv2.INTER_LINEAR, borderMode=cv2.BORDER_REPLICATE
    )
    return np.asarray(out, np.float32)


_KERNEL = np.ones((2, 2), np.uint8)


def _restroke(img: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """One grey crop drawn as if in another font weight: the strokes thickened or thinned by part
    of a pixel (a blend with the grey erosion or dilation, either polarity), sometimes blurred, and
    stretched or shifted a little. Fonts differ from each other most in stroke weight and contrast
    (serif against sans), which the training fonts alone do not cover."""
    h, w = img.shape
    out = img
    if rng.random() < 0.6:
        morph = cv2.erode(out, _KERNEL) if rng.random() < 0.5 else cv2.dilate(out, _KERNEL)
        a = rng.uniform(0.3, 1.0)
        out = (1.0 - a) * out + a * morph
    if rng.random() < 0.3:
        out = cv2.GaussianBlur(out, (0, 0), rng.uniform(0.4, 1.0))
    if rng.random() < 0.5:
        sx, sy = rng.uniform(0.92, 1.08), rng.uniform(0.92, 1.08)
        dx, dy = rng.uniform(-2.0, 2.0), rng.uniform(-1.5, 1.5)
        m = np.array(
            [[sx, 0.0, (1 - sx) * w / 2 + dx], [0.0, sy, (1 - sy) * h / 2 + dy]], np.float32
        )
        out = cv2.warpAffine(
            out, m, (w, h), flags=cv2.INTER_LINEAR, borderMode=cv2.BORDER_REPLICATE
        )
    return np.asarray(out, np.float32)


def greedy_text(logits: np.ndarray) -> list[str]:
    best = logits.argmax(axis=-1)
    out = []
    for row in best:
        keep = np.ones(len(row), bool)
        keep[1:] = row[1:] != row[:-1]
        keep &= row != 0
        out.append("".join(ALPHABET[i] for i in row[keep].tolist()))
    return out


def to_onnx(params: dict[str, np.ndarray]) -> bytes:
    """The network as an ONNX graph (opset 17): input ``x`` ``[N, 1, 32, 128]`` -> ``logits``
    ``[N, 32, classes]``."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    nodes = []
    inits = [
        numpy_helper.from_array(np.ascontiguousarray(v, np.float32), k) for k, v in params.items()
    ]
    h, cur, cin = HEIGHT, "x", 1
    for i, (cout, pool) in enumerate(ARCH):
        nodes.append(
            helper.make_node("Conv", [cur, f"c{i}_w", f"c{i}_b"], [f"conv{i}"], pads=[1, 1, 1, 1])
        )
        nodes.append(helper.make_node("Relu", [f"conv{i}"], [f"relu{i}"]))
        nodes.append(
            helper.make_node(
                "MaxPool", [f"relu{i}"], [f"pool{i}"], kernel_shape=list(pool), strides=list(pool)
            )
        )
        cur, cin, h = f"pool{i}", cout, h // pool[0]
    cols = WIDTH // int(np.prod([p[1] for _, p in ARCH]))
    inits.append(numpy_helper.from_array(np.array([0, cin * h, 1, cols], np.int64), "fold_shape"))
    nodes.append(helper.make_node("Reshape", [cur, "fold_shape"], ["folded"]))
    nodes.append(helper.make_node("Conv", ["folded", "s_w", "s_b"], ["seq"], pads=[0, 1, 0, 1]))
    nodes.append(helper.make_node("Relu", ["seq"], ["seq_relu"]))
    inits.append(numpy_helper.from_array(np.array([2], np.int64), "squeeze_axes"))
    nodes.append(helper.make_node("Squeeze", ["seq_relu", "squeeze_axes"], ["seq2"]))
    nodes.append(helper.make_node("Transpose", ["seq2"], ["seq_t"], perm=[0, 2, 1]))
    nodes.append(helper.make_node("MatMul", ["seq_t", "o_w"], ["mm"]))
    nodes.append(helper.make_node("Add", ["mm", "o_b"], ["logits"]))
    graph = helper.make_graph(
        nodes,
        "carpulse_plate_line",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["n", 1, HEIGHT, WIDTH])],
        [helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["n", cols, len(ALPHABET)])],
        inits,
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    model.producer_name = "carpulse"
    helper.set_model_props(model, {"alphabet": "\n".join(ALPHABET[1:])})
    onnx.checker.check_model(model)
    return bytes(model.SerializeToString())


def _load_cache(path: Path) -> tuple[np.ndarray, list[str]]:
    """Crops kept by an earlier ``--cache`` run; anything else there is a clear error."""
    try:
        with np.load(path, allow_pickle=False) as data:
            x, texts = np.asarray(data["x"]), [str(t) for t in data["texts"]]
    except (OSError, ValueError, KeyError, EOFError) as err:
        raise ConfigError(f"--cache {path} is not a crop cache of this command: {err}") from err
    if x.dtype != np.uint8 or x.shape[1:] != (HEIGHT, WIDTH) or len(x) != len(texts) or not len(x):
        raise ConfigError(f"--cache {path} holds crops of another shape: {x.dtype} {x.shape}")
    if any(ch not in _INDEX for t in texts for ch in t) or any(len(t) > MAX_LABEL for t in texts):
        raise ConfigError(f"--cache {path} holds texts that are not plates")
    return x, texts


def load_params(path: Path) -> dict[str, np.ndarray]:
    """The weights of an exported model (its ONNX initializers, shape constants left out)."""
    import onnx
    from onnx import numpy_helper

    try:
        model = onnx.load(str(path))
    except Exception as err:  # onnx raises its own untyped errors
        raise ConfigError(f"cannot read model {path}: {err}") from err
    return {
        t.name: numpy_helper.to_array(t).astype(np.float32)
        for t in model.graph.initializer
        if t.name not in ("fold_shape", "squeeze_axes")
    }


def check_export(blob: bytes, params: dict[str, np.ndarray], x: np.ndarray) -> float:
    """Largest |ONNX - NumPy reference| logit on ``x`` ``[N, 1, H, W]``."""
    import onnxruntime as ort

    sess = ort.InferenceSession(blob, providers=["CPUExecutionProvider"])
    got = sess.run(None, {"x": x.astype(np.float32)})[0]
    return float(np.abs(got - reference_logits(params, x)).max())


def train(
    out: Path = LINE_PATH,
    seed: int = 23_000,
    photos: int = 12_000,
    rendered: int = 30_000,
    epochs: int = 14,
    jobs: int = 1,
    cache: Path | None = None,
    progress: Any = None,
    init: Path | None = None,
    lr: float = 2e-3,
    fit_seed: int | None = None,
    strokes: bool = False,
    elastic: bool = False,
) -> dict[str, Any]:
    """Generate crops, fit, export to ``out``; returns a summary with the model's SHA-256."""
    if seed in RESERVED_SEEDS or seed + 1 in RESERVED_SEEDS:
        raise ConfigError(f"seed {seed} (or {seed + 1}) is an evaluation set: pick another")
    if not 0 <= photos <= 500_000 or not 0 <= rendered <= 2_000_000 or photos + rendered == 0:
        raise ConfigError("--photos 0..500000, --rendered 0..2000000, not both 0")
    if not 1 <= epochs <= 500 or not 1 <= jobs <= 64:
        raise ConfigError("--epochs 1..500, --jobs 1..64")
    if not 1e-6 <= lr <= 1.0:
        raise ConfigError("--lr 1e-6..1")
    start = load_params(init) if init is not None else None
    t0 = time.perf_counter()
    if cache is not None and cache.exists():
        x, texts = _load_cache(cache)
    else:
        x, texts = make_lines(seed, photos, rendered, jobs)
        if cache is not None:
            np.savez(cache, x=x, texts=np.array(texts))
    t1 = time.perf_counter()
    fit_seed = seed if fit_seed is None else fit_seed
    params, history = fit(
        x,
        texts,
        epochs,
        fit_seed,
        lr=lr,
        progress=progress,
        init=start,
        strokes=strokes,
        elastic=elastic,
    )
    t2 = time.perf_counter()
    probe = standardise(x[:16])
    blob = to_onnx(params)
    err = check_export(blob, params, probe)
    if not err < 1e-3:
        raise ConfigError(f"ONNX export differs from the reference by {err}")
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_bytes(blob)
    sample = np.random.default_rng(seed).permutation(len(x))[:2000]
    logits = reference_logits(params, standardise(x[sample]))
    train_exact = float(
        np.mean([a == texts[i] for a, i in zip(greedy_text(logits), sample, strict=True)])
    )
    return {
        "out": str(out),
        "bytes": len(blob),
        "sha256": hashlib.sha256(blob).hexdigest(),
        "seed": seed,
        "fit_seed": fit_seed,
        "init": str(init) if init is not None else None,
        "lr": lr,
        "strokes": strokes,
        "elastic": elastic,
        "crops": len(x),
        "epochs": epochs,
        "loss": [round(v, 4) for v in history],
        "train_exact_greedy": round(train_exact, 4),
        "export_max_abs_error": err,
        "seconds": {"data": round(t1 - t0, 1), "fit": round(t2 - t1, 1)},
    }


def main(argv: list[str]) -> dict[str, Any]:
    """``carpulse plates train --line``."""
    import sys

    ap = argparse.ArgumentParser(prog="carpulse plates train --line", description=__doc__)
    ap.add_argument("--out", type=Path, default=LINE_PATH, help="model file to write (.onnx)")
    ap.add_argument("--seed", type=int, default=23_000, help="training seed (not an eval seed)")
    ap.add_argument("--photos", type=int, default=12_000, help="synthetic photos (3 crops each)")
    ap.add_argument("--rendered", type=int, default=30_000, help="rendered plates (1 crop each)")
    ap.add_argument("--epochs", type=int, default=14, help="passes over the crops")
    ap.add_argument("--jobs", type=int, default=1, help="processes making crops (same result)")
    ap.add_argument(
        "--cache",
        type=Path,
        default=None,
        help="keep the crops in this .npz (read back if it exists)",
    )
    ap.add_argument("--init", type=Path, default=None, help="go on from this model's weights")
    ap.add_argument("--lr", type=float, default=2e-3, help="peak learning rate (cosine decay)")
    ap.add_argument(
        "--fit-seed", type=int, default=None, help="seed of the weights' start and order (--seed)"
    )
    ap.add_argument(
        "--strokes",
        action=argparse.BooleanOptionalAction,
        default=False,
        help="vary stroke weight, blur and stretch per batch (other font weights)",
    )
    ap.add_argument(
        "--elastic",
        action=argparse.BooleanOptionalAction,
        default=False,
        help="bend the glyphs' shapes per batch (smooth random warps, other fonts' drawings)",
    )
    args = ap.parse_args(argv)

    def progress(epoch: int, total: int, loss: float) -> None:
        print(f"epoch {epoch}/{total}: CTC loss {loss:.4f}", file=sys.stderr, flush=True)

    return train(
        args.out,
        args.seed,
        args.photos,
        args.rendered,
        args.epochs,
        args.jobs,
        args.cache,
        progress,
        args.init,
        args.lr,
        args.fit_seed,
        args.strokes,
        args.elastic,
    )
