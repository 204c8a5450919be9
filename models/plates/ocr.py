"""The PP-OCR detection and recognition models that ship inside ``rapidocr-onnxruntime==1.4.4``, run
directly with onnxruntime (no download, no rapidocr import at run time)."""

from __future__ import annotations

import functools
import importlib.util
import logging
import math
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np

from core.errors import ConfigError
from models.plates.locate import shrink
from models.plates.onnx_fuse import fuse_in_place, fused_bytes, narrowed_bytes
from models.plates.quad import order_corners

DET_MODEL = "ch_PP-OCRv4_det_infer.onnx"
REC_MODEL = "ch_PP-OCRv4_rec_infer.onnx"
REC_HEIGHT = 48

log = logging.getLogger(__name__)


def packaged_model_dir() -> Path:
    """``rapidocr_onnxruntime/models`` in the installed wheel, found without importing it."""
    spec = importlib.util.find_spec("rapidocr_onnxruntime")
    if spec is None or not spec.submodule_search_locations:
        raise ConfigError(
            "plate models not found: pip install 'carpulse[vision]' (rapidocr-onnxruntime==1.4.4 "
            "ships the PP-OCR models), or set the model paths explicitly"
        )
    return Path(next(iter(spec.submodule_search_locations))) / "models"


def _options(threads: int):  # type: ignore[no-untyped-def]
    import onnxruntime as ort

    opts = ort.SessionOptions()
    opts.intra_op_num_threads = threads
    opts.inter_op_num_threads = 1
    opts.log_severity_level = 3
    return opts


def make_session(path: Path, threads: int, fuse: bool = False):  # type: ignore[no-untyped-def]
    """An onnxruntime CPU session with ``threads`` intra-op threads (0 = all cores); ``fuse``: the
    PP-OCR graph with its elementwise chains fused (``onnx_fuse``; as it is if none match)."""
    import onnxruntime as ort

    if not path.exists():
        raise ConfigError(f"ONNX model {path} does not exist")
    opts = _options(threads)
    fused = fused_bytes(path) if fuse else None
    if fused is not None:
        try:
            return ort.InferenceSession(fused[0], opts, providers=["CPUExecutionProvider"])
        except Exception as err:  # the rewrite made a graph onnxruntime refuses: the original
            log.warning("%s: the fused graph does not load (%s), running it unfused", path, err)
    try:
        return ort.InferenceSession(str(path), opts, providers=["CPUExecutionProvider"])
    except Exception as err:  # onnxruntime raises its own untyped errors
        raise ConfigError(f"cannot load ONNX model {path}: {err}") from err


def _stamp(path: Path | None) -> int:
    try:
        return path.stat().st_mtime_ns if path is not None else 0
    except OSError:
        return -1


# Kept per process, as ``fused_bytes`` is: the next reader loads without rewriting the graph again.
@functools.lru_cache(maxsize=4)
def _tuned(path: str, _mtime: int, fuse: bool, neck: str, _neck_mtime: int) -> bytes | None:
    """The recogniser at ``path`` with the neck weights at ``neck`` written in (``rec_neck``),
    fused if ``fuse``; ``None`` without the ``onnx`` package. Bad weights: a ``ConfigError``."""
    try:
        import onnx
    except ImportError:
        log.warning("onnx is not installed: PP-OCR runs without the plate neck (pip install onnx)")
        return None
    from models.plates.rec_neck import patch

    try:
        model = onnx.load(path)
    except Exception as err:  # a damaged file: the same error the untuned load gives
        raise ConfigError(f"cannot load ONNX model {path}: {err}") from err
    patch(model, Path(neck))
    if fuse:
        try:
            fuse_in_place(model)
        except Exception as err:  # a graph the rewrite does not expect: unfused, still tuned
            log.warning("%s: fusing failed (%r), the tuned model runs unfused", path, err)
            model = onnx.load(path)
            patch(model, Path(neck))
    return bytes(model.SerializeToString())


@functools.lru_cache(maxsize=4)
def _narrowed(
    path: str,
    _mtime: int,
    fuse: bool,
    keep: tuple[int, ...],
    width: int,
    neck: str | None = None,
    neck_mtime: int = 0,
) -> bytes | None:
    """The recogniser at ``path`` (tuned with ``neck``, fused if ``fuse``) computing only the
    classes ``keep``."""
    tuned = _tuned(path, _mtime, fuse, neck, neck_mtime) if neck is not None else None
    if tuned is not None:
        return narrowed_bytes(tuned, keep, width)
    fused = fused_bytes(Path(path)) if fuse else None
    model = fused[0] if fused is not None else Path(path).read_bytes()
    return narrowed_bytes(model, keep, width)


@dataclass(frozen=True, slots=True)
class TextBox:
    """A detected text region in image pixels: a rotated rectangle ``(cx, cy), (w, h), angle``."""

    rect: tuple[tuple[float, float], tuple[float, float], float]
    score: float


class PaddleOcr:
    """PP-OCRv4 text detection (DB) and recognition (CTC) on BGR images."""

    def __init__(
        self,
        model_dir: Path | None = None,
        threads: int = 1,
        det_path: Path | None = None,
        fuse: bool = True,
        narrow: frozenset[str] | None = None,
        neck: Path | None = None,
    ) -> None:
        root = model_dir or packaged_model_dir()
        # ``fuse``: the graphs' elementwise chains fused at load (``onnx_fuse``, ~15 % faster).
        self._fuse = fuse
        # ``neck``: the recogniser's neck and head weights retrained on plates (``rec_neck``).
        self._neck = neck
        self.rec = self._rec_session(root / REC_MODEL, threads)
        self._det_path = det_path or root / DET_MODEL
        self._det = None
        self._threads = threads
        meta = self.rec.get_modelmeta().custom_metadata_map
        if "character" not in meta:
            raise ConfigError(f"{root / REC_MODEL} has no 'character' metadata")
        # CTC classes: blank, the model's characters, then a space.
        self.alphabet = ["<blank>", *meta["character"].splitlines(), " "]
        if narrow is not None:
            # Only the classes of ``narrow`` (and the blank) computed: each frame's
            # probabilities are then over those alone (``onnx_fuse.narrowed_bytes``).
            self._narrow(root / REC_MODEL, threads, narrow)
        self._rec_in = self.rec.get_inputs()[0].name

    def _rec_session(self, path: Path, threads: int):  # type: ignore[no-untyped-def]
        if self._neck is None:
            return make_session(path, threads, self._fuse)
        import onnxruntime as ort

        if not path.exists():
            raise ConfigError(f"ONNX model {path} does not exist")
        tuned = _tuned(str(path), _stamp(path), self._fuse, str(self._neck), _stamp(self._neck))
        if tuned is None:
            self._neck = None  # no onnx package: PP-OCR as shipped (logged once by ``_tuned``)
            return make_session(path, threads, self._fuse)
        try:
            return ort.InferenceSession(
                tuned, _options(threads), providers=["CPUExecutionProvider"]
            )
        except Exception as err:  # onnxruntime's own errors
            raise ConfigError(f"{path} with the neck {self._neck} does not load: {err}") from err

    def _narrow(self, path: Path, threads: int, narrow: frozenset[str]) -> None:
        import onnxruntime as ort

        keep = tuple(i for i, ch in enumerate(self.alphabet) if i == 0 or ch in narrow)
        try:
            stamp = path.stat().st_mtime_ns
        except OSError:
            return
        neck = str(self._neck) if self._neck is not None else None
        model = _narrowed(
            str(path), stamp, self._fuse, keep, len(self.alphabet), neck, _stamp(self._neck)
        )
        if model is None:
            log.info("%s: its classes cannot be narrowed, it runs whole", path)
            return
        try:
            self.rec = ort.InferenceSession(
                model, _options(threads), providers=["CPUExecutionProvider"]
            )
        except Exception as err:  # onnxruntime's own errors: the whole model still runs
            log.warning("%s: the narrowed graph does not load (%s), it runs whole", path, err)
            return
        self.alphabet = [self.alphabet[i] for i in keep]

    @property
    def det(self):  # type: ignore[no-untyped-def]
        if self._det is None:  # loaded on first use: most frames never need it
            self._det = make_session(self._det_path, self._threads, self._fuse)
        return self._det

    def recognise(self, crops: list[np.ndarray]) -> list[np.ndarray]:
        """Per-frame class probabilities ``[T, classes]`` for each BGR crop.

        Each crop is run alone at its own width: on one thread a batch costs as much as its
        crops run one by one after padding each to the widest (a 98 px and a 331 px crop: 57 ms
        together, 8 + 22 ms apart), and the padding is not what the narrower crop looks like.
        """
        out: list[np.ndarray] = []
        for crop in crops:
            w = min(640, max(8, math.ceil(REC_HEIGHT * crop.shape[1] / max(1, crop.shape[0]))))
            img = cv2.resize(crop, (w, REC_HEIGHT), interpolation=cv2.INTER_LINEAR)
            x = (img.transpose(2, 0, 1).astype(np.float32) / 127.5 - 1.0)[None]
            out.append(self.rec.run(None, {self._rec_in: x})[0][0])
        return out

    def detect(self, image: np.ndarray, max_side: int = 320, thresh: float = 0.3) -> list[TextBox]:
        """Text boxes found on a copy of ``image`` scaled so its longer side is ``max_side``."""
        h, w = image.shape[:2]
        scale = max_side / max(h, w)
        nh, nw = max(32, round(h * scale / 32) * 32), max(32, round(w * scale / 32) * 32)
        small = shrink(image, (nw, nh))
        x = (small.transpose(2, 0, 1).astype(np.float32) / 127.5 - 1.0)[None]
        prob = self.det.run(None, {self.det.get_inputs()[0].name: x})[0][0, 0]
        mask = (prob > thresh).astype(np.uint8)
        mask = cv2.dilate(mask, np.ones((2, 2), np.uint8))
        n, labels, stats, _ = cv2.connectedComponentsWithStats(mask, connectivity=4)
        sx, sy = w / nw, h / nh
        boxes: list[TextBox] = []
        for i in range(1, n):
            if stats[i, cv2.CC_STAT_AREA] < 12:
                continue
            ys, xs = np.nonzero(labels == i)
            score = float(prob[ys, xs].mean())
            if score < 0.5:
                continue
            pts = np.stack([xs * sx, ys * sy], axis=1).astype(np.float32)
            (cx, cy), (bw, bh), ang = cv2.minAreaRect(pts)
            # DB shrinks text regions during training; grow them back (PaddleOCR's unclip).
            grow = 1.6 * (bw * bh) / max(1.0, 2 * (bw + bh))
            boxes.append(TextBox(((cx, cy), (bw + 2 * grow, bh + 2 * grow), ang), score))
        return boxes


def crop_rect(
    image: np.ndarray, rect: tuple[tuple[float, float], tuple[float, float], float]
) -> np.ndarray:
    """Warp a rotated rectangle to an upright crop (long side horizontal)."""
    (cx, cy), (w, h), ang = rect
    if w < h:  # make the long side horizontal
        w, h, ang = h, w, ang - 90 if ang > 0 else ang + 90
    # Top-left, top-right, bottom-right, bottom-left, the long side on top (a roll of 45 degrees
    # or more too: ordering the corners by x + y and x - y turned such a plate on its side).
    src = order_corners(cv2.boxPoints(((cx, cy), (w, h), ang)))
    ow, oh = max(2, round(w)), max(2, round(h))
    dst = np.array([[0, 0], [ow - 1, 0], [ow - 1, oh - 1], [0, oh - 1]], dtype=np.float32)
    m = cv2.getPerspectiveTransform(src, dst)
    return cv2.warpPerspective(
        image, m, (ow, oh), flags=cv2.INTER_LINEAR, borderMode=cv2.BORDER_REPLICATE
    )
