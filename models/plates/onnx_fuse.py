"""PP-OCRv4's graphs with their elementwise chains fused, built in memory when a session loads.

The PP-OCRv4 models (``rapidocr-onnxruntime``'s, exported by paddle2onnx at opset 12) spell two
things out op by op, and onnxruntime 1.32 fuses neither:

- the learnable affine block after a convolution, ``Mul(conv, s)`` then ``Add(., b)`` with scalar
  ``s`` and ``b``: folded into the convolution's weights (``W * s``, ``B * s + b``);
- hard-swish, ``Add(x, 3)``, ``Clip(0, 6)``, ``Mul(x, .)``, ``Div(., 6)``: four passes over the
  tensor, made ``Mul(x, HardSigmoid(x))`` (opset 6; ``HardSwish`` needs opset 14, and moving the
  graph there breaks its opset-12 ``Squeeze``).

Recognition of a 48 x 160 crop went from 12.3 to 10.3 ms on one core, detection on a 320 px frame
from 14.7 to 12.7 ms; outputs differ by at most 3e-6 (BENCHMARKS.md, eighteenth session). Anything
unexpected (another graph, no ``onnx`` package) leaves the model as it is.
"""

from __future__ import annotations

import functools
import logging
from collections import defaultdict
from pathlib import Path
from typing import Any

import numpy as np

log = logging.getLogger(__name__)


def fused_bytes(path: Path) -> tuple[bytes, int, int] | None:
    """The model at ``path`` with both chains fused, and how many of each were; ``None`` when the
    ``onnx`` package is missing, the file does not parse, or nothing matched."""
    try:
        return _fused_cached(str(path), path.stat().st_mtime_ns)
    except OSError:
        return None


# Kept per process (about 15 MB for both PP-OCR models): the next reader loads without parsing
# and rewriting again (0.3-0.8 s), which every test and each restarted camera would pay.
@functools.lru_cache(maxsize=4)
def _fused_cached(path: str, _mtime: int) -> tuple[bytes, int, int] | None:
    try:
        import onnx
    except ImportError:
        log.info("onnx is not installed: %s runs unfused (pip install onnx: ~15%% faster)", path)
        return None
    try:
        model = onnx.load(path)
    except Exception as err:  # a damaged file: onnxruntime then gives the user its own error
        log.info("%s does not parse as ONNX (%s): not fused", path, err)
        return None
    try:
        n_affine, n_swish = fuse_in_place(model)
        if not n_affine and not n_swish:
            return None
        return model.SerializeToString(), n_affine, n_swish
    except Exception as err:  # a graph the rewrite does not expect: run it as it is
        log.warning("%s: fusing failed (%r), the model runs unfused", path, err)
        return None


def fuse_in_place(model: Any) -> tuple[int, int]:
    """Fuse both chains in the ``onnx.ModelProto`` ``model``; how many of each were. Raises on a
    graph the rewrite does not expect (the caller then runs the model as it was)."""
    graph = _Graph(model.graph)
    n_affine = graph.fold_affine()
    n_swish = graph.fuse_hard_swish()
    if n_affine or n_swish:
        graph.commit()
    return n_affine, n_swish


class _Graph:
    """One ONNX graph with producer and consumer indexes; rewrites are applied by ``commit``."""

    def __init__(self, graph: Any) -> None:
        from onnx import numpy_helper

        self.g = graph
        self._to_array = numpy_helper.to_array
        self._from_array = numpy_helper.from_array
        self.producer = {o: n for n in graph.node for o in n.output}
        self.consumers: dict[str, list[Any]] = defaultdict(list)
        for n in graph.node:
            for i in n.input:
                self.consumers[i].append(n)
        self.inits = {i.name: i for i in graph.initializer}
        self.dropped: set[int] = set()
        self.replaced: dict[int, list[Any]] = {}

    def const(self, name: str) -> np.ndarray | None:
        """The value of an initializer or a ``Constant`` node's output, else ``None``."""
        if name in self.inits:
            return np.asarray(self._to_array(self.inits[name]))
        node = self.producer.get(name)
        if node is not None and node.op_type == "Constant" and len(node.attribute) == 1:
            attr = node.attribute[0]
            if attr.name == "value":
                return np.asarray(self._to_array(attr.t))
        return None

    def scalar(self, name: str) -> float | None:
        v = self.const(name)
        if v is None or v.size != 1 or not np.issubdtype(v.dtype, np.floating):
            return None
        return float(v.ravel()[0])

    def only_consumer(self, name: str, op: str) -> Any | None:
        users = self.consumers.get(name, [])
        if len(users) != 1 or users[0].op_type != op or id(users[0]) in self.dropped:
            return None
        if any(o.name == name for o in self.g.output):
            return None
        return users[0]

    def other_input(self, node: Any, known: str) -> str | None:
        rest = [i for i in node.input if i != known]
        return rest[0] if len(rest) == 1 and len(node.input) == 2 else None

    def fold_affine(self) -> int:
        """``Conv -> Mul(scalar) -> Add(scalar)`` into the convolution's weights."""
        count = 0
        for conv in self.g.node:
            if conv.op_type != "Conv" or len(conv.input) < 2:
                continue
            mul = self.only_consumer(conv.output[0], "Mul")
            if mul is None:
                continue
            s_name = self.other_input(mul, conv.output[0])
            add = self.only_consumer(mul.output[0], "Add")
            if s_name is None or add is None:
                continue
            b_name = self.other_input(add, mul.output[0])
            s = self.scalar(s_name)
            b = self.scalar(b_name) if b_name is not None else None
            w = self.const(conv.input[1])
            if s is None or b is None or w is None or w.dtype != np.float32 or not w.ndim:
                continue
            has_bias = len(conv.input) > 2 and conv.input[2] != ""
            bias = self.const(conv.input[2]) if has_bias else np.zeros(w.shape[0], np.float32)
            if bias is None or bias.shape != (w.shape[0],):
                continue
            w_name, b_out = f"{conv.name or conv.output[0]}_affine_w", f"{conv.output[0]}_affine_b"
            self.g.initializer.extend(
                [
                    self._from_array((w * np.float32(s)).astype(np.float32), w_name),
                    self._from_array(
                        (bias * np.float32(s) + np.float32(b)).astype(np.float32), b_out
                    ),
                ]
            )
            while len(conv.input) < 3:
                conv.input.append("")
            conv.input[1], conv.input[2] = w_name, b_out
            conv.output[0] = add.output[0]
            self.dropped.update((id(mul), id(add)))
            count += 1
        return count

    def fuse_hard_swish(self) -> int:
        """``x * Clip(x + 3, 0, 6) / 6`` into ``Mul(x, HardSigmoid(x, 1/6, 1/2))``."""
        from onnx import helper

        count = 0
        for clip in self.g.node:
            if clip.op_type != "Clip" or len(clip.input) != 3 or id(clip) in self.dropped:
                continue
            add: Any = self.producer.get(clip.input[0])
            if add is None or add.op_type != "Add" or id(add) in self.dropped:
                continue
            consts = [i for i in add.input if self.scalar(i) is not None]
            if len(add.input) != 2 or len(consts) != 1 or self.scalar(consts[0]) != 3.0:
                continue
            x = self.other_input(add, consts[0])
            if x is None or self.scalar(clip.input[1]) != 0.0 or self.scalar(clip.input[2]) != 6.0:
                continue
            user = self.only_consumer(add.output[0], "Clip")
            if user is None or user is not clip:
                continue
            mul = self.only_consumer(clip.output[0], "Mul")
            if mul is None or sorted(mul.input) != sorted([x, clip.output[0]]):
                continue
            div = self.only_consumer(mul.output[0], "Div")
            if div is None or div.input[0] != mul.output[0] or self.scalar(div.input[1]) != 6.0:
                continue
            gate = f"{div.output[0]}_hard_sigmoid"
            self.replaced[id(div)] = [
                helper.make_node("HardSigmoid", [x], [gate], alpha=1.0 / 6.0, beta=0.5),
                helper.make_node("Mul", [x, gate], [div.output[0]]),
            ]
            self.dropped.update((id(add), id(clip), id(mul)))
            count += 1
        return count

    def commit(self) -> None:
        """Apply the rewrites, then drop constants and initializers nothing reads any more."""
        nodes: list[Any] = []
        for n in self.g.node:
            if id(n) in self.replaced:
                nodes.extend(self.replaced[id(n)])
            elif id(n) not in self.dropped:
                nodes.append(n)
        while True:
            used = {i for n in nodes for i in n.input} | {o.name for o in self.g.output}
            kept = [n for n in nodes if n.op_type != "Constant" or n.output[0] in used]
            if len(kept) == len(nodes):
                break
            nodes = kept
        del self.g.node[:]
        self.g.node.extend(nodes)
        inits = [i for i in self.g.initializer if i.name in used]
        del self.g.initializer[:]
        self.g.initializer.extend(inits)


def narrowed_bytes(model: bytes, classes: tuple[int, ...], width: int) -> bytes | None:
    """``model`` (a recogniser ending ``Softmax(MatMul(x, W) + b)`` over ``width`` classes) with
    only ``classes`` kept in ``W`` and ``b``, in that order; ``None`` when the graph does not end
    so (then it runs whole).

    The softmax over the kept classes is the full one renormalised over them, to float rounding:
    what ``PlateDecoder(plate_only=True)`` computes anyway. PP-OCRv4's last layer maps 120
    features to 6,625 classes at every frame, and a plate uses 96 of them: about 8 % of a
    recognition run (BENCHMARKS.md, twenty-fifth session).
    """
    try:
        import onnx
    except ImportError:
        return None
    if not classes or min(classes) < 0 or max(classes) >= width:
        return None
    try:
        proto = onnx.ModelProto()
        proto.ParseFromString(model)
        graph = _Graph(proto.graph)
        if len(proto.graph.output) != 1:
            return None
        out = proto.graph.output[0]

        def made(name: str) -> Any | None:  # the node computing ``name``, past any Identity
            node = graph.producer.get(name)
            while node is not None and node.op_type == "Identity" and len(node.input) == 1:
                node = graph.producer.get(node.input[0])
            return node

        softmax = made(out.name)
        add = made(softmax.input[0]) if softmax is not None else None
        if softmax is None or softmax.op_type != "Softmax" or add is None or add.op_type != "Add":
            return None
        if len(add.input) != 2:
            return None
        matmul = next(
            (n for n in map(made, add.input) if getattr(n, "op_type", "") == "MatMul"), None
        )
        if matmul is None:
            return None
        # The bias is the Add's other input (a constant, so never behind an Identity here).
        b_name = next((i for i in add.input if made(i) is not matmul), None)
        # The softmax must be over the classes alone (the last axis of the 3-D output).
        axis = next((a.i for a in softmax.attribute if a.name == "axis"), None)
        if axis not in (-1, 2):
            return None
        w_name = matmul.input[1]
        if b_name is None:
            return None
        w, b = graph.const(w_name), graph.const(b_name)
        if w is None or b is None or w.ndim != 2 or w.shape[1] != width or b.shape != (width,):
            return None
        # Each constant feeds this layer only (else narrowing it would change another node).
        if len(graph.consumers[w_name]) != 1 or len(graph.consumers[b_name]) != 1:
            return None
        keep = np.asarray(classes, dtype=np.int64)
        for name, value in ((w_name, w[:, keep]), (b_name, b[keep])):
            tensor = graph._from_array(np.ascontiguousarray(value), name)
            if name in graph.inits:
                graph.inits[name].CopyFrom(tensor)
            else:
                graph.producer[name].attribute[0].t.CopyFrom(tensor)
        dims = out.type.tensor_type.shape.dim
        if dims:
            dims[len(dims) - 1].ClearField("dim_param")
            dims[len(dims) - 1].dim_value = len(keep)
        # Shapes recorded for the tensors between the layer and the output are stale now.
        stale = [
            v
            for v in proto.graph.value_info
            if v.type.tensor_type.shape.dim and v.type.tensor_type.shape.dim[-1].dim_value == width
        ]
        for v in stale:
            proto.graph.value_info.remove(v)
        return proto.SerializeToString()
    except Exception as err:  # a graph this does not expect: run it whole
        log.warning("narrowing the recogniser's classes failed (%r): it runs whole", err)
        return None
