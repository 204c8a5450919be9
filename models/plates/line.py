"""A plate-line recogniser: a small CNN with a CTC head, trained on rendered plates, run by onnxruntime.

PP-OCR reads the letters and digits of a plate well but loses its small Chinese characters (the
province, 警, 挂, 应急...) at 10-20 px: it was trained on printed text lines, not plates. This model
reads a one-row plate crop as a whole (grey, 32 x 128, standardised per crop) and gives CTC class
probabilities per column, like PP-OCR's recogniser, so ``PlateDecoder`` decodes it under the plate
syntax. ``carpulse plates train --line`` fits it (``models.plates.train_line``); the reader uses it
before PP-OCR (``PlateReader``): a reading it is sure of ends the crop. The network is small (91k
weights, 14 M multiply-adds, ``ARCH``): a read costs about 0.4 ms of one core, PP-OCR's 10-20.
"""

from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np

from models.plates.syntax import TEMPLATES

LINE_PATH = Path(__file__).with_name("plate_line.onnx")
HEIGHT, WIDTH = 32, 128
# Every character a plate template allows, in a fixed order; class 0 is the CTC blank.
CHARSET: tuple[str, ...] = tuple(sorted({ch for t in TEMPLATES for pos in t for ch in pos}))
ALPHABET: list[str] = ["<blank>", *CHARSET]
# (out channels, pool (h, w)) per 3x3 convolution; then a 1 x 3 convolution over the columns and a
# linear layer to the classes. Width 128 -> 32 columns (8 characters need 15 for CTC).
ARCH: tuple[tuple[int, tuple[int, int]], ...] = (
    (16, (2, 2)),
    (32, (2, 2)),
    (48, (2, 1)),
    (64, (2, 1)),
)
SEQ_CHANNELS = 96


def prepare(crop: np.ndarray) -> np.ndarray:
    """A BGR or grey crop as the network's input: float32 ``[1, HEIGHT, WIDTH]``, zero mean, unit
    spread (dark and bright photos look alike). An empty crop is a ``ValueError``."""
    if crop.ndim not in (2, 3) or crop.shape[0] < 1 or crop.shape[1] < 1:
        raise ValueError(f"not a crop: shape {crop.shape}")
    grey = cv2.cvtColor(crop, cv2.COLOR_BGR2GRAY) if crop.ndim == 3 else crop
    small = cv2.resize(grey, (WIDTH, HEIGHT), interpolation=cv2.INTER_AREA).astype(np.float32)
    mean, std = float(small.mean()), float(small.std())
    return ((small - mean) / max(std, 8.0))[None]


def softmax(logits: np.ndarray) -> np.ndarray:
    z = logits - logits.max(axis=-1, keepdims=True)
    e = np.exp(z)
    return e / e.sum(axis=-1, keepdims=True)


class LineReader:
    """The ONNX plate-line model: ``probs(crops)`` gives ``[T, len(ALPHABET)]`` per crop."""

    def __init__(self, path: Path = LINE_PATH, threads: int = 1) -> None:
        from models.plates.ocr import make_session

        self.session = make_session(path, threads)
        self._in = self.session.get_inputs()[0].name
        self.alphabet = ALPHABET

    def probs(self, crops: list[np.ndarray]) -> list[np.ndarray]:
        if not crops:
            return []
        x = np.stack([prepare(c) for c in crops])
        logits = self.session.run(None, {self._in: x})[0]  # [N, T, C]
        return [softmax(row.astype(np.float64)) for row in logits]


def reference_logits(params: dict[str, np.ndarray], x: np.ndarray) -> np.ndarray:
    """The network in plain NumPy (the check on the ONNX export): ``x`` ``[N, 1, H, W]`` ->
    logits ``[N, T, C]``."""
    h = x.astype(np.float64)
    for i, (_, pool) in enumerate(ARCH):
        h = _conv(h, params[f"c{i}_w"], params[f"c{i}_b"], (1, 1))
        h = np.maximum(h, 0.0)
        n, c, hh, ww = h.shape
        ph, pw = pool
        h = h[:, :, : hh // ph * ph, : ww // pw * pw]
        h = h.reshape(n, c, hh // ph, ph, ww // pw, pw).max(axis=(3, 5))
    n, c, hh, ww = h.shape
    h = h.reshape(n, c * hh, 1, ww)  # the rows folded into channels: one row of columns
    h = np.maximum(_conv(h, params["s_w"], params["s_b"], (0, 1)), 0.0)
    h = h[:, :, 0, :].transpose(0, 2, 1)  # [N, T, SEQ_CHANNELS]
    return h @ params["o_w"] + params["o_b"]


def _conv(x: np.ndarray, w: np.ndarray, b: np.ndarray, pad: tuple[int, int]) -> np.ndarray:
    """Cross-correlation with zero padding ``pad`` (rows, columns), stride 1; ``w`` is OIHW."""
    o, _, kh, kw = w.shape
    xp = np.pad(x, ((0, 0), (0, 0), (pad[0], pad[0]), (pad[1], pad[1])))
    n, _, hp, wp = xp.shape
    oh, ow = hp - kh + 1, wp - kw + 1
    out = np.zeros((n, o, oh, ow))
    for dy in range(kh):
        for dx in range(kw):
            patch = xp[:, :, dy : dy + oh, dx : dx + ow]  # [N, I, OH, OW]
            out += np.einsum("nihw,oi->nohw", patch, w[:, :, dy, dx])
    return out + b[None, :, None, None]
