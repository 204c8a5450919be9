"""Evaluations on public data: ``carpulse eval NAME ... --json``; plugins register ``name -> "module:function"``."""

from __future__ import annotations

import importlib
from collections.abc import Callable
from typing import Any

from core.errors import ConfigError

REGISTRY: dict[str, str] = {}


def run(name: str, **kwargs: Any) -> dict[str, Any]:
    try:
        target = REGISTRY[name]
    except KeyError as err:
        known = ", ".join(sorted(REGISTRY)) or "none yet"
        raise ConfigError(f"unknown evaluation {name!r}; known: {known}") from err
    module, _, attr = target.partition(":")
    fn: Callable[..., dict[str, Any]] = getattr(importlib.import_module(module), attr)
    return fn(**kwargs)
