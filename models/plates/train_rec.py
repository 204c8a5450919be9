"""``carpulse plates train --rec``: fit PP-OCRv4's recogniser neck and head to plates
(``plate_rec_neck.npz``, loaded by ``models.plates.rec_neck``).

The backbone stays as PaddleOCR trained it. Its features are computed once per crop by onnxruntime
(the shipped graph, its tensor ``NECK_INPUT`` read out); the neck and head are then run in JAX by a
small interpreter of the graph's own nodes (``neck_logits``), so the fitted weights drop back into
the same graph. Every float weight after the backbone is fitted (the batch-norm statistics too, as
plain affine terms).

Crops: synthetic gate photos (``synth.make_sample``, 30 % two-row, laid out as the reader lays
them out) cut as the reader cuts them, and single rendered plates shrunk and degraded, drawn in
the training fonts. Loss: CTC with the 31 provinces as one class (a drawn province is not a real
plate's), plus the KL divergence from the original head's distribution over the provinces at each
frame, so which province it reads stays PaddleOCR's. Adam, cosine decay, one fixed order.
"""

from __future__ import annotations

import argparse
import itertools
import math
import sys
import time
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path
from typing import Any

import cv2
import numpy as np

from core.errors import ConfigError
from models.plates.decode import plate_chars
from models.plates.fonts import drawn_in_training_fonts
from models.plates.ocr import REC_HEIGHT, REC_MODEL, packaged_model_dir
from models.plates.rec_neck import (
    CLASSES_KEY,
    HEAD_B,
    HEAD_W,
    NECK_INPUT,
    REC_NECK_PATH,
    load_weights,
    patch,
)
from models.plates.syntax import PROVINCES
from models.plates.train_line import RESERVED_SEEDS
from models.plates.train_line import _photo_crops as line_photo_crops
from models.plates.train_line import _rendered_crop as rendered_line_crop  # colour, as PP-OCR reads

LOGITS = "p2o.Add.277"  # the head's output before its softmax
MAX_LABEL = 10


def _photo_crops(seed: int, i: int) -> list[tuple[np.ndarray, str]]:
    """The line trainer's photo crops in colour: 30 % two-row plates, one jittered crop."""
    crops, text = line_photo_crops(seed, i, two_row=0.3, jittered=1, taller=1.3)
    return [(c, text) for c in crops]


def _rendered_crop(seed: int, i: int) -> list[tuple[np.ndarray, str]]:
    """One single rendered plate, shrunk and degraded: the line model's rendered crop, in colour."""
    crop, text = rendered_line_crop(seed, i)
    return [(crop, text)]


def rec_input(crop: np.ndarray) -> np.ndarray:
    """A crop as ``PaddleOcr.recognise`` feeds it, its width rounded to 32 px so that crops batch
    by their number of frames (a stretch of at most 16 px)."""
    w = min(640, max(32, math.ceil(REC_HEIGHT * crop.shape[1] / max(1, crop.shape[0]))))
    w = max(32, int(round(w / 32) * 32))
    img = cv2.resize(crop, (w, REC_HEIGHT), interpolation=cv2.INTER_LINEAR)
    out: np.ndarray = img.transpose(2, 0, 1).astype(np.float32) / 127.5 - 1.0
    return out


def _backbone(model_path: Path) -> Any:
    import onnx
    import onnxruntime as ort

    model = onnx.load(str(model_path))
    model.graph.output.append(
        onnx.helper.make_tensor_value_info(NECK_INPUT, onnx.TensorProto.FLOAT, None)
    )
    opts = ort.SessionOptions()
    opts.intra_op_num_threads = 1
    opts.log_severity_level = 3
    return ort.InferenceSession(model.SerializeToString(), opts, providers=["CPUExecutionProvider"])


def _chunk(seed: int, start: int, stop: int, model_path: str) -> tuple[list[np.ndarray], list[str]]:
    """Backbone features ``[C, T]`` (float16) and texts of photos ``start``..``stop``: every
    third a rendered plate (seed + 1), the others two crops of a synthetic photo."""
    sess = _backbone(Path(model_path))
    feats: list[np.ndarray] = []
    texts: list[str] = []
    for i in range(start, stop):
        with drawn_in_training_fonts(seed, i):
            items = _photo_crops(seed, i) if i % 3 else _rendered_crop(seed + 1, i)
        for crop, text in items:
            if crop.shape[0] < 4 or crop.shape[1] < 8:
                continue
            _, f = sess.run(None, {"x": rec_input(crop)[None]})
            feats.append(f[0, :, 0, :].astype(np.float16))
            texts.append(text)
    return feats, texts


def make_features(
    seed: int, photos: int, jobs: int = 1, model_path: Path | None = None
) -> tuple[list[np.ndarray], list[str]]:
    """Features and texts of ``photos`` training photos, in order; the same for any ``jobs``
    (two chunks per job, concatenated in order)."""
    path = str(model_path or packaged_model_dir() / REC_MODEL)
    bounds = np.linspace(0, photos, max(1, min(jobs * 2, photos)) + 1).astype(int)
    chunks = [(seed, int(a), int(b), path) for a, b in itertools.pairwise(bounds)]
    if jobs == 1:
        parts = [_chunk(*c) for c in chunks]
    else:
        with ProcessPoolExecutor(jobs) as pool:
            parts = list(pool.map(_chunk, *zip(*chunks, strict=True)))
    feats = [f for fs, _ in parts for f in fs]
    texts = [t for _, ts in parts for t in ts]
    if not feats:
        raise ConfigError("no training crops")
    return feats, texts


class Neck:
    """The recogniser's nodes after the backbone, run in JAX with their float weights as
    parameters; the head narrowed to the plate characters."""

    def __init__(self, model_path: Path | None = None) -> None:
        import onnx
        from onnx import numpy_helper

        self.model = onnx.load(str(model_path or packaged_model_dir() / REC_MODEL))
        g = self.model.graph
        producer = {o: n for n in g.node for o in n.output}
        need: set[str] = set()
        stack = [LOGITS]
        while stack:
            t = stack.pop()
            if t in need or t == NECK_INPUT:
                continue
            need.add(t)
            if t in producer:
                stack += list(producer[t].input)
        if LOGITS not in producer or NECK_INPUT not in {o for n in g.node for o in n.output}:
            raise ConfigError("the recogniser is not PP-OCRv4's (no neck input or head)")
        sub = [n for n in g.node if any(o in need for o in n.output)]
        self.params: dict[str, np.ndarray] = {}
        self.consts: dict[str, np.ndarray] = {}
        for n in sub:
            if n.op_type == "Constant":
                a = numpy_helper.to_array(n.attribute[0].t)
                bucket = self.params if a.dtype == np.float32 and a.size > 1 else self.consts
                bucket[n.output[0]] = a
        self.ops = [n for n in sub if n.op_type != "Constant"]
        meta = {p.key: p.value for p in self.model.metadata_props}
        alphabet = ["", *meta["character"].splitlines(), " "]
        narrow = plate_chars()
        self.keep = [i for i, ch in enumerate(alphabet) if i == 0 or ch in narrow]
        self.classes = [alphabet[i] for i in self.keep]
        self.params[HEAD_W] = self.params[HEAD_W][:, self.keep]
        self.params[HEAD_B] = self.params[HEAD_B][self.keep]
        self.attrs = [
            {a.name: onnx.helper.get_attribute_value(a) for a in n.attribute} for n in self.ops
        ]

    def logits(self, params: dict[str, Any], x: Any) -> Any:
        """``x`` ``[B, C, 1, T]`` backbone features -> ``[B, T, classes]`` logits (JAX)."""
        import jax
        import jax.numpy as jnp

        env: dict[str, Any] = {**self.consts, **params, NECK_INPUT: x}
        for n, a in zip(self.ops, self.attrs, strict=True):
            i: list[Any] = [env[k] if k else None for k in n.input]
            op = n.op_type
            if op == "Shape":
                r: Any = np.array(i[0].shape, np.int64)
            elif op == "Cast":
                import onnx

                r = i[0].astype(onnx.helper.tensor_dtype_to_np_dtype(a["to"]))
            elif op == "Slice":
                if len(i) > 4 and i[4] is not None and np.any(i[4] != 1):
                    raise ConfigError("the recogniser's neck slices with steps: not PP-OCRv4's")
                sl = [slice(None)] * i[0].ndim
                axes = i[3] if len(i) > 3 and i[3] is not None else range(len(i[1]))
                for s, e, ax in zip(i[1], i[2], axes, strict=False):
                    sl[int(ax)] = slice(int(s), int(min(e, 2**62)))
                r = i[0][tuple(sl)]
            elif op == "Concat":
                static = all(isinstance(v, np.ndarray) for v in i)
                r = (np.concatenate if static else jnp.concatenate)(i, axis=a["axis"])
            elif op == "Reshape":
                shape = [int(s) if s != 0 else i[0].shape[k] for k, s in enumerate(i[1])]
                r = jnp.reshape(i[0], shape)
            elif op == "Transpose":
                r = jnp.transpose(i[0], a["perm"])
            elif op == "Squeeze":
                r = jnp.squeeze(i[0], axis=tuple(a["axes"]))
            elif op == "ReduceMean":
                r = jnp.mean(i[0], axis=tuple(a["axes"]), keepdims=bool(a.get("keepdims", 1)))
            elif op in _BINARY:
                r = getattr(jnp, _BINARY[op])(i[0], i[1])
            elif op == "Sqrt":
                r = jnp.sqrt(i[0])
            elif op == "Sigmoid":
                r = jax.nn.sigmoid(i[0])
            elif op == "Softmax":
                r = jax.nn.softmax(i[0], axis=a.get("axis", 1))
            elif op == "Conv":
                pads = a.get("pads", [0, 0, 0, 0])
                r = jax.lax.conv_general_dilated(
                    i[0],
                    i[1],
                    window_strides=a.get("strides", [1, 1]),
                    padding=[(pads[0], pads[2]), (pads[1], pads[3])],
                    rhs_dilation=a.get("dilations", [1, 1]),
                    feature_group_count=a.get("group", 1),
                    dimension_numbers=("NCHW", "OIHW", "NCHW"),
                )
                if len(i) > 2 and i[2] is not None:
                    r = r + i[2].reshape(1, -1, 1, 1)
            elif op == "BatchNormalization":
                sc, b, mu, var = (v.reshape(1, -1, 1, 1) for v in i[1:5])
                r = (i[0] - mu) / jnp.sqrt(var + a.get("epsilon", 1e-5)) * sc + b
            else:
                raise ConfigError(f"the recogniser's neck has a {op} node this trainer cannot run")
            env[n.output[0]] = r
        return env[LOGITS]


_BINARY = {
    "Add": "add",
    "Sub": "subtract",
    "Mul": "multiply",
    "Div": "divide",
    "Pow": "power",
    "MatMul": "matmul",
}


def _batches(feats: list[np.ndarray], bs: int, rng: np.random.Generator | None) -> list[np.ndarray]:
    """Indexes of crops with as many frames, ``bs`` at a time (shuffled with ``rng``; without
    it, in order and the last short batch kept)."""
    by: dict[int, list[int]] = {}
    for k, f in enumerate(feats):
        by.setdefault(f.shape[1], []).append(k)
    out: list[np.ndarray] = []
    for ks_list in by.values():
        ks = np.array(ks_list)
        if rng is not None:
            rng.shuffle(ks)
        for s in range(0, len(ks), bs):
            b = ks[s : s + bs]
            if rng is not None and len(b) < bs:
                continue
            out.append(b)
    if rng is not None:
        rng.shuffle(out)  # type: ignore[arg-type]
    return out


def fit(
    neck: Neck,
    feats: list[np.ndarray],
    texts: list[str],
    epochs: int = 3,
    lr: float = 1e-4,
    kl: float = 1.0,
    batch: int = 64,
    progress: Any = None,
) -> dict[str, np.ndarray]:
    """The neck's and head's weights fitted to ``feats``/``texts`` (CTC with the provinces as
    one class, plus ``kl`` times the KL divergence from the original's province distribution)."""
    import jax
    import jax.numpy as jnp
    import optax

    index = {ch: k for k, ch in enumerate(neck.classes)}
    prov = np.array([k for k, ch in enumerate(neck.classes) if ch and ch in PROVINCES])
    other = np.array([k for k, ch in enumerate(neck.classes) if not (ch and ch in PROVINCES)])
    collapsed = {int(k): j for j, k in enumerate(other)} | {int(k): len(other) for k in prov}
    rows = [(f, [collapsed[index[c]] for c in t]) for f, t in zip(feats, texts, strict=True)]
    rows = [(f, y) for f, y in rows if 0 < len(y) <= MAX_LABEL]
    if not rows:
        raise ConfigError("no training crop has a label of the plate characters")
    feats = [f for f, _ in rows]
    labels = [y for _, y in rows]
    p0 = {k: jnp.asarray(v) for k, v in neck.params.items()}

    def loss_fn(p: Any, x: Any, lab: Any, pad: Any) -> Any:
        lg = neck.logits(p, x)
        lg0 = jax.lax.stop_gradient(neck.logits(p0, x))
        coll = jnp.concatenate(
            [lg[..., other], jax.scipy.special.logsumexp(lg[..., prov], -1, keepdims=True)], -1
        )
        ctc = optax.ctc_loss(coll, jnp.zeros(lg.shape[:2]), lab, pad, blank_id=0).mean()
        a0 = jax.nn.log_softmax(lg0[..., prov], -1)
        a = jax.nn.log_softmax(lg[..., prov], -1)
        div = jnp.sum(jnp.exp(a0) * (a0 - a), -1).sum(-1).mean()
        return ctc + kl * div, ctc

    rng = np.random.default_rng(0)
    steps = len(_batches(feats, batch, rng)) * epochs  # draws from ``rng``: the shipped order
    if steps < 2:
        raise ConfigError(
            f"{len(feats)} crops make fewer than 2 full batches of {batch} crops of one width: "
            "more --photos or a smaller --batch"
        )
    sched = optax.warmup_cosine_decay_schedule(0.0, lr, max(1, steps // (10 * epochs)), steps)
    opt = optax.adam(sched)
    params = dict(p0)
    state = opt.init(params)

    @jax.jit
    def step(p: Any, st: Any, x: Any, lab: Any, pad: Any) -> Any:
        (_, ctc), g = jax.value_and_grad(loss_fn, has_aux=True)(p, x, lab, pad)
        up, st = opt.update(g, st, p)
        return optax.apply_updates(p, up), st, ctc

    for epoch in range(epochs):
        losses = []
        for b in _batches(feats, batch, rng):
            x = np.stack([feats[k] for k in b]).astype(np.float32)[:, :, None, :]
            lab = np.zeros((len(b), MAX_LABEL), np.int32)
            pad = np.ones((len(b), MAX_LABEL), np.float32)
            for j, k in enumerate(b):
                lab[j, : len(labels[k])] = labels[k]
                pad[j, : len(labels[k])] = 0.0
            params, state, ctc = step(params, state, x, lab, pad)
            losses.append(float(ctc))
        if progress is not None:
            progress(epoch + 1, epochs, float(np.mean(losses)))
    return {k: np.asarray(v, np.float32) for k, v in params.items()}


def greedy_exact(
    neck: Neck, params: dict[str, Any], feats: list[np.ndarray], texts: list[str]
) -> float:
    """Share of crops whose greedy CTC reading is their text exactly (no plate syntax)."""
    import jax

    run = jax.jit(neck.logits)
    ok = 0
    for b in _batches(feats, 128, None):
        x = np.stack([feats[k] for k in b]).astype(np.float32)[:, :, None, :]
        for k, row in zip(b, np.asarray(run(params, x)).argmax(-1), strict=True):
            chars, prev = [], 0
            for c in row:
                if c != prev and c != 0:
                    chars.append(neck.classes[c])
                prev = c
            ok += "".join(chars) == texts[k]
    return ok / max(1, len(feats))


def check_patch(path: Path, neck: Neck, crops: list[np.ndarray]) -> float:
    """Largest difference between the shipped graph with the weights at ``path`` written in
    (``rec_neck.patch``, as the reader loads it; its softmax renormalised over the plate
    characters) and this trainer's JAX run of the same weights, over ``crops``."""
    import jax
    import onnx
    import onnxruntime as ort

    model = onnx.load(str(packaged_model_dir() / REC_MODEL))
    patch(model, path)
    model.graph.output.append(
        onnx.helper.make_tensor_value_info(NECK_INPUT, onnx.TensorProto.FLOAT, None)
    )
    opts = ort.SessionOptions()
    opts.log_severity_level = 3
    sess = ort.InferenceSession(model.SerializeToString(), opts, providers=["CPUExecutionProvider"])
    weights, _ = load_weights(path)
    worst = 0.0
    for crop in crops:
        probs, feats = sess.run(None, {"x": rec_input(crop)[None]})
        kept = probs[0][:, neck.keep]
        kept = kept / kept.sum(-1, keepdims=True)
        ours = np.asarray(jax.nn.softmax(neck.logits(weights, feats), -1))[0]
        worst = max(worst, float(np.abs(ours - kept).max()))
    return worst


def save(path: Path, params: dict[str, np.ndarray], classes: list[str]) -> None:
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fh = path.open("wb")
    except OSError as err:
        raise ConfigError(f"cannot write {path}: {err}") from err
    with fh:
        arrays: dict[str, Any] = {**params, CLASSES_KEY: np.array(classes)}
        np.savez(fh, **arrays)


def main(argv: list[str]) -> dict[str, Any]:
    """``carpulse plates train --rec``."""
    ap = argparse.ArgumentParser(prog="carpulse plates train --rec", description=__doc__)
    ap.add_argument("--out", type=Path, default=REC_NECK_PATH, help="weights to write (.npz)")
    ap.add_argument("--seed", type=int, default=70_001, help="training seed (not an eval seed)")
    ap.add_argument("--photos", type=int, default=20_000, help="photos (a third rendered plates)")
    ap.add_argument("--val", type=int, default=900, help="validation photos (seed + 100)")
    ap.add_argument("--epochs", type=int, default=3, help="passes over the crops")
    ap.add_argument("--lr", type=float, default=1e-4, help="peak learning rate (cosine decay)")
    ap.add_argument("--kl", type=float, default=1.0, help="weight of the province KL term")
    ap.add_argument("--batch", type=int, default=64, help="crops per step")
    ap.add_argument("--jobs", type=int, default=1, help="processes making crops (same result)")
    args = ap.parse_args(argv)
    if args.seed in RESERVED_SEEDS or args.seed + 1 in RESERVED_SEEDS:
        raise ConfigError(f"--seed {args.seed}: an evaluation seed, never trained on")
    for name in ("photos", "epochs", "batch", "jobs"):
        if getattr(args, name) < 1:
            raise ConfigError(f"--{name} {getattr(args, name)}: at least 1")
    if not (math.isfinite(args.lr) and args.lr > 0 and math.isfinite(args.kl) and args.kl >= 0):
        raise ConfigError("--lr must be above 0 and --kl at least 0 (finite)")
    t0 = time.monotonic()

    def say(msg: str) -> None:
        print(f"[{time.monotonic() - t0:6.0f} s] {msg}", file=sys.stderr, flush=True)

    say(f"backbone features of {args.photos} photos (seed {args.seed}, {args.jobs} jobs)")
    feats, texts = make_features(args.seed, args.photos, args.jobs)
    vfeats, vtexts = make_features(args.seed + 100, args.val, args.jobs) if args.val else ([], [])
    neck = Neck()
    before = greedy_exact(neck, neck.params, vfeats, vtexts) if vfeats else None
    say(f"{len(feats)} crops; validation {len(vfeats)} crops, greedy exact before {before}")
    params = fit(
        neck,
        feats,
        texts,
        args.epochs,
        args.lr,
        args.kl,
        args.batch,
        lambda e, n, loss: say(f"epoch {e}/{n}: CTC loss {loss:.4f}"),
    )
    after = greedy_exact(neck, params, vfeats, vtexts) if vfeats else None
    save(args.out, params, neck.classes)
    crops = [c for i in range(1, 40) for c, _ in _photo_crops(args.seed + 100, i)][:6]
    error = check_patch(args.out, neck, crops)
    if not error < 1e-3:
        raise ConfigError(f"{args.out}: the reader's graph differs from the fit by {error:.2g}")
    say(f"wrote {args.out}; validation greedy exact {after}; export checked ({error:.1e})")
    return {
        "out": str(args.out),
        "crops": len(feats),
        "validation_crops": len(vfeats),
        "greedy_exact_before": before,
        "greedy_exact_after": after,
        "export_max_abs_error": error,
        "bytes": args.out.stat().st_size,
        "seconds": round(time.monotonic() - t0, 1),
    }
