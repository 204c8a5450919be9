"""PP-OCR's recogniser computing only the plate decoder's classes: the same probabilities,
renormalised over them, and the same readings; graphs that do not end in the expected layer run
whole."""

from __future__ import annotations

import numpy as np
import pytest

onnx = pytest.importorskip("onnx")
ort = pytest.importorskip("onnxruntime")

from onnx import TensorProto, helper, numpy_helper  # noqa: E402

from models.plates import onnx_fuse  # noqa: E402
from models.plates.decode import PlateDecoder, plate_chars  # noqa: E402
from models.plates.ocr import PaddleOcr  # noqa: E402
from models.plates.synth import render_plate, render_two_row  # noqa: E402

WIDTH = 9


def _head(
    *,
    axis: int = 2,
    init: bool = False,
    shared: bool = False,
    op: str = "Softmax",
    identity: bool = False,
) -> bytes:
    """``x [1, T, 4] -> Softmax(MatMul(x, W) + b)`` over ``WIDTH`` classes, opset 12.

    ``init``: W and b as initializers (else ``Constant`` nodes, as paddle2onnx writes them);
    ``shared``: b is added to a second output too, so it must not be narrowed; ``identity``:
    Identity nodes between the layers (newer paddle2onnx exports have them)."""
    rng = np.random.default_rng(0)
    w = rng.normal(0, 1, (4, WIDTH)).astype(np.float32)
    b = rng.normal(0, 1, WIDTH).astype(np.float32)
    inits, nodes = [], []
    for name, value in (("w", w), ("b", b)):
        if init:
            inits.append(numpy_helper.from_array(value, name))
        else:
            nodes.append(
                helper.make_node("Constant", [], [name], value=numpy_helper.from_array(value, name))
            )
    last = helper.make_node(op, ["a"], ["y"], **({"axis": axis} if op == "Softmax" else {}))
    if identity:
        nodes += [
            helper.make_node("MatMul", ["x", "w"], ["m0"]),
            helper.make_node("Identity", ["m0"], ["m"]),
            helper.make_node("Add", ["m", "b"], ["a0"]),
            helper.make_node("Identity", ["a0"], ["a1"]),
            helper.make_node("Identity", ["a1"], ["a"]),
            last,
        ]
    else:
        nodes += [
            helper.make_node("MatMul", ["x", "w"], ["m"]),
            helper.make_node("Add", ["m", "b"], ["a"]),
            last,
        ]
    outputs = [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, "T", WIDTH])]
    if shared:
        nodes.append(helper.make_node("Add", ["b", "b"], ["b2"]))
        outputs.append(helper.make_tensor_value_info("b2", TensorProto.FLOAT, [WIDTH]))
    graph = helper.make_graph(
        nodes,
        "head",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, "T", 4])],
        outputs,
        inits,
    )
    if identity:  # the shapes an exporter records for the tensors on the way
        graph.value_info.extend(
            helper.make_tensor_value_info(name, TensorProto.FLOAT, [1, "T", WIDTH])
            for name in ("m0", "m", "a0", "a1", "a")
        )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 12)])
    model.ir_version = 7
    return model.SerializeToString()


def _run(model: bytes, x: np.ndarray) -> np.ndarray:
    opts = ort.SessionOptions()
    opts.intra_op_num_threads = 1
    session = ort.InferenceSession(model, opts, providers=["CPUExecutionProvider"])
    return np.asarray(session.run(None, {"x": x})[0])


@pytest.mark.parametrize(("init", "identity"), [(False, False), (True, False), (False, True)])
def test_the_kept_classes_are_the_full_softmax_renormalised(init: bool, identity: bool) -> None:
    model = _head(init=init, identity=identity)
    keep = (0, 2, 3, 7)
    narrow = onnx_fuse.narrowed_bytes(model, keep, WIDTH)
    assert narrow is not None
    onnx.checker.check_model(onnx.load_from_string(narrow))
    x = np.random.default_rng(1).normal(0, 3, (1, 6, 4)).astype(np.float32)
    x[0, 0] = [1e30, -1e30, 0.0, 5.0]  # extreme logits: both must stay finite or both not
    full, part = _run(model, x), _run(narrow, x)
    assert part.shape == (1, 6, len(keep))
    ref = full[..., list(keep)] / full[..., list(keep)].sum(axis=-1, keepdims=True)
    finite = np.isfinite(ref)
    assert np.array_equal(finite, np.isfinite(part))
    assert finite[0, 1:].all()
    assert np.allclose(part[finite], ref[finite], atol=1e-6)


@pytest.mark.parametrize(
    ("model", "keep"),
    [
        (_head(axis=1), (0, 1)),  # a softmax over the frames, not the classes
        (_head(shared=True), (0, 1)),  # the bias is read elsewhere too
        (_head(op="Sigmoid"), (0, 1)),  # no softmax at the end
        (_head(), ()),  # nothing to keep
        (_head(), (0, WIDTH)),  # a class the layer does not have
        (_head(), (-1, 2)),
        (b"\x00\xff" * 100, (0, 1)),  # not a model at all
    ],
)
def test_graphs_it_does_not_know_run_whole(model: bytes, keep: tuple[int, ...]) -> None:
    assert onnx_fuse.narrowed_bytes(model, keep, WIDTH) is None


def test_a_width_that_does_not_match_the_layer_runs_whole() -> None:
    assert onnx_fuse.narrowed_bytes(_head(), (0, 1), WIDTH + 1) is None


@pytest.fixture(scope="module")
def recognisers() -> tuple[PaddleOcr, PaddleOcr]:
    return PaddleOcr(), PaddleOcr(narrow=plate_chars())


def test_pp_ocr_narrowed_reads_plates_as_the_whole_model(
    recognisers: tuple[PaddleOcr, PaddleOcr],
) -> None:
    whole, narrow = recognisers
    assert len(whole.alphabet) == 6625
    assert narrow.alphabet[0] == "<blank>" and 90 <= len(narrow.alphabet) <= 120
    assert set(narrow.alphabet[1:]) <= plate_chars()
    # Every plate character PP-OCR has is kept (the decoder could read nothing else).
    assert {ch for ch in whole.alphabet if ch in plate_chars()} == set(narrow.alphabet[1:])
    keep = [0] + [whole.alphabet.index(ch) for ch in narrow.alphabet[1:]]
    dec_whole = PlateDecoder(whole.alphabet, plate_only=True)
    dec_narrow = PlateDecoder(narrow.alphabet, plate_only=True)
    rng = np.random.default_rng(5)
    crops = [
        render_plate("皖A12345", "ordinary", rng),
        render_plate("粤B0D1234", "new-energy-small", rng),
        render_plate("鄂F8888警", "police", rng),
        render_two_row("京EA5331", "large", "yellow", (440, 220), rng),
        rng.integers(0, 256, (40, 130, 3), dtype=np.uint8),  # noise: no plate
    ]
    read = 0
    for crop in crops:
        a, b = whole.recognise([crop])[0], narrow.recognise([crop])[0]
        assert b.shape == (a.shape[0], len(narrow.alphabet))
        ref = a[:, keep] / a[:, keep].sum(axis=1, keepdims=True)
        assert float(np.abs(ref - b).max()) < 1e-5
        da, db = dec_whole.constrained(a), dec_narrow.constrained(b)
        assert (da is None) == (db is None)
        if da is not None and db is not None:
            assert da.text == db.text
            assert np.allclose(da.char_probs, db.char_probs, atol=1e-5)
            read += da.text in ("皖A12345", "粤B0D1234", "鄂F8888警")
    assert read >= 2  # the check compared real readings, not two empty ones


def test_the_reader_runs_the_narrowed_recogniser_only_for_plate_decoding() -> None:
    from models.plates.reader import PlateReader

    assert len(PlateReader(threads=1).ocr.alphabet) < 200
    # A decoder over every class (``plate_only=False``) needs them all computed.
    assert len(PlateReader(threads=1, plate_only=False).ocr.alphabet) == 6625
