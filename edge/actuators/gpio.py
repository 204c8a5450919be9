"""Door lock/unlock through an aftermarket relay on a GPIO line: one pulse per action.

::

    [edge.actuators.relay]
    kind = "gpio"
    chip = "/dev/gpiochip0"       # the Linux GPIO character device
    lock_line = 17                # line offsets on that chip (a relay each)
    unlock_line = 27
    pulse_s = 0.5                 # how long the relay is held
    active_low = false            # most relay boards switch on a low level: set true for them
    backend = "auto"              # "gpiod" (pip install gpiod, libgpiod v2 bindings), "sysfs", "auto"

``auto`` uses the ``gpiod`` package when it is installed, else the deprecated sysfs interface
(``/sys/class/gpio``: the line is the global GPIO number there, ``sysfs_root`` moves it for tests).
Neither available: the action fails with a message that says which to install.
"""

from __future__ import annotations

import threading
import time
from pathlib import Path
from typing import Any

from core.errors import ActuatorError
from edge.actuators.base import Actuator


class GpioActuator(Actuator):
    """Pulses ``lock_line`` or ``unlock_line`` for ``pulse_s`` seconds."""

    kind = "gpio"

    def __init__(
        self,
        name: str,
        *,
        chip: str = "/dev/gpiochip0",
        lock_line: int | None = None,
        unlock_line: int | None = None,
        pulse_s: float = 0.5,
        active_low: bool = False,
        backend: str = "auto",
        sysfs_root: str = "/sys/class/gpio",
        actions: list[str] | None = None,
    ) -> None:
        lines = {"lock": lock_line, "unlock": unlock_line}
        given = [a for a, ln in lines.items() if ln is not None]
        super().__init__(name, actions if actions is not None else given)
        for action in self.actions:
            line = lines[action]
            if not isinstance(line, int) or isinstance(line, bool) or not 0 <= line < 4096:
                raise ValueError(f"{action}_line must be a line number 0..4095, got {line!r}")
        if not 0.01 <= pulse_s <= 5:
            raise ValueError("pulse_s must be in 0.01..5 s")
        if backend not in ("auto", "gpiod", "sysfs"):
            raise ValueError(f"backend must be auto, gpiod or sysfs, got {backend!r}")
        self.lines = {a: int(lines[a]) for a in self.actions}  # type: ignore[arg-type]
        self.chip, self.pulse_s, self.active_low = chip, pulse_s, active_low
        self.backend, self.sysfs_root = backend, Path(sysfs_root)
        self._lock = threading.Lock()

    def _which(self) -> str:
        if self.backend != "auto":
            return self.backend
        try:
            import gpiod  # noqa: F401
        except ImportError:
            return "sysfs"
        return "gpiod"

    def _act_internal(self, action: str) -> dict[str, Any]:
        line = self.lines[action]
        backend = self._which()
        with self._lock:
            if backend == "gpiod":
                self._pulse_gpiod(line)
            else:
                self._pulse_sysfs(line)
        return {"line": line, "pulse_s": self.pulse_s, "backend": backend}

    def _pulse_gpiod(self, line: int) -> None:
        try:
            import gpiod
            from gpiod.line import Direction, Value
        except ImportError as err:
            raise ActuatorError(
                "backend gpiod needs the gpiod package (pip install gpiod)"
            ) from err
        settings = gpiod.LineSettings(
            direction=Direction.OUTPUT, output_value=Value.INACTIVE, active_low=self.active_low
        )
        with gpiod.request_lines(self.chip, consumer="carpulse", config={line: settings}) as req:
            req.set_value(line, Value.ACTIVE)
            time.sleep(self.pulse_s)
            req.set_value(line, Value.INACTIVE)

    def _pulse_sysfs(self, line: int) -> None:
        root = self.sysfs_root
        pin = root / f"gpio{line}"
        if not root.is_dir():
            raise ActuatorError(
                f"no GPIO interface: {root} is missing and the gpiod package is not installed "
                "(pip install gpiod)"
            )
        if not pin.exists():
            (root / "export").write_text(str(line))
        (pin / "active_low").write_text("1" if self.active_low else "0")
        # output, starting inactive without a glitch ("high"/"low" are raw levels)
        (pin / "direction").write_text("high" if self.active_low else "low")
        value = pin / "value"
        value.write_text("1")
        try:
            time.sleep(self.pulse_s)
        finally:
            value.write_text("0")
