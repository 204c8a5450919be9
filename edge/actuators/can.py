"""Door lock/unlock as a CAN frame built from a DBC message (cantools) sent with python-can.

::

    [edge.actuators.doors]
    kind = "can"
    dbc = "/etc/carpulse/body.dbc"
    message = "BCM_DoorCmd"                  # the message the body controller obeys
    lock = {DoorLockReq = 1}                 # signal values (physical; named values allowed)
    unlock = {DoorLockReq = 2}
    channel = "can0"                         # python-can channel and interface
    interface = "socketcan"
    repeat = 3                               # frames sent per action (a BCM may want several)
    gap_s = 0.02

Signals not given take their DBC initial value (raw 0 without one). The frames are built when the
actuator is created, so a wrong message or signal stops the agent at start with a clear message,
not at the first command.
"""

from __future__ import annotations

import threading
import time
from typing import Any

from core.errors import ActuatorError, ConfigError
from edge.actuators.base import ACTIONS, Actuator


class CanActuator(Actuator):
    """Sends the ``lock``/``unlock`` frame ``repeat`` times on a python-can bus."""

    kind = "can"

    def __init__(
        self,
        name: str,
        *,
        dbc: str,
        message: str,
        channel: str,
        interface: str = "socketcan",
        lock: dict[str, Any] | None = None,
        unlock: dict[str, Any] | None = None,
        actions: list[str] | None = None,
        repeat: int = 1,
        gap_s: float = 0.02,
        bitrate: int | None = None,
    ) -> None:
        values = {"lock": lock, "unlock": unlock}
        given = [a for a in ACTIONS if values[a] is not None]
        super().__init__(name, actions if actions is not None else given)
        if not 1 <= repeat <= 20:
            raise ValueError("repeat must be in 1..20")
        if not 0 <= gap_s <= 1:
            raise ValueError("gap_s must be in 0..1 s")
        from firmware_bridge.dbc import load_dbc

        db = load_dbc(dbc)
        try:
            msg = db.get_message_by_name(message)
        except KeyError as err:
            raise ConfigError(f"{dbc}: no message {message!r}") from err
        self.arbitration_id, self.is_extended = msg.frame_id, msg.is_extended_frame
        self.frames: dict[str, bytes] = {}
        for action in self.actions:
            wanted = values[action]
            if not isinstance(wanted, dict) or not wanted:
                raise ValueError(f"{action} = {{signal = value, ...}} is needed for {action}")
            unknown = sorted(set(wanted) - {s.name for s in msg.signals})
            if unknown:
                raise ConfigError(f"{dbc}: message {message} has no signal(s) {unknown}")
            # raw 0 for every signal, the DBC's initial values over it, then the configured ones
            try:
                zero: Any = msg.decode(bytes(msg.length), decode_choices=False)
                phys: dict[str, Any] = dict(zero)
                phys.update({s.name: s.initial for s in msg.signals if s.initial is not None})
                phys.update(wanted)
                self.frames[action] = bytes(msg.encode(phys, strict=True))
            except Exception as err:  # cantools: EncodeError, KeyError, ValueError...
                raise ConfigError(f"{dbc}: {message} {action} = {wanted}: {err}") from err
        self.channel, self.interface, self.bitrate = channel, interface, bitrate
        self.repeat, self.gap_s = repeat, gap_s
        self._bus: Any = None
        self._lock = threading.Lock()

    def _open(self) -> Any:
        if self._bus is None:
            import can

            kw: dict[str, Any] = {"channel": self.channel, "interface": self.interface}
            if self.bitrate:
                kw["bitrate"] = self.bitrate
            self._bus = can.Bus(**kw)
        return self._bus

    def _act_internal(self, action: str) -> dict[str, Any]:
        import can

        data = self.frames[action]
        frame = can.Message(
            arbitration_id=self.arbitration_id, data=data, is_extended_id=self.is_extended
        )
        with self._lock:
            try:
                bus = self._open()
                for i in range(self.repeat):
                    if i:
                        time.sleep(self.gap_s)
                    bus.send(frame, timeout=0.5)
            except (can.CanError, OSError) as err:
                self.close()  # reopen next time: the interface may come back
                raise ActuatorError(f"CAN {self.channel}: {err}") from err
        return {
            "frame": f"{self.arbitration_id:03X}#{data.hex().upper()}",
            "sent": self.repeat,
            "channel": self.channel,
        }

    def close(self) -> None:
        bus, self._bus = self._bus, None
        if bus is not None:
            bus.shutdown()
