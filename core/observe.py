"""``/metrics``, ``/healthz`` and ``/readyz`` for the services without a web server of their own.

The ingest bridge, the CRM worker and the edge agent start an ``ObsServer`` (a small threaded
standard-library HTTP server, so a Raspberry Pi needs nothing more); the stream worker and the
dashboard serve the same three paths from their own web servers with ``readiness``.

* ``/healthz``: liveness, 200 as long as the process answers.
* ``/readyz``: every named check is run; 200 ``{"ready": true, ...}`` when all pass, else 503
  with ``{"ready": false, "reason": "kafka: ...; mqtt: ...", "checks": {...}}``.
* ``/metrics``: the text the ``metrics`` callable renders (Prometheus exposition format).

Checks are plain callables returning ``(ok, detail)``; one that raises counts as failed, with
the exception as its detail. Nothing here imports prometheus_client: the packages render
their own registries (``stream.metrics``, ``edge.metrics``...).
"""

from __future__ import annotations

import json
import logging
import threading
from collections.abc import Callable, Mapping
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

from core.errors import ConfigError

log = logging.getLogger(__name__)

Check = Callable[[], tuple[bool, str]]
Render = Callable[[], tuple[bytes, str]]  # -> (body, content type)


def readiness(results: Mapping[str, tuple[bool, str]]) -> tuple[int, dict[str, Any]]:
    """HTTP status and JSON body of ``/readyz`` from each check's ``(ok, detail)``."""
    checks = {name: {"ok": ok, "detail": detail} for name, (ok, detail) in results.items()}
    failed = [f"{name}: {detail}" for name, (ok, detail) in results.items() if not ok]
    body: dict[str, Any] = {"ready": not failed, "checks": checks}
    if failed:
        body["reason"] = "; ".join(failed)
    return (200 if not failed else 503), body


def run_checks(checks: Mapping[str, Check]) -> dict[str, tuple[bool, str]]:
    """Run every check; one that raises has failed, with the exception as its detail."""
    out: dict[str, tuple[bool, str]] = {}
    for name, check in checks.items():
        try:
            ok, detail = check()
        except Exception as err:  # a check must never take the endpoint down
            ok, detail = False, f"{type(err).__name__}: {err}"[:300]
        out[name] = (bool(ok), str(detail)[:300])
    return out


class ObsServer:
    """Serves the three paths on ``host:port`` from a daemon thread (port 0 = any free port)."""

    def __init__(
        self, host: str, port: int, metrics: Render | None, checks: Mapping[str, Check]
    ) -> None:
        self.metrics, self.checks = metrics, dict(checks)
        obs = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                path = self.path.split("?", 1)[0]
                if path == "/metrics" and obs.metrics is not None:
                    try:
                        body, ctype = obs.metrics()
                        status = 200
                    except Exception as err:  # never a dead scrape without a reason
                        log.exception("rendering /metrics failed")
                        body, ctype, status = str(err).encode(), "text/plain", 500
                elif path == "/healthz":
                    status, ctype, body = 200, "application/json", b'{"ok": true}'
                elif path == "/readyz":
                    status, doc = readiness(run_checks(obs.checks))
                    ctype, body = "application/json", json.dumps(doc).encode()
                else:
                    status, ctype, body = 404, "text/plain", b"not found"
                self.send_response(status)
                self.send_header("Content-Type", ctype)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, format: str, *args: Any) -> None:
                pass  # a scrape every 15 s is not worth a log line

        try:
            self.httpd = ThreadingHTTPServer((host, port), Handler)
        except OSError as err:
            raise ConfigError(
                f"metrics/health server cannot listen on {host}:{port}: {err}"
            ) from err
        self.httpd.daemon_threads = True
        self.host = host
        self.port = int(self.httpd.server_address[1])
        self._thread = threading.Thread(
            target=self.httpd.serve_forever, name="carpulse-obs", daemon=True
        )

    def start(self) -> ObsServer:
        self._thread.start()
        log.info(
            "metrics and health on http://%s:%d (/metrics /healthz /readyz)", self.host, self.port
        )
        return self

    def close(self) -> None:
        if self._thread.is_alive():  # shutdown() waits for a serve_forever that never ran
            self.httpd.shutdown()
        self.httpd.server_close()
