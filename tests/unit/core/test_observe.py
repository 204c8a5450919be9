"""``core.observe``: the health server answers over real HTTP; ``core.logs``: both formats."""

from __future__ import annotations

import json
import logging
import urllib.error
import urllib.request
from typing import Any

import pytest

from core import logs
from core.errors import ConfigError
from core.observe import ObsServer, readiness, run_checks


def _get(url: str) -> tuple[int, bytes]:
    try:
        with urllib.request.urlopen(url, timeout=5) as r:
            return r.status, r.read()
    except urllib.error.HTTPError as err:
        with err:
            return err.code, err.read()


def test_readyz_is_503_with_the_reason_until_every_check_passes() -> None:
    state = {"kafka": False}

    def kafka() -> tuple[bool, str]:
        return state["kafka"], "producer up" if state["kafka"] else "broker 127.0.0.1:1 refused"

    def broken() -> tuple[bool, str]:
        raise OSError("disk gone")

    obs = ObsServer("127.0.0.1", 0, lambda: (b"x_total 1\n", "text/plain"), {"kafka": kafka})
    obs.start()
    try:
        base = f"http://127.0.0.1:{obs.port}"
        assert _get(base + "/healthz") == (200, b'{"ok": true}')
        status, body = _get(base + "/readyz")
        doc = json.loads(body)
        assert status == 503 and doc["ready"] is False
        assert doc["reason"] == "kafka: broker 127.0.0.1:1 refused"
        state["kafka"] = True
        status, body = _get(base + "/readyz")
        assert status == 200 and json.loads(body)["checks"]["kafka"]["ok"] is True
        assert _get(base + "/metrics") == (200, b"x_total 1\n")
        assert _get(base + "/nope")[0] == 404
        obs.checks["disk"] = broken
        status, body = _get(base + "/readyz")
        assert status == 503 and "disk: OSError: disk gone" in json.loads(body)["reason"]
    finally:
        obs.close()


def test_a_busy_port_is_a_config_error() -> None:
    obs = ObsServer("127.0.0.1", 0, None, {})
    try:
        with pytest.raises(ConfigError, match=f"127.0.0.1:{obs.port}"):
            ObsServer("127.0.0.1", obs.port, None, {})
    finally:
        obs.close()


def test_readiness_joins_the_failed_checks() -> None:
    status, body = readiness(run_checks({"a": lambda: (True, "ok"), "b": lambda: (False, "down")}))
    assert status == 503 and body["reason"] == "b: down" and body["checks"]["a"]["ok"]


def _record(msg: str, exc: bool = False) -> logging.LogRecord:
    exc_info: Any = None
    if exc:
        try:
            raise ValueError("boom\nsecond line")
        except ValueError:
            import sys

            exc_info = sys.exc_info()
    return logging.LogRecord("stream.bridge", logging.ERROR, __file__, 1, msg, ("x",), exc_info)


def test_json_lines_carry_every_key_and_the_traceback_on_one_line() -> None:
    logs.setup_logging("json", component="bridge")
    try:
        line = logs.JsonFormatter().format(_record("lost %s\nnext", exc=True))
        assert "\n" not in line
        doc = json.loads(line)
        assert doc["level"] == "ERROR" and doc["logger"] == "stream.bridge"
        assert doc["message"] == "lost x\nnext" and doc["component"] == "bridge"
        assert doc["ts"].endswith("Z") and "ValueError: boom" in doc["exception"]
        assert logs.current_format() == "json"
    finally:
        logs.setup_logging("text", component="carpulse")


def test_text_lines_name_the_component() -> None:
    logs.setup_logging("text", component="crm")
    try:
        line = logs.TextFormatter().format(_record("hello %s"))
        assert " ERROR crm stream.bridge: hello x" in line
        assert logs.current_format() == "text"
    finally:
        logs.setup_logging("text", component="carpulse")


def test_an_unknown_format_is_refused() -> None:
    with pytest.raises(ValueError, match="text"):
        logs.formatter("xml")  # type: ignore[arg-type]


def test_the_flag_beats_the_setting_and_a_bad_flag_is_refused() -> None:
    from typer.testing import CliRunner

    from carpulse.cli import app

    try:
        logs.start_cli_logging(None, logging.INFO)
        logs.service_logging("edge", "json")  # [log] format = "json", no flag
        assert logs.current_format() == "json" and logs.component() == "edge"
        logs.start_cli_logging("text", logging.INFO)
        logs.service_logging("edge", "json")  # --log-format text wins
        assert logs.current_format() == "text"
    finally:
        logs.start_cli_logging(None, logging.INFO)
        logs.setup_logging("text", component="carpulse")
    res = CliRunner().invoke(app, ["--log-format", "xml", "config", "show"])
    assert res.exit_code == 2 and "--log-format" in res.output
