"""Plugin registries (python-can style): a name maps to a ``"module:Class"`` string imported only
when used, and installed distributions add more through an entry-point group."""

from __future__ import annotations

import importlib
import logging
from collections.abc import Mapping
from importlib.metadata import entry_points

from core.errors import ConfigError

log = logging.getLogger(__name__)


def registry(builtin: Mapping[str, str], group: str) -> dict[str, str]:
    """``builtin`` plus the entry points of ``group`` (a built-in name wins)."""
    reg = dict(builtin)
    try:
        for ep in entry_points(group=group):
            reg.setdefault(ep.name, ep.value)
    except Exception as err:  # a broken third-party distribution must not stop the caller
        log.warning("cannot read entry points %s: %s", group, err)
    return reg


def plugin_class(reg: Mapping[str, str], kind: str, base: type, what: str) -> type:
    """Import the class registered for ``kind``; ``what`` names it in errors ("source type")."""
    try:
        target = reg[kind]
    except KeyError as err:
        raise ConfigError(f"unknown {what} {kind!r}; known: {', '.join(sorted(reg))}") from err
    module, _, attr = target.partition(":")
    try:
        cls = getattr(importlib.import_module(module), attr)
    except (ImportError, AttributeError) as err:
        raise ConfigError(f"{what} {kind!r} is not available ({target}): {err}") from err
    if not (isinstance(cls, type) and issubclass(cls, base)):
        article = "an" if base.__name__[:1] in "AEIOU" else "a"
        raise ConfigError(f"{what} {kind!r}: {target} is not {article} {base.__name__}")
    return cls
