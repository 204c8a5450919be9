"""One log format for every component: plain text, or one JSON object per line (``--log-format json``).

Every ``carpulse`` command logs through the root logger with the same formatter, also the Faust
workers (``faust_logging_config``) and the dashboard's uvicorn (which is told not to configure
logging itself). A line carries the component (``bridge``, ``stream``, ``crm``, ``dashboard``,
``edge``) set by the service command with ``setup_logging(component=...)``.

JSON lines have the keys ``ts`` (UTC, ISO 8601, milliseconds), ``level``, ``logger``,
``message``, ``component`` and, when the record carries one, ``exception`` (the formatted
traceback text).
"""

from __future__ import annotations

import json
import logging
import sys
import time
from typing import Any, Final, Literal

LogFormat = Literal["text", "json"]
FORMATS: Final = ("text", "json")
TEXT_FORMAT: Final = "%(asctime)s %(levelname)s %(component)s %(name)s: %(message)s"

_component = "carpulse"


def component() -> str:
    """The component named by the running service command ("carpulse" before one did)."""
    return _component


class TextFormatter(logging.Formatter):
    """``2026-12-04 19:21:49,123 INFO bridge stream.bridge: message`` (traceback on the lines after)."""

    def __init__(self) -> None:
        super().__init__(TEXT_FORMAT)

    def format(self, record: logging.LogRecord) -> str:
        record.component = _component
        return super().format(record)


class JsonFormatter(logging.Formatter):
    """One JSON object per line; newlines inside a message or traceback stay escaped."""

    def format(self, record: logging.LogRecord) -> str:
        ts = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created))
        doc: dict[str, Any] = {
            "ts": f"{ts}.{int(record.msecs):03d}Z",
            "level": record.levelname,
            "logger": record.name,
            "message": record.getMessage(),
            "component": _component,
        }
        if record.exc_info:
            doc["exception"] = self.formatException(record.exc_info)
        elif record.exc_text:
            doc["exception"] = record.exc_text
        if record.stack_info:
            doc["stack"] = self.formatStack(record.stack_info)
        return json.dumps(doc, ensure_ascii=False, default=str)


def formatter(fmt: LogFormat) -> logging.Formatter:
    """The formatter of ``fmt`` ("text" or "json")."""
    if fmt not in FORMATS:
        raise ValueError(f"log format must be one of {FORMATS}, not {fmt!r}")
    return JsonFormatter() if fmt == "json" else TextFormatter()


def setup_logging(
    fmt: LogFormat = "text", level: int = logging.INFO, component: str | None = None
) -> None:
    """Send every log record to stderr in ``fmt``, replacing handlers configured before."""
    global _component
    if component is not None:
        _component = component
    handler = _StderrHandler()
    handler.setFormatter(formatter(fmt))
    root = logging.getLogger()
    for old in list(root.handlers):  # ours from an earlier call; others (pytest's) stay
        if isinstance(old, _StderrHandler):
            root.removeHandler(old)
    root.addHandler(handler)
    root.setLevel(level)
    logging.captureWarnings(True)  # a library's warning is a log line too (JSON stays JSON)


class _StderrHandler(logging.StreamHandler):  # type: ignore[type-arg]
    """Writes to whatever ``sys.stderr`` is at the time (a test runner may swap it)."""

    def __init__(self) -> None:
        super().__init__(sys.stderr)

    @property  # type: ignore[override]
    def stream(self) -> Any:
        return sys.stderr

    @stream.setter
    def stream(self, value: Any) -> None:
        pass


# the running ``carpulse`` command's ``--log-format`` and level (set by its root command)
_cli: dict[str, Any] = {"format": None, "level": logging.INFO}


def start_cli_logging(fmt: LogFormat | None, level: int) -> None:
    """The root command: remember ``--log-format`` (None: not given) and log in it meanwhile."""
    _cli.update(format=fmt, level=level)
    setup_logging(fmt or "text", level)


def service_logging(component: str, configured: LogFormat) -> None:
    """A service command: log as ``component`` in ``--log-format``, else ``configured``
    (the ``[log] format`` setting)."""
    setup_logging(_cli["format"] or configured, _cli["level"], component=component)


def current_format() -> LogFormat:
    """The format the root logger writes in now ("text" unless ``setup_logging`` chose json)."""
    for h in logging.getLogger().handlers:
        if isinstance(h.formatter, JsonFormatter):
            return "json"
    return "text"


def faust_logging_config(fmt: LogFormat, level: str | int) -> dict[str, Any]:
    """A ``logging.config.dictConfig`` for ``faust.Worker(logging_config=...)``: Faust (mode)
    replaces the root handlers when its worker starts; this keeps our format and stderr."""
    name = JsonFormatter if fmt == "json" else TextFormatter
    lvl = logging.getLevelName(level.upper()) if isinstance(level, str) else level
    return {
        "version": 1,
        "disable_existing_loggers": False,
        "formatters": {"carpulse": {"()": f"{name.__module__}.{name.__qualname__}"}},
        "handlers": {
            "default": {
                "class": "logging.StreamHandler",
                "formatter": "carpulse",
                "stream": "ext://sys.stderr",
            }
        },
        "root": {"level": lvl, "handlers": ["default"]},
    }
