"""A learned plate finder: a small fully convolutional net that marks plate centres and their corners.

The colour locator loses a plate whose colour is the car's (a blue plate on a blue car merges into
one blob) and the text detector that then finds it costs 40-100 ms a frame. This net reads the whole
frame at ``SIDE`` x ``SIDE`` (letterboxed, colour), and gives per cell of a ``STRIDE`` px grid a plate
score and the plate's four corners as offsets from the cell's centre. ``PlateFinder.find`` returns
the best few plates as rotated rectangles in the frame's own pixels, which the reader reads like a
colour candidate (corner fit, snapping, recognisers). ``carpulse plates train --find`` fits it on
synthetic gate photos (``models.plates.train_find``); nothing is downloaded.
"""

from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np

from core.errors import ConfigError

FIND_PATH = Path(__file__).with_name("plate_find.onnx")
SIDE = 256  # the frame's longest side in the net's input; the rest is padding
STRIDE = 8  # input pixels per output cell
CELLS = SIDE // STRIDE
OFFSET_SCALE = 32.0  # corner offsets are predicted in units of this many input pixels
# (out channels, stride, dilation) per 3x3 convolution, then a 1x1 head of 9 channels (score and
# four corners). Receptive field 127 input px: a plate at most half the frame wide is seen whole.
ARCH: tuple[tuple[int, int, int], ...] = (
    (12, 2, 1),
    (24, 2, 1),
    (32, 2, 1),
    (48, 1, 1),
    (48, 1, 2),
    (64, 1, 4),
)
HEAD = 9

Rect = tuple[tuple[float, float], tuple[float, float], float]


def letterbox(image: np.ndarray) -> tuple[np.ndarray, float]:
    """``image`` (BGR uint8) scaled so its longest side is ``SIDE`` and padded to a square, as the
    net's input ``[3, SIDE, SIDE]`` float32 in [-0.5, 0.5] (padding 0); and the scale used."""
    h, w = image.shape[:2]
    scale = SIDE / max(h, w)
    nw, nh = max(1, min(SIDE, round(w * scale))), max(1, min(SIDE, round(h * scale)))
    small = cv2.resize(image, (nw, nh), interpolation=cv2.INTER_AREA)
    x = np.zeros((3, SIDE, SIDE), np.float32)
    x[:, :nh, :nw] = small.transpose(2, 0, 1).astype(np.float32) / 255.0 - 0.5
    return x, scale


def decode(
    out: np.ndarray, scale: float, threshold: float, top: int
) -> list[tuple[float, np.ndarray]]:
    """``(score, quad)`` of the best ``top`` local maxima of the score map above ``threshold``,
    quads in the frame's pixels (``out``: one frame's ``[HEAD, CELLS, CELLS]``)."""
    logit = out[0].astype(np.float64)
    score = (1.0 / (1.0 + np.exp(-np.clip(logit, -60.0, 60.0)))).astype(np.float32)
    peak = cv2.dilate(score, np.ones((3, 3), np.uint8))  # NaN scores are never kept
    ys, xs = np.nonzero((score >= threshold) & (score >= peak))
    order = np.argsort(-score[ys, xs], kind="stable")[:top]
    found = []
    for k in order:
        i, j = int(ys[k]), int(xs[k])
        centre = np.array([(j + 0.5) * STRIDE, (i + 0.5) * STRIDE])
        quad = centre + out[1:, i, j].astype(np.float64).reshape(4, 2) * OFFSET_SCALE
        found.append((float(score[i, j]), (quad / scale).astype(np.float32)))
    return found


def quad_rect(quad: np.ndarray, grow: tuple[float, float] = (1.06, 1.2)) -> Rect | None:
    """The rotated rectangle around ``quad``, grown a little (``None`` if it is degenerate)."""
    if not np.all(np.isfinite(quad)):
        return None
    (cx, cy), (w, h), ang = cv2.minAreaRect(quad.astype(np.float32))
    if min(w, h) < 4.0:
        return None
    if w < h:  # the long side first, as the colour locator gives it
        w, h, ang = h, w, ang - 90.0
    return ((float(cx), float(cy)), (float(w * grow[0]), float(h * grow[1])), float(ang))


class PlateFinder:
    """The ONNX plate finder: ``find(image)`` gives ``(score, rect, quad)`` of the likeliest plates
    (``quad``: its corners TL, TR, BR, BL, in the frame's pixels)."""

    def __init__(
        self, path: Path = FIND_PATH, threads: int = 1, threshold: float = 0.3, top: int = 2
    ) -> None:
        from models.plates.ocr import make_session

        if not 0.0 <= threshold <= 1.0:  # NaN too
            raise ConfigError(f"find_threshold {threshold}: between 0 and 1")
        if not 1 <= top <= 16:
            raise ConfigError(f"find_top {top}: 1 to 16")
        self.session = make_session(path, threads)
        self._in = self.session.get_inputs()[0].name
        self.threshold = threshold
        self.top = top

    def find(self, image: np.ndarray) -> list[tuple[float, Rect, np.ndarray]]:
        x, scale = letterbox(image)
        out = self.session.run(None, {self._in: x[None]})[0][0]
        h, w = image.shape[:2]
        found = []
        for score, quad in decode(out, scale, self.threshold, self.top):
            rect = quad_rect(quad)
            if rect is not None and _in_frame(rect, w, h):
                found.append((score, rect, quad))
        return found


def _in_frame(rect: Rect, w: int, h: int) -> bool:
    """A box centred in the frame and no longer than its diagonal (else it is no plate)."""
    (cx, cy), (long, _), _ = rect
    return 0 <= cx < w and 0 <= cy < h and long <= float(np.hypot(w, h))


def reference_out(params: dict[str, np.ndarray], x: np.ndarray) -> np.ndarray:
    """The network in plain NumPy (the check on the ONNX export): ``[N, 3, SIDE, SIDE]`` ->
    ``[N, HEAD, CELLS, CELLS]``."""
    h = x.astype(np.float64)
    for i, (_, stride, dil) in enumerate(ARCH):
        h = np.maximum(_conv(h, params[f"c{i}_w"], params[f"c{i}_b"], stride, dil), 0.0)
    return _conv(h, params["head_w"], params["head_b"], 1, 1)


def _conv(x: np.ndarray, w: np.ndarray, b: np.ndarray, stride: int, dil: int) -> np.ndarray:
    """Cross-correlation, OIHW weights, "same" zero padding (``dil * (k // 2)``)."""
    o, _, kh, kw = w.shape
    pad = dil * (kh // 2)
    xp = np.pad(x, ((0, 0), (0, 0), (pad, pad), (pad, pad)))
    n, _, hp, wp = xp.shape
    oh = (hp - dil * (kh - 1) - 1) // stride + 1
    ow = (wp - dil * (kw - 1) - 1) // stride + 1
    out = np.zeros((n, o, oh, ow))
    for dy in range(kh):
        for dx in range(kw):
            y0, x0 = dy * dil, dx * dil
            patch = xp[:, :, y0 : y0 + stride * oh : stride, x0 : x0 + stride * ow : stride]
            out += np.einsum("nihw,oi->nohw", patch, w[:, :, dy, dx])
    return out + b[None, :, None, None]
