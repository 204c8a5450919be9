"""PP-OCRv4's recogniser with its neck and head retrained on plates (``plate_rec_neck.npz``).

PP-OCRv4's recogniser is a convolutional backbone, then a neck (two SVTR attention blocks between
convolutions) and a CTC head. ``carpulse plates train --rec`` (``models.plates.train_rec``) keeps
the backbone as PaddleOCR trained it on real text and fits the neck and head on synthetic plate
crops. Provinces are drawn in fonts unlike the plate font, so the fit is told where a province is
but not which one: the CTC loss sees the provinces as one class, and within them the fitted head
keeps the original's preferences (a KL term). The weights (580,000 floats) are written into the
shipped PP-OCRv4 graph when the reader loads; nothing is downloaded.

Held out, on the shared photos' variants at seeds 18-20 it read 278 of 315 plates where PP-OCR as
shipped read 269, with 26 wrong readings against 28; on fresh drawn sets 327 of 399 against 325,
with more wrong readings (46 against 31). BENCHMARKS.md, twenty-ninth session.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from core.errors import ConfigError

REC_NECK_PATH = Path(__file__).with_name("plate_rec_neck.npz")
# The shipped weights, as measured in BENCHMARKS.md (twenty-ninth session).
REC_NECK_SHA256 = "eaefeeebd0f4ab2b8f9720d3dbf8da6a114ac1aeaed52491be8b55c853ada1cb"
# The npz's key for the head's characters, in its columns' order ('' is the CTC blank).
CLASSES_KEY = "__classes__"
# PP-OCRv4's (paddle2onnx) names: the backbone's last tensor, where the neck begins, and the head.
NECK_INPUT = "p2o.AveragePool.1"
HEAD_W, HEAD_B = "linear_85.w_0", "linear_85.b_0"


def _constants(model: Any) -> dict[str, Any]:
    """The model's float weights by name: Constant nodes' tensors and initializers."""
    out: dict[str, Any] = {}
    for node in model.graph.node:
        if node.op_type == "Constant" and node.attribute and node.attribute[0].name == "value":
            out[node.output[0]] = node.attribute[0].t
    for init in model.graph.initializer:
        out[init.name] = init
    return out


def _alphabet(model: Any) -> list[str]:
    meta = {p.key: p.value for p in model.metadata_props}
    if "character" not in meta:
        raise ConfigError("the recogniser has no 'character' metadata: not PP-OCRv4's")
    return ["", *meta["character"].splitlines(), " "]


def load_weights(path: Path) -> tuple[dict[str, np.ndarray], list[str]]:
    """The npz's float32 weights by constant name and the head's characters; a ``ConfigError``
    naming the file and key for anything else (no file, not an npz, NaN, wrong dtype)."""
    try:
        # Opened here, not by ``np.load``: a damaged zip must not leave the file open.
        with path.open("rb") as fh, np.load(fh, allow_pickle=False) as npz:
            raw = {k: npz[k] for k in npz.files}
    except FileNotFoundError as err:
        raise ConfigError(f"plate neck weights {path} do not exist") from err
    except Exception as err:  # zipfile, pickle refusal, damaged arrays
        raise ConfigError(f"plate neck weights {path}: not a readable .npz ({err})") from err
    classes = raw.pop(CLASSES_KEY, None)
    if classes is None or classes.ndim != 1 or classes.dtype.kind != "U":
        raise ConfigError(f"plate neck weights {path}: no '{CLASSES_KEY}' list of characters")
    if not raw:
        raise ConfigError(f"plate neck weights {path}: no weights")
    weights: dict[str, np.ndarray] = {}
    for name, arr in raw.items():
        if arr.dtype != np.float32:
            raise ConfigError(f"plate neck weights {path}: '{name}' is {arr.dtype}, not float32")
        if not np.isfinite(arr).all():
            raise ConfigError(f"plate neck weights {path}: '{name}' is not finite")
        weights[name] = arr
    return weights, [str(c) for c in classes]


def patch(model: Any, path: Path) -> int:
    """Write the weights at ``path`` into ``model`` (an ``onnx.ModelProto`` of PP-OCRv4's
    recogniser) in place; how many tensors changed. A ``ConfigError`` when they do not fit it: a
    name it lacks, another shape, a character not in its alphabet."""
    from onnx import numpy_helper

    weights, classes = load_weights(path)
    consts = _constants(model)
    if NECK_INPUT not in {o for n in model.graph.node for o in n.output}:
        raise ConfigError(f"{path}: the recogniser has no tensor {NECK_INPUT} (not PP-OCRv4's)")
    alphabet = _alphabet(model)
    index = {ch: i for i, ch in enumerate(alphabet)}
    missing = [c for c in classes if c not in index]
    if missing:
        raise ConfigError(f"{path}: characters {missing[:5]} are not in the recogniser's alphabet")
    cols = np.array([index[c] for c in classes], np.int64)
    for name, arr in weights.items():
        if name not in consts:
            raise ConfigError(f"{path}: '{name}' is no weight of the recogniser")
        old = numpy_helper.to_array(consts[name])
        if name in (HEAD_W, HEAD_B):
            if old.shape[:-1] != arr.shape[:-1] or arr.shape[-1] != len(cols):
                raise ConfigError(f"{path}: '{name}' is {arr.shape}, the head {old.shape}")
            new = old.copy()
            new[..., cols] = arr
        elif old.shape != arr.shape:
            raise ConfigError(f"{path}: '{name}' is {arr.shape}, the recogniser's {old.shape}")
        else:
            new = arr
        consts[name].CopyFrom(numpy_helper.from_array(np.ascontiguousarray(new), consts[name].name))
    return len(weights)
