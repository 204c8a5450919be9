"""Name -> ``"module:function"`` registries for benchmarks, evaluations and tool commands.

A plugin function takes the remaining command-line arguments (``argv``), parses them itself
(argparse) and returns one JSON-able dict. Modules are imported only when their name is used,
so a missing optional dependency never breaks the others.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable
from typing import Any

from core.errors import ConfigError

BENCHMARKS: dict[str, str] = {
    "wire": "carpulse.bench:bench_wire",
    "decode": "carpulse.bench.decode:bench_decode",
    "obd": "carpulse.bench.obd:bench_obd",
    "kernels": "carpulse.bench.kernels:bench_kernels",
    "e2e": "carpulse.bench.e2e:bench_e2e",
    "edge": "carpulse.bench.edge:bench_edge",
    "edge-queue": "carpulse.bench.edge_queue:bench_edge_queue",
    "edge-arm64": "carpulse.bench.edge_arm64:bench_edge_arm64",
    "edge-memory": "carpulse.bench.edge_memory:bench_edge_memory",
    "canread": "carpulse.bench.canread:bench_canread",
    "envelope": "carpulse.bench.envelope:bench_envelope",
}

EVALUATIONS: dict[str, str] = {
    "nab": "carpulse.evals.nab:main",
    "cmapss": "carpulse.evals.cmapss:main",
    "can-ids": "carpulse.evals.can_ids:main",
    "plates": "carpulse.evals.plates:main",
    "faults": "carpulse.evals.faults:main",
}


TOOLS_OBD: dict[str, str] = {
    "scan": "firmware_bridge.obd.cli:scan",
}

TOOLS_PLATES: dict[str, str] = {
    "synth": "models.plates.synth:main",
    "train": "models.plates.train:main",
}


def load(registry: dict[str, str], kind: str, name: str) -> Callable[[list[str]], dict[str, Any]]:
    try:
        target = registry[name]
    except KeyError as err:
        raise ConfigError(f"unknown {kind} {name!r}; known: {', '.join(sorted(registry))}") from err
    module, _, attr = target.partition(":")
    try:
        mod = importlib.import_module(module)
    except ModuleNotFoundError as err:
        raise ConfigError(f"{kind} {name!r} is not available: {err}") from err
    fn: Callable[[list[str]], dict[str, Any]] = getattr(mod, attr)
    return fn
