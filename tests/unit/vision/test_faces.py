"""Faces: tiny ONNX models built here with onnx.helper, consent-gated enrolment, deletion on withdrawal."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from core.errors import ConsentError
from edge.gate import FaceMatcher, GateConfig, GateLoop
from models.faces.gallery import FaceGallery
from models.faces.onnx_models import FaceDetector, FaceEmbedder


def _save(graph: onnx.GraphProto, path: Path) -> Path:
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.checker.check_model(model)
    onnx.save(model, str(path))
    return path


def build_detector(path: Path) -> Path:
    """'boxes' contract: one fixed box whose score rises with the image's brightness."""
    box = numpy_helper.from_array(np.array([[40.0, 40.0, 200.0, 240.0]], np.float32), "box")
    k = numpy_helper.from_array(np.array([[20.0]], np.float32), "k")
    c = numpy_helper.from_array(np.array([[0.0]], np.float32), "c")
    nodes = [
        helper.make_node("ReduceMean", ["input"], ["m"], keepdims=0),  # [1]
        helper.make_node("Reshape", ["m", "shape11"], ["m2"]),
        helper.make_node("Sub", ["m2", "c"], ["d"]),
        helper.make_node("Mul", ["d", "k"], ["z"]),
        helper.make_node("Sigmoid", ["z"], ["score"]),
        helper.make_node("Concat", ["box", "score"], ["out"], axis=1),  # [1, 5]
    ]
    shape = numpy_helper.from_array(np.array([1, 1], np.int64), "shape11")
    graph = helper.make_graph(
        nodes,
        "det",
        [helper.make_tensor_value_info("input", TensorProto.FLOAT, [1, 3, 320, 320])],
        [helper.make_tensor_value_info("out", TensorProto.FLOAT, [1, 5])],
        [box, k, c, shape],
    )
    return _save(graph, path)


def build_embedder(path: Path, dim: int = 32) -> Path:
    """ArcFace contract: [1, 3, 112, 112] -> [1, dim], a fixed random projection of a pooled image."""
    w = np.random.default_rng(7).normal(size=(3 * 14 * 14, dim)).astype(np.float32)
    nodes = [
        helper.make_node("AveragePool", ["input"], ["p"], kernel_shape=[8, 8], strides=[8, 8]),
        helper.make_node("Flatten", ["p"], ["f"]),
        helper.make_node("MatMul", ["f", "w"], ["emb"]),
    ]
    graph = helper.make_graph(
        nodes,
        "emb",
        [helper.make_tensor_value_info("input", TensorProto.FLOAT, [1, 3, 112, 112])],
        [helper.make_tensor_value_info("emb", TensorProto.FLOAT, [1, dim])],
        [numpy_helper.from_array(w, "w")],
    )
    return _save(graph, path)


def _face(seed: int) -> np.ndarray:
    """A bright 'face' picture: smooth random blobs (noise would average away in the pool)."""
    rng = np.random.default_rng(seed)
    small = rng.integers(120, 255, (6, 5, 3), dtype=np.uint8)
    import cv2

    return cv2.resize(small, (250, 300), interpolation=cv2.INTER_CUBIC)


@pytest.fixture()
def models(tmp_path: Path) -> tuple[FaceDetector, FaceEmbedder]:
    det = FaceDetector(build_detector(tmp_path / "det.onnx"), "boxes")
    emb = FaceEmbedder(build_embedder(tmp_path / "emb.onnx"))
    return det, emb


def test_detector_contract(models: tuple[FaceDetector, FaceEmbedder]) -> None:
    det, _ = models
    faces = det.detect(_face(1))
    assert len(faces) == 1 and faces[0].score > 0.9
    x1, y1, x2, y2 = faces[0].box
    assert 0 <= x1 < x2 <= 250 and 0 <= y1 < y2 <= 300
    assert det.detect(np.zeros((300, 250, 3), np.uint8)) == []  # dark frame: no face


def test_enrol_only_with_consent_and_withdrawal_deletes(
    tmp_path: Path, models: tuple[FaceDetector, FaceEmbedder]
) -> None:
    det, emb = models
    consented = {"m-1"}
    path = tmp_path / "gallery.npz"
    gallery = FaceGallery(path, lambda m: m in consented, threshold=0.9)
    alice, bob = _face(1), _face(2)
    vec_a = emb.embed(alice, det.detect(alice)[0])
    with pytest.raises(ConsentError):
        gallery.enrol("m-2", emb.embed(bob, det.detect(bob)[0]))
    assert "m-2" not in gallery and not path.exists()
    assert gallery.enrol("m-1", vec_a) == 1
    # Only embeddings are on disk: one float vector per enrolment, no pixels.
    with np.load(path) as data:
        assert data.files == ["m-1"] and data["m-1"].shape == (1, 32)
    assert gallery.match(emb.embed(alice, det.detect(alice)[0]))[0] == "m-1"  # type: ignore[index]
    assert gallery.match(emb.embed(bob, det.detect(bob)[0])) is None
    # Withdrawal deletes the embeddings, on disk too.
    assert gallery.withdraw("m-1")
    with np.load(path) as data:
        assert data.files == []
    assert FaceGallery(path, lambda m: True).members == []


def test_sync_consent_removes_members_whose_consent_is_gone(
    tmp_path: Path, models: tuple[FaceDetector, FaceEmbedder]
) -> None:
    _, emb = models
    consented = {"m-1", "m-2"}
    gallery = FaceGallery(tmp_path / "g.npz", lambda m: m in consented)
    gallery.enrol("m-1", emb.embed(_face(1)))
    gallery.enrol("m-2", emb.embed(_face(2)))
    consented.discard("m-2")  # withdrawn in the CRM
    assert gallery.sync_consent() == ["m-2"]
    assert FaceGallery(tmp_path / "g.npz", lambda m: True).members == ["m-1"]


def test_gate_emits_face_events_for_enrolled_members_only(
    tmp_path: Path, models: tuple[FaceDetector, FaceEmbedder]
) -> None:
    det, emb = models
    gallery = FaceGallery(tmp_path / "g.npz", lambda m: True, threshold=0.9)
    alice = _face(1)
    gallery.enrol("m-1", emb.embed(alice, det.detect(alice)[0]))

    class NoPlates:
        def read(self, image: np.ndarray) -> list[object]:
            return []

    events: list[tuple[str, int, int, dict[str, object]]] = []
    loop = GateLoop(
        GateConfig(source=str(tmp_path), presence=False),
        lambda *ev: events.append(ev),
        reader=NoPlates(),
        faces=FaceMatcher(det, emb, gallery),
    )
    loop.process(_face(2), 1.0)  # a stranger: nothing
    loop.process(alice, 2.0)
    loop.process(alice, 3.0)  # same member again within the dedupe window
    assert [e[0] for e in events] == ["gate.face"]
    data = events[0][3]
    assert data["member_id"] == "m-1" and float(data["similarity"]) > 0.9  # type: ignore[arg-type]
    assert set(data) == {"member_id", "similarity", "camera", "time"}
