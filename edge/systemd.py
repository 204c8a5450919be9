"""systemd integration without dependencies: sd_notify over ``$NOTIFY_SOCKET`` and a watchdog helper.

Public API (the agent loop uses only this)::

    from edge import systemd

    wd = systemd.Watchdog()          # reads $WATCHDOG_USEC / $WATCHDOG_PID; no-op outside systemd
    systemd.notify("READY=1")        # once sources are open and the queue is ready
    while running:
        ...one iteration of the real work (read, campaigns, queue, publish)...
        wd.kick()                    # sends WATCHDOG=1 at most every WatchdogSec/2
        wd.status(f"{rate} samples/s, backlog {n}")   # STATUS=..., rate-limited too
    systemd.notify("STOPPING=1")

Call ``kick`` from the loop that does the work, never from a timer thread: a stuck loop must stop
the pings so systemd restarts the agent (``Restart=always`` in the unit). Outside systemd (no
``$NOTIFY_SOCKET``) every call returns ``False`` and does nothing.
"""

from __future__ import annotations

import logging
import os
import socket
import time
from collections.abc import Callable, Mapping

log = logging.getLogger(__name__)


def _address(path: str) -> str | bytes:
    # "@name" is a Linux abstract socket: a leading NUL byte instead of a file.
    return b"\0" + path[1:].encode() if path.startswith("@") else path


def notify(state: str, *, env: Mapping[str, str] | None = None) -> bool:
    """Send ``state`` (e.g. ``"READY=1"``, several lines allowed) to systemd; ``True`` if sent."""
    path = (os.environ if env is None else env).get("NOTIFY_SOCKET", "")
    if not path or path[0] not in "/@":
        return False  # not under systemd, or a vsock address this helper does not speak
    try:
        with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC) as sock:
            sock.connect(_address(path))
            sock.sendall(state.encode())
    except OSError as err:
        # systemd went away or the socket is not ours: the agent must go on working.
        log.debug("sd_notify %r to %s failed: %s", state, path, err)
        return False
    return True


def ready(status: str = "") -> bool:
    return notify("READY=1" + (f"\nSTATUS={status}" if status else ""))


def stopping() -> bool:
    return notify("STOPPING=1")


def watchdog_interval_s(env: Mapping[str, str] | None = None) -> float | None:
    """``WatchdogSec`` in seconds when the watchdog is on for this process, else ``None``."""
    e = os.environ if env is None else env
    try:
        usec = int(e.get("WATCHDOG_USEC", ""))
    except ValueError:
        return None
    pid = e.get("WATCHDOG_PID")
    if usec <= 0 or (pid and pid != str(os.getpid())):
        return None
    return usec / 1e6


class Watchdog:
    """Pings systemd's watchdog from the work loop at half the configured interval."""

    def __init__(
        self,
        env: Mapping[str, str] | None = None,
        clock: Callable[[], float] = time.monotonic,
        status_every_s: float = 5.0,
    ) -> None:
        self.env = dict(os.environ if env is None else env)
        self.interval_s = watchdog_interval_s(self.env)
        self.clock = clock
        self.status_every_s = status_every_s
        self._last_kick = float("-inf")
        self._last_status = float("-inf")
        self.pings = 0

    @property
    def enabled(self) -> bool:
        return self.interval_s is not None and bool(self.env.get("NOTIFY_SOCKET"))

    def kick(self) -> bool:
        """Send ``WATCHDOG=1`` if half the interval has passed since the last one."""
        if self.interval_s is None:
            return False
        now = self.clock()
        if now - self._last_kick < self.interval_s / 2:
            return False
        if notify("WATCHDOG=1", env=self.env):
            self._last_kick = now
            self.pings += 1
            return True
        return False

    def status(self, text: str) -> bool:
        """Send ``STATUS=text`` (shown by ``systemctl status``) at most every ``status_every_s``."""
        now = self.clock()
        if now - self._last_status < self.status_every_s:
            return False
        self._last_status = now
        return notify(f"STATUS={text}", env=self.env)
