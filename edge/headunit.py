"""Hand ``navigate`` to the head unit over a Unix socket: one JSON line out, one JSON line back.

The protocol (documented in the README, "Remote actions")::

    agent -> head unit   {"v": 1, "type": "navigate", "id": "<command id>",
                          "address": "...", "lat": 48.1, "lon": 11.5, "label": "..."}\\n
    head unit -> agent   {"ok": true, "status": "route_started"}\\n      # or "shown", ...
                         {"ok": false, "error": "no map data for the destination"}\\n

Only the destination fields the command carried are sent. A line is at most 4 KiB both ways; the
head unit answers within ``timeout_s``. ``HeadUnitSimulator`` is a head unit for tests and demos: it
records what it gets and answers ``route_started``.
"""

from __future__ import annotations

import json
import logging
import os
import socket
import threading
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict, Field

from core.errors import HeadUnitError

log = logging.getLogger(__name__)

MAX_LINE = 4096
DESTINATION_KEYS = ("address", "lat", "lon", "label")


class HeadUnitConfig(BaseModel):
    """``[edge.head_unit]``: where ``navigate`` goes."""

    model_config = ConfigDict(extra="forbid")

    socket: Path = Field(description="The head unit's Unix socket (stream, JSON lines).")
    timeout_s: float = Field(5.0, gt=0, le=60, description="Wait this long for its answer.")


def _read_line(sock: socket.socket) -> bytes:
    buf = b""
    while b"\n" not in buf:
        chunk = sock.recv(MAX_LINE)
        if not chunk:
            break
        buf += chunk
        if len(buf) > MAX_LINE:
            raise HeadUnitError(f"answer longer than {MAX_LINE} bytes")
    return buf.split(b"\n", 1)[0]


class HeadUnitClient:
    """Sends one destination per connection and returns the head unit's answer."""

    def __init__(self, config: HeadUnitConfig) -> None:
        self.config = config

    def navigate(self, command_id: str, args: dict[str, Any]) -> dict[str, Any]:
        msg = {"v": 1, "type": "navigate", "id": command_id}
        msg.update({k: args[k] for k in DESTINATION_KEYS if k in args})
        line = json.dumps(msg, separators=(",", ":")).encode() + b"\n"
        try:
            with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
                sock.settimeout(self.config.timeout_s)
                sock.connect(str(self.config.socket))
                sock.sendall(line)
                raw = _read_line(sock)
        except (OSError, TimeoutError) as err:
            raise HeadUnitError(f"head unit at {self.config.socket}: {err}") from err
        try:
            answer = json.loads(raw)
        except (ValueError, UnicodeDecodeError) as err:
            raise HeadUnitError(f"head unit answered no JSON: {raw[:80]!r}") from err
        if not isinstance(answer, dict):
            raise HeadUnitError("head unit answer is not a JSON object")
        if answer.get("ok") is not True:
            raise HeadUnitError(f"head unit refused: {str(answer.get('error', '?'))[:200]}")
        status = answer.get("status", "shown")
        return {"status": str(status)[:64]}


class HeadUnitSimulator:
    """A head unit on a Unix socket: records destinations, answers ``route_started``.

    ``reply`` replaces the answer (tests of a refusing or garbled head unit).
    """

    def __init__(self, path: Path | str, reply: bytes | None = None) -> None:
        self.path = Path(path)
        self.reply = reply
        self.received: list[dict[str, Any]] = []
        self._sock: socket.socket | None = None
        self._thread: threading.Thread | None = None
        self._stop = threading.Event()

    def start(self) -> HeadUnitSimulator:
        self.path.unlink(missing_ok=True)
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        sock.bind(str(self.path))
        os.chmod(self.path, 0o660)
        sock.listen(4)
        sock.settimeout(0.2)
        self._sock = sock
        self._thread = threading.Thread(target=self._serve, name="head-unit-sim", daemon=True)
        self._thread.start()
        return self

    def _serve(self) -> None:
        assert self._sock is not None
        while not self._stop.is_set():
            try:
                conn, _ = self._sock.accept()
            except TimeoutError:
                continue
            except OSError:
                break
            with conn:
                conn.settimeout(2)
                try:
                    doc = json.loads(_read_line(conn))
                except (OSError, ValueError, HeadUnitError):
                    conn.sendall(b'{"ok":false,"error":"bad request"}\n')
                    continue
                if self.reply is not None:
                    conn.sendall(self.reply)
                    continue
                ok = isinstance(doc, dict) and doc.get("type") == "navigate"
                if ok:
                    self.received.append(doc)
                    log.info("head unit: route to %s", {k: doc.get(k) for k in DESTINATION_KEYS})
                conn.sendall(
                    b'{"ok":true,"status":"route_started"}\n'
                    if ok
                    else b'{"ok":false,"error":"unknown request"}\n'
                )

    def close(self) -> None:
        self._stop.set()
        if self._sock is not None:
            self._sock.close()
        if self._thread is not None:
            self._thread.join(2)
        self.path.unlink(missing_ok=True)

    def __enter__(self) -> HeadUnitSimulator:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.close()
