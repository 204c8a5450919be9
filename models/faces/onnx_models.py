"""Face detector and embedder run with onnxruntime from configured model paths.

Detector contracts (``FaceDetector(kind=...)``):

- ``"boxes"``: one input ``[1, 3, H, W]`` (BGR, (x - 127.5) / 128), first output ``[N, >=5]`` rows
  ``x1, y1, x2, y2, score`` in input pixels (models exported with their post-processing, e.g.
  YuNet or SCRFD graphs that end in NMS);
- ``"scrfd"``: InsightFace SCRFD as published (``det_500m.onnx``, ``det_10g.onnx``): for strides 8,
  16, 32, score ``[A, 1]`` and distance ``[A, 4]`` outputs (scores first), two anchors per cell.

Embedder: ArcFace-style, input ``[1, 3, 112, 112]`` (RGB, (x - 127.5) / 127.5), output ``[1, D]``;
the embedding is L2-normalised here.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np

from core.errors import ConfigError
from models.plates.ocr import make_session


@dataclass(frozen=True, slots=True)
class Face:
    """A detected face: box in image pixels and detector score."""

    box: tuple[float, float, float, float]
    score: float


def _nms(boxes: np.ndarray, scores: np.ndarray, iou: float) -> list[int]:
    idx = cv2.dnn.NMSBoxes(
        [[float(x1), float(y1), float(x2 - x1), float(y2 - y1)] for x1, y1, x2, y2 in boxes],
        scores.astype(float).tolist(),
        0.0,
        iou,
    )
    return [int(i) for i in np.asarray(idx).ravel()]


class FaceDetector:
    """Faces in a BGR image, resized to the model's input size (letter-boxed, top-left)."""

    def __init__(
        self,
        path: Path,
        kind: str = "boxes",
        input_size: tuple[int, int] = (320, 320),
        threshold: float = 0.5,
        threads: int = 1,
    ) -> None:
        if kind not in ("boxes", "scrfd"):
            raise ConfigError(f"face detector kind must be 'boxes' or 'scrfd', not {kind!r}")
        self.session = make_session(Path(path), threads)
        self.kind, self.threshold = kind, threshold
        shape = self.session.get_inputs()[0].shape
        fixed = [d for d in shape[2:] if isinstance(d, int)]
        self.size = (shape[3], shape[2]) if len(fixed) == 2 else input_size  # (w, h)
        self._input = self.session.get_inputs()[0].name

    def detect(self, image: np.ndarray) -> list[Face]:
        h, w = image.shape[:2]
        tw, th = self.size
        scale = min(tw / w, th / h)
        canvas = np.zeros((th, tw, 3), dtype=np.uint8)
        nw, nh = max(1, round(w * scale)), max(1, round(h * scale))
        canvas[:nh, :nw] = cv2.resize(image, (nw, nh))
        x = ((canvas.astype(np.float32) - 127.5) / 128.0).transpose(2, 0, 1)[None]
        outs = self.session.run(None, {self._input: x})
        boxes, scores = self._decode(outs, tw, th)
        keep = scores >= self.threshold
        boxes, scores = boxes[keep], scores[keep]
        if not len(scores):
            return []
        faces = []
        for i in _nms(boxes, scores, 0.4):
            x1, y1, x2, y2 = (boxes[i] / scale).tolist()
            faces.append(
                Face((max(0.0, x1), max(0.0, y1), min(w, x2), min(h, y2)), float(scores[i]))
            )
        return sorted(faces, key=lambda f: f.score, reverse=True)

    def _decode(self, outs: list[np.ndarray], tw: int, th: int) -> tuple[np.ndarray, np.ndarray]:
        if self.kind == "boxes":
            rows = np.asarray(outs[0]).reshape(-1, np.asarray(outs[0]).shape[-1])
            if rows.shape[1] < 5:
                raise ConfigError(f"face detector output has {rows.shape[1]} columns, need >= 5")
            return rows[:, :4].astype(np.float64), rows[:, 4].astype(np.float64)
        # SCRFD: outputs are [scores(8, 16, 32), distances(8, 16, 32), (keypoints)].
        all_boxes, all_scores = [], []
        for i, stride in enumerate((8, 16, 32)):
            score = np.asarray(outs[i]).reshape(-1)
            dist = np.asarray(outs[i + 3]).reshape(-1, 4) * stride
            gh, gw = th // stride, tw // stride
            ys, xs = np.mgrid[0:gh, 0:gw]
            centres = np.stack([xs, ys], axis=-1).reshape(-1, 2).astype(np.float64) * stride
            centres = np.repeat(centres, len(score) // max(1, len(centres)), axis=0)
            all_boxes.append(np.concatenate([centres - dist[:, :2], centres + dist[:, 2:]], axis=1))
            all_scores.append(score.astype(np.float64))
        return np.concatenate(all_boxes), np.concatenate(all_scores)


class FaceEmbedder:
    """ArcFace-style embeddings (L2-normalised float32) of face crops."""

    def __init__(self, path: Path, threads: int = 1) -> None:
        self.session = make_session(Path(path), threads)
        shape = self.session.get_inputs()[0].shape
        self.size = (
            (int(shape[3]), int(shape[2]))
            if all(isinstance(d, int) for d in shape[2:])
            else (112, 112)
        )
        self._input = self.session.get_inputs()[0].name

    def embed(self, image: np.ndarray, face: Face | None = None) -> np.ndarray:
        crop = image
        if face is not None:
            x1, y1, x2, y2 = (round(v) for v in face.box)
            crop = image[max(0, y1) : y2, max(0, x1) : x2]
        if crop.size == 0:
            raise ValueError("empty face crop")
        rgb = cv2.cvtColor(cv2.resize(crop, self.size), cv2.COLOR_BGR2RGB).astype(np.float32)
        x = ((rgb - 127.5) / 127.5).transpose(2, 0, 1)[None]
        vec = np.asarray(self.session.run(None, {self._input: x})[0], dtype=np.float32).reshape(-1)
        norm = float(np.linalg.norm(vec))
        if not np.isfinite(norm) or norm == 0:
            raise ValueError("face embedder returned a zero or non-finite vector")
        return vec / norm
