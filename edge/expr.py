"""Safe condition expressions over signals, parsed with ``ast`` against a whitelist (never ``eval``).

``Vehicle.Speed > 120 and Vehicle.Acceleration.Longitudinal < -8`` compiles to a function of
column arrays (one value of every referenced signal per row) that returns a boolean array: the
whole micro-batch is evaluated at once with NumPy.

Allowed: numbers, ``True``/``False``, VSS paths, ``+ - * / %``, unary ``-``/``not``, comparisons
(chains too), ``and``/``or``, and the functions ``abs``, ``min``, ``max``. Anything else (calls of
other names, attributes of non-paths, subscripts, lambdas, comprehensions...) is refused with the
column where it appears. A comparison with a missing value (NaN) is false.
"""

from __future__ import annotations

import ast
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from core.errors import ConfigError

MAX_LENGTH = 1000
MAX_NODES = 200

Columns = dict[str, np.ndarray]
_Fn = Callable[[Columns], np.ndarray]

_BINOPS: dict[type[ast.operator], Callable[[np.ndarray, np.ndarray], np.ndarray]] = {
    ast.Add: np.add,
    ast.Sub: np.subtract,
    ast.Mult: np.multiply,
    ast.Div: np.divide,
    ast.Mod: np.mod,
}
_CMPOPS: dict[type[ast.cmpop], Callable[[np.ndarray, np.ndarray], np.ndarray]] = {
    ast.Lt: np.less,
    ast.LtE: np.less_equal,
    ast.Gt: np.greater,
    ast.GtE: np.greater_equal,
    ast.Eq: np.equal,
    ast.NotEq: np.not_equal,
}
_FUNCS: dict[str, Callable[..., np.ndarray]] = {
    "abs": lambda a: np.abs(a),
    "min": lambda *a: np.minimum.reduce(np.broadcast_arrays(*a)),
    "max": lambda *a: np.maximum.reduce(np.broadcast_arrays(*a)),
}


@dataclass(frozen=True)
class Expression:
    """A compiled condition: ``evaluate(columns)`` gives one boolean per row."""

    text: str
    signals: tuple[str, ...]
    _fn: _Fn

    def evaluate(self, columns: Columns) -> np.ndarray:
        with np.errstate(all="ignore"):  # NaN and division by zero are data, not errors
            out = self._fn(columns)
        return np.asarray(out, dtype=bool) if out.dtype == bool else _truthy(out)


def _truthy(a: np.ndarray) -> np.ndarray:
    a = np.asarray(a, dtype=np.float64)
    return (a != 0) & ~np.isnan(a)


def _dotted(node: ast.expr) -> str | None:
    """``Vehicle.Speed`` as written, or None if the node is not a dotted name."""
    parts: list[str] = []
    while isinstance(node, ast.Attribute):
        parts.append(node.attr)
        node = node.value
    if isinstance(node, ast.Name):
        parts.append(node.id)
        return ".".join(reversed(parts))
    return None


class _Compiler:
    def __init__(self, text: str, where: str) -> None:
        self.text = text
        self.where = where
        self.signals: list[str] = []

    def fail(self, node: ast.AST, why: str) -> ConfigError:
        col = getattr(node, "col_offset", 0) + 1
        return ConfigError(f"{self.where}: expression {self.text!r}, column {col}: {why}")

    def compile(self, node: ast.expr) -> _Fn:  # one branch per allowed node type
        if isinstance(node, ast.Constant):
            if isinstance(node.value, bool | int | float):
                const = np.float64(node.value)
                return lambda cols: np.asarray(const)
            raise self.fail(node, f"only numbers are allowed, not {node.value!r}")
        if isinstance(node, ast.Attribute | ast.Name):
            path = _dotted(node)
            if path is None or "." not in path:
                raise self.fail(node, f"{path or 'this'} is not a signal path (e.g. Vehicle.Speed)")
            if path not in self.signals:
                self.signals.append(path)
            return lambda cols: cols[path]
        if isinstance(node, ast.BoolOp):
            parts = [self.compile(v) for v in node.values]
            combine = np.logical_and if isinstance(node.op, ast.And) else np.logical_or

            def boolop(cols: Columns) -> np.ndarray:
                acc = _as_bool(parts[0](cols))
                for p in parts[1:]:
                    acc = combine(acc, _as_bool(p(cols)))
                return acc

            return boolop
        if isinstance(node, ast.UnaryOp):
            inner = self.compile(node.operand)
            if isinstance(node.op, ast.Not):
                return lambda cols: ~_as_bool(inner(cols))
            if isinstance(node.op, ast.USub):
                return lambda cols: np.negative(inner(cols))
            if isinstance(node.op, ast.UAdd):
                return inner
            raise self.fail(node, "only -, + and not are allowed as unary operators")
        if isinstance(node, ast.BinOp):
            op = _BINOPS.get(type(node.op))
            if op is None:
                raise self.fail(node, "only + - * / % are allowed")
            left, right = self.compile(node.left), self.compile(node.right)
            return lambda cols: op(left(cols), right(cols))
        if isinstance(node, ast.Compare):
            ops = []
            for o in node.ops:
                fn = _CMPOPS.get(type(o))
                if fn is None:
                    raise self.fail(node, "only < <= > >= == != are allowed")
                ops.append(fn)
            terms = [self.compile(node.left)] + [self.compile(c) for c in node.comparators]

            def compare(cols: Columns) -> np.ndarray:
                vals = [t(cols) for t in terms]
                acc = ops[0](vals[0], vals[1])
                for i in range(1, len(ops)):
                    acc = acc & ops[i](vals[i], vals[i + 1])
                return np.asarray(acc)

            return compare
        if isinstance(node, ast.Call):
            name = node.func.id if isinstance(node.func, ast.Name) else None
            if name not in _FUNCS or node.keywords or not node.args:
                raise self.fail(node, f"only calls of {', '.join(_FUNCS)} are allowed")
            if name == "abs" and len(node.args) != 1:
                raise self.fail(node, "abs takes one argument")
            args = [self.compile(a) for a in node.args]
            fn = _FUNCS[name]
            return lambda cols: fn(*(a(cols) for a in args))
        raise self.fail(node, f"{type(node).__name__} is not allowed in a condition")


def _as_bool(a: np.ndarray) -> np.ndarray:
    a = np.asarray(a)
    return a if a.dtype == bool else _truthy(a)


def compile_expression(text: str, where: str = "condition") -> Expression:
    """Parse and check ``text``; raise ``ConfigError`` naming ``where`` and the column if refused."""
    if not isinstance(text, str) or not text.strip():
        raise ConfigError(f"{where}: the condition is empty")
    if len(text) > MAX_LENGTH:
        raise ConfigError(f"{where}: the condition is longer than {MAX_LENGTH} characters")
    try:
        tree = ast.parse(text.strip(), mode="eval")
    except SyntaxError as err:
        raise ConfigError(
            f"{where}: expression {text!r}, column {err.offset or 0}: {err.msg}"
        ) from err
    if sum(1 for _ in ast.walk(tree)) > MAX_NODES:
        raise ConfigError(f"{where}: the condition has more than {MAX_NODES} parts")
    comp = _Compiler(text, where)
    fn = comp.compile(tree.body)
    if not comp.signals:
        raise ConfigError(f"{where}: expression {text!r} refers to no signal")
    return Expression(text, tuple(comp.signals), fn)
