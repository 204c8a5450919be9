"""carpulse.stack's helpers for throwaway stacks: waiting for a condition, the pipeline's env."""

from __future__ import annotations

import itertools
from pathlib import Path

import pytest

from carpulse.stack import pipeline_env, wait_until
from core.errors import StackError


def test_wait_until_returns_the_first_true_answer() -> None:
    answers = iter([0, None, "", [3]])
    assert wait_until(lambda: next(answers), 5, "a list", interval=0.001) == [3]


def test_wait_until_says_what_it_waited_for_and_the_last_answer() -> None:
    with pytest.raises(StackError, match=r"waiting for the broker \(last: 0\)"):
        wait_until(lambda: 0, 0.05, "the broker", interval=0.01)
    with pytest.raises(AssertionError, match="the worker"):
        wait_until(lambda: False, 0.05, "the worker", interval=0.01, error=AssertionError)


def test_wait_until_counts_only_the_errors_it_is_told_to_ignore() -> None:
    calls = itertools.count()

    def starting() -> int:
        if next(calls) < 3:
            raise ConnectionRefusedError("not yet")
        return 7

    assert wait_until(starting, 5, "a service", interval=0.001, ignore=(OSError,)) == 7
    with pytest.raises(ZeroDivisionError):
        wait_until(lambda: 1 // 0, 5, "never", interval=0.001, ignore=(OSError,))


def test_pipeline_env_gives_each_run_its_own_app_ids_and_port(tmp_path: Path) -> None:
    cfg = tmp_path / "carpulse.toml"
    a = pipeline_env(cfg, "test", CARPULSE_X="1")
    b = pipeline_env(cfg, "test")
    assert a["CARPULSE_CONFIG"] == str(cfg) and a["CARPULSE_X"] == "1"
    assert a["CARPULSE_STREAM__APP_ID"].startswith("carpulse-stream-test-")
    assert a["CARPULSE_STREAM__CRM_APP_ID"].startswith("carpulse-crm-test-")
    assert a["CARPULSE_STREAM__APP_ID"] != b["CARPULSE_STREAM__APP_ID"]
    assert 0 < int(a["CARPULSE_STREAM__WEB_PORT"]) < 65536
    assert pipeline_env(cfg, "t", CARPULSE_STREAM__WEB_PORT="9")["CARPULSE_STREAM__WEB_PORT"] == "9"


def test_free_ports_are_below_the_ephemeral_range_never_twice_and_bindable() -> None:
    """A port from the kernel's ephemeral range can be taken by an outgoing connection before
    the server binds it (a full run: InfluxDB "bind: address already in use")."""
    import socket

    from carpulse.stack import _ephemeral_ports, free_port, free_port_block

    lo, _hi = _ephemeral_ports()
    ports = [free_port() for _ in range(200)]
    assert len(set(ports)) == len(ports)
    assert all(20_000 <= p < lo for p in ports)
    base = free_port_block(9)
    assert base + 9 <= lo and not set(range(base, base + 9)) & set(ports)
    for p in (*ports[:5], *range(base, base + 9)):
        with socket.socket() as s:
            s.bind(("127.0.0.1", p))  # free: raises if not


def test_free_ports_stay_in_the_range_the_environment_gives(monkeypatch) -> None:
    """``make test`` runs the service tests on two pytest-xdist workers: each picks ports from
    its own range (``$CARPULSE_FREE_PORTS``), and so do the services and commands it starts."""
    from carpulse.stack import FREE_PORTS_ENV, free_port, free_port_block, free_port_range

    monkeypatch.setenv(FREE_PORTS_ENV, "41000-41060")
    assert free_port_range() == (41_000, 41_060)
    ports = [free_port() for _ in range(20)]
    assert len(set(ports)) == 20 and all(41_000 <= p < 41_060 for p in ports)
    base = free_port_block(5)
    assert base >= 41_000 and base + 5 <= 41_060 and not set(range(base, base + 5)) & set(ports)
    monkeypatch.setenv(FREE_PORTS_ENV, "41100-41103")  # never a port outside it
    with pytest.raises(StackError, match="no 5 consecutive free ports in CARPULSE_FREE_PORTS"):
        free_port_block(5)
    monkeypatch.setenv(FREE_PORTS_ENV, "  ")  # blank: unset, the whole range (and no error)
    assert free_port_range()[0] == 20_000 and free_port() >= 20_000
    for bad in ("41000", "a-b", "41060-41000", "80-9000", "20000-70000", "9" * 5000 + "-1"):
        monkeypatch.setenv(FREE_PORTS_ENV, bad)
        with pytest.raises(StackError, match="CARPULSE_FREE_PORTS") as err:
            free_port_range()
        assert len(str(err.value)) < 120


def test_pytest_workers_get_disjoint_port_ranges() -> None:
    import os

    from carpulse.stack import FREE_PORTS_ENV
    from tests.conftest import worker_port_range

    a = worker_port_range("gw0", 2, 20_000, 32_768)
    b = worker_port_range("gw1", 2, 20_000, 32_768)
    assert a == (20_000, 26_384) and b == (26_384, 32_768)
    assert worker_port_range("gw2", 3, 20_000, 32_768)[1] <= 32_768
    worker = os.environ.get("PYTEST_XDIST_WORKER")
    if worker:  # under make test's workers: this process has its slice
        lo, hi = map(int, os.environ[FREE_PORTS_ENV].split("-"))
        assert hi - lo >= 1_000
