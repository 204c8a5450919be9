"""Sink plug-ins by name: ``[stream] sink`` selects one (``stream.sinks.base.Sink``).

``SINKS`` maps a name to ``"module:Class"``, imported only when that name is used, so a missing
optional client library never breaks the other sinks. Installed packages add more through the
``carpulse.sinks`` entry-point group (``name = "package.module:Class"``); a built-in name wins.
"""

from __future__ import annotations

import importlib
from importlib.metadata import entry_points
from typing import TYPE_CHECKING, Any

from core.errors import ConfigError

if TYPE_CHECKING:
    from stream.sinks.base import Sink

ENTRY_POINT_GROUP = "carpulse.sinks"

SINKS: dict[str, str] = {
    "influx-v1": "stream.sinks.influx:InfluxV1Sink",
    "influx-v2": "stream.sinks.influx:InfluxV2Sink",
}


def known_sinks() -> dict[str, str]:
    """Built-in sinks and those of installed packages (``carpulse.sinks`` entry points)."""
    found = {ep.name: ep.value for ep in entry_points(group=ENTRY_POINT_GROUP)}
    return {**found, **SINKS}


def sink_name(settings: Any) -> str:
    """The configured sink: ``[stream] sink``, or ``influx-<[influx] api>`` when it is empty."""
    return settings.stream.sink or f"influx-{settings.influx.api}"


def sink_class(name: str) -> type[Sink]:
    """The class registered as ``name``; ``ConfigError`` names the known sinks otherwise."""
    known = known_sinks()
    try:
        target = known[name]
    except KeyError:
        raise ConfigError(
            f"[stream] sink = {name!r} is not a known sink; known: {', '.join(sorted(known))}"
        ) from None
    module, _, attr = target.partition(":")
    try:
        cls = getattr(importlib.import_module(module), attr)
    except (ImportError, AttributeError) as err:
        raise ConfigError(f"sink {name!r} ({target}) is not available: {err}") from err
    from stream.sinks.base import Sink

    if not (isinstance(cls, type) and issubclass(cls, Sink)):
        raise ConfigError(f"sink {name!r} ({target}) is not a stream.sinks.base.Sink")
    return cls


def make_sink(settings: Any) -> Sink:
    """The sink ``settings`` (``core.config.CarpulseSettings``) select, not started yet."""
    return sink_class(sink_name(settings)).from_settings(settings)
