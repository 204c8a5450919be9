"""A virtual door actuator for demos and tests: remembers the state and every action."""

from __future__ import annotations

import time
from typing import Any

from core.errors import ActuatorError
from edge.actuators.base import Actuator


class VirtualActuator(Actuator):
    """``state`` is ``locked``/``unlocked``; ``fail_with`` makes every action fail (tests)."""

    kind = "virtual"

    def __init__(
        self,
        name: str,
        *,
        actions: list[str] | None = None,
        state: str = "unlocked",
        fail_with: str = "",
    ) -> None:
        super().__init__(name, actions)
        if state not in ("locked", "unlocked"):
            raise ValueError(f"state must be 'locked' or 'unlocked', got {state!r}")
        self.state, self.fail_with = state, fail_with
        self.history: list[tuple[float, str]] = []

    def _act_internal(self, action: str) -> dict[str, Any]:
        if self.fail_with:
            raise ActuatorError(self.fail_with)
        self.state = "locked" if action == "lock" else "unlocked"
        self.history.append((time.time(), action))
        return {"state": self.state}
