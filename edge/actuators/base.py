"""The actuator ABC (python-can ``BusABC`` style, like ``edge.sources``) and its registry.

``Actuator.act(action)`` checks the action, counts, and converts every failure of the plugin's
``_act_internal`` into ``ActuatorError``; it returns what the car did (a small dict the command's
ack carries). Plugins are imported only when used, so a missing driver (python-can, gpiod) never
breaks the others; installed packages add more through the entry-point group
``carpulse.edge.actuators``. Configured under ``[edge.actuators.<name>]`` with ``kind``.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections import Counter
from typing import Any, ClassVar, Final

from core.errors import ActuatorError, ConfigError
from core.plugins import plugin_class, registry

ENTRY_POINT_GROUP = "carpulse.edge.actuators"
ACTIONS: Final = ("lock", "unlock")

ACTUATORS: dict[str, str] = {
    "virtual": "edge.actuators.virtual:VirtualActuator",
    "can": "edge.actuators.can:CanActuator",
    "gpio": "edge.actuators.gpio:GpioActuator",
}


class Actuator(ABC):
    """Carries out ``lock``/``unlock`` (``actions``: the subset this one does)."""

    kind: ClassVar[str] = ""

    def __init__(self, name: str, actions: list[str] | None = None) -> None:
        self.name = name
        acts = list(ACTIONS if actions is None else actions)
        unknown = sorted(set(acts) - set(ACTIONS))
        if unknown or not acts:
            raise ValueError(f"actions must be a non-empty subset of {list(ACTIONS)}, got {acts}")
        self.actions = tuple(acts)
        self.counters: Counter[str] = Counter()

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.name!r})"

    def act(self, action: str) -> dict[str, Any]:
        """Carry out ``action``; returns what was done, raises ``ActuatorError`` otherwise."""
        if action not in self.actions:
            raise ActuatorError(f"{self!r} does not {action}")
        try:
            done = dict(self._act_internal(action))
        except ActuatorError:
            self.counters["failed"] += 1
            raise
        except Exception as err:  # a driver's own exception: converted here, once
            self.counters["failed"] += 1
            raise ActuatorError(f"{self!r}: {type(err).__name__}: {err}") from err
        self.counters[action] += 1
        return {"actuator": self.name, "kind": self.kind, **done}

    @abstractmethod
    def _act_internal(self, action: str) -> dict[str, Any]:
        """Do it (blocking, bounded in time); return what was done for the ack."""

    def close(self) -> None:  # noqa: B027 - optional hook
        """Release the bus or line."""


def _registry() -> dict[str, str]:
    return registry(ACTUATORS, ENTRY_POINT_GROUP)


def actuator_class(kind: str) -> type[Actuator]:
    """Import the plugin class registered for ``kind``."""
    return plugin_class(_registry(), kind, Actuator, "actuator kind")


def create_actuator(name: str, table: dict[str, Any]) -> Actuator:
    """Build ``[edge.actuators.<name>]``; bad options raise ``ConfigError`` naming the table."""
    opts = dict(table)
    kind = opts.pop("kind", None)
    if not isinstance(kind, str):
        raise ConfigError(f"[edge.actuators.{name}]: 'kind' is missing (can, gpio or virtual)")
    cls = actuator_class(kind)
    try:
        return cls(name, **opts)
    except (TypeError, ValueError) as err:
        raise ConfigError(f"[edge.actuators.{name}] (kind {kind}): {err}") from err
