"""PP-OCR's graphs with their elementwise chains fused at load: same outputs, fewer nodes, and any
graph or file the rewrite does not know is left as it is."""

from __future__ import annotations

import os
import sys
from pathlib import Path

import numpy as np
import pytest

onnx = pytest.importorskip("onnx")
ort = pytest.importorskip("onnxruntime")

from onnx import TensorProto, helper, numpy_helper  # noqa: E402

from models.plates import onnx_fuse  # noqa: E402
from models.plates.ocr import DET_MODEL, REC_MODEL, PaddleOcr, make_session, packaged_model_dir  # noqa: E402
from models.plates.synth import render_plate  # noqa: E402


def _session(model: bytes | str):  # type: ignore[no-untyped-def]
    opts = ort.SessionOptions()
    opts.intra_op_num_threads = 1
    opts.log_severity_level = 3
    return ort.InferenceSession(model, opts, providers=["CPUExecutionProvider"])


def _run(session, x: np.ndarray) -> np.ndarray:  # type: ignore[no-untyped-def]
    return np.asarray(session.run(None, {session.get_inputs()[0].name: x})[0])


def _block(path: Path, *, add3: float = 3.0, share_conv: bool = False) -> None:
    """Conv -> Mul(s) -> Add(b) -> hard-swish spelt out -> Mul(s2): PP-OCRv4's block, opset 12.

    ``add3`` other than 3 is not a hard-swish; ``share_conv`` gives the conv's output a second
    reader, so its affine block must stay.
    """
    rng = np.random.default_rng(0)
    w = rng.normal(0, 0.5, (4, 3, 3, 3)).astype(np.float32)
    consts = {
        "s": 1.7, "b": -0.4, "three": add3, "zero": 0.0, "six": 6.0, "six2": 6.0, "s2": 0.9,
    }  # fmt: skip
    nodes = [
        helper.make_node(
            "Constant", [], [k], value=numpy_helper.from_array(np.array([v], np.float32), k)
        )
        for k, v in consts.items()
    ]
    nodes += [
        helper.make_node("Conv", ["x", "w"], ["c"], pads=[1, 1, 1, 1]),
        helper.make_node("Mul", ["s", "c"], ["m"]),
        helper.make_node("Add", ["m", "b"], ["a"]),
        helper.make_node("Add", ["a", "three"], ["a3"]),
        helper.make_node("Clip", ["a3", "zero", "six"], ["cl"]),
        helper.make_node("Mul", ["a", "cl"], ["mm"]),
        helper.make_node("Div", ["mm", "six2"], ["hs"]),
        helper.make_node("Mul", ["s2", "hs"], ["y"]),
    ]
    outputs = [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 4, 8, 8])]
    if share_conv:
        outputs.append(helper.make_tensor_value_info("c", TensorProto.FLOAT, [1, 4, 8, 8]))
    graph = helper.make_graph(
        nodes,
        "block",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 3, 8, 8])],
        outputs,
        [numpy_helper.from_array(w, "w")],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 12)])
    model.ir_version = 7
    onnx.save(model, path)


def test_a_block_is_fused_and_computes_the_same(tmp_path: Path) -> None:
    path = tmp_path / "block.onnx"
    _block(path)
    fused = onnx_fuse.fused_bytes(path)
    assert fused is not None
    data, n_affine, n_swish = fused
    assert (n_affine, n_swish) == (1, 1)
    ops = [n.op_type for n in onnx.load_from_string(data).graph.node]
    assert ops == ["Constant", "Conv", "HardSigmoid", "Mul", "Mul"]  # only s2 is left a constant
    onnx.checker.check_model(onnx.load_from_string(data))
    rng = np.random.default_rng(1)
    # Values around hard-swish's knees (-3, 3), large ones, and NaN, which both must carry.
    x = rng.normal(0, 3, (1, 3, 8, 8)).astype(np.float32)
    x[0, 0, 0, :4] = [np.nan, 1e30, -1e30, 0.0]
    before, after = _run(_session(str(path)), x), _run(_session(data), x)
    assert np.array_equal(np.isnan(before), np.isnan(after))
    finite = np.isfinite(before)
    assert finite.sum() > 200
    assert np.allclose(before[finite], after[finite], rtol=1e-5, atol=1e-5)


def test_lookalikes_are_left_alone(tmp_path: Path) -> None:
    path = tmp_path / "not_swish.onnx"
    _block(path, add3=2.5)  # Clip(x + 2.5, 0, 6): not hard-swish
    fused = onnx_fuse.fused_bytes(path)
    assert fused is not None and fused[1:] == (1, 0)
    shared = tmp_path / "shared.onnx"
    _block(shared, share_conv=True)  # the conv's output is read elsewhere too
    fused = onnx_fuse.fused_bytes(shared)
    assert fused is not None and fused[1:] == (0, 1)
    x = np.random.default_rng(2).normal(0, 2, (1, 3, 8, 8)).astype(np.float32)
    for p in (path, shared):
        data = onnx_fuse.fused_bytes(p)
        assert data is not None
        assert np.allclose(_run(_session(str(p)), x), _run(_session(data[0]), x), atol=1e-5)


def test_files_it_cannot_use_are_left_to_onnxruntime(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    garbage = tmp_path / "garbage.onnx"
    garbage.write_bytes(b"\x00\xff" * 1000)
    assert onnx_fuse.fused_bytes(garbage) is None
    assert onnx_fuse.fused_bytes(tmp_path / "missing.onnx") is None
    plain = tmp_path / "plain.onnx"
    graph = helper.make_graph(
        [helper.make_node("Relu", ["x"], ["y"])],
        "plain",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [2])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [2])],
    )
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 12)]), plain)
    assert onnx_fuse.fused_bytes(plain) is None  # nothing to fuse
    assert make_session(plain, 1, fuse=True) is not None  # and it loads as it is
    block = tmp_path / "block.onnx"
    _block(block)
    onnx_fuse._fused_cached.cache_clear()
    monkeypatch.setitem(sys.modules, "onnx", None)  # a gate installed without onnx
    assert onnx_fuse.fused_bytes(block) is None
    onnx_fuse._fused_cached.cache_clear()


def test_a_changed_file_is_read_again(tmp_path: Path) -> None:
    path = tmp_path / "block.onnx"
    _block(path)
    first = onnx_fuse.fused_bytes(path)
    before = path.stat()
    _block(path, add3=2.5)
    # A second later, whatever the filesystem's clock granularity (two writes may share a tick).
    os.utime(path, ns=(before.st_atime_ns, before.st_mtime_ns + 10**9))
    second = onnx_fuse.fused_bytes(path)
    assert first is not None and second is not None
    assert first[1:] == (1, 1) and second[1:] == (1, 0)


@pytest.mark.parametrize(("name", "shape", "counts"), [
    (REC_MODEL, (1, 3, 48, 160), (28, 28)),
    (DET_MODEL, (1, 3, 224, 320), (28, 24)),
])  # fmt: skip
def test_pp_ocr_models_fuse_to_the_same_outputs(
    name: str, shape: tuple[int, ...], counts: tuple[int, int]
) -> None:
    path = packaged_model_dir() / name
    fused = onnx_fuse.fused_bytes(path)
    assert fused is not None and fused[1:] == counts
    before_nodes = len(onnx.load(path).graph.node)
    assert len(onnx.load_from_string(fused[0]).graph.node) < before_nodes - 100
    x = np.random.default_rng(3).uniform(-1, 1, shape).astype(np.float32)
    a, b = _run(_session(str(path)), x), _run(_session(fused[0]), x)
    assert a.shape == b.shape
    assert float(np.abs(a - b).max()) < 1e-4


def test_the_reader_reads_a_plate_the_same_fused_or_not(monkeypatch: pytest.MonkeyPatch) -> None:
    import models.plates.ocr as ocr

    loaded: list[tuple[str, bool]] = []
    real = ocr.fused_bytes

    def seen(path: Path) -> tuple[bytes, int, int] | None:
        out = real(path)
        loaded.append((path.name, out is not None))
        return out

    monkeypatch.setattr(ocr, "fused_bytes", seen)
    plate = render_plate("皖A12345", "ordinary", np.random.default_rng(4))
    fused, plain = PaddleOcr(fuse=True), PaddleOcr(fuse=False)
    assert loaded == [(REC_MODEL, True)]  # the fused one runs the rewritten graph, the plain not
    pa, pb = fused.recognise([plate])[0], plain.recognise([plate])[0]
    assert np.array_equal(pa.argmax(axis=1), pb.argmax(axis=1))
    assert float(np.abs(pa - pb).max()) < 1e-4
    scene = np.pad(plate, ((60, 60), (60, 60), (0, 0)), constant_values=90)
    da, db = fused.detect(scene), plain.detect(scene)
    assert loaded == [(REC_MODEL, True), (DET_MODEL, True)]
    assert len(da) == len(db) >= 1
    for a, b in zip(da, db, strict=True):
        assert np.allclose(
            np.array(a.rect[0] + a.rect[1]), np.array(b.rect[0] + b.rect[1]), atol=0.5
        )


def test_a_rewrite_that_fails_leaves_the_model_as_it_is(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    path = tmp_path / "block.onnx"
    _block(path)

    def broken(self: object) -> int:
        raise RuntimeError("an attribute the rewrite never saw")

    onnx_fuse._fused_cached.cache_clear()
    monkeypatch.setattr(onnx_fuse._Graph, "fold_affine", broken)
    with caplog.at_level("WARNING"):
        assert onnx_fuse.fused_bytes(path) is None
    assert "fusing failed" in caplog.text
    onnx_fuse._fused_cached.cache_clear()


def test_a_fused_graph_onnxruntime_refuses_loads_the_original(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    import models.plates.ocr as ocr

    path = tmp_path / "block.onnx"
    _block(path)
    monkeypatch.setattr(ocr, "fused_bytes", lambda p: (b"\x08\x07 not a model", 1, 1))
    with caplog.at_level("WARNING"):
        session = make_session(path, 1, fuse=True)
    assert "running it unfused" in caplog.text
    x = np.random.default_rng(6).normal(0, 2, (1, 3, 8, 8)).astype(np.float32)
    assert np.array_equal(_run(session, x), _run(_session(str(path)), x))
