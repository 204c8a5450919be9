"""Shared fixtures: real data paths (skip locally when missing, fail under CI) and the local stack."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import pytest

from core.datasets import shared_data_dir

IN_CI = os.environ.get("CI", "").lower() in ("1", "true", "yes")


def worker_port_range(worker: str, workers: int, lo: int, hi: int) -> tuple[int, int]:
    """pytest-xdist worker ``gwI`` of ``workers``: its own slice of ``[lo, hi)``."""
    i = int(worker.removeprefix("gw"))
    size = (hi - lo) // max(workers, 1)
    return lo + i * size, lo + (i + 1) * size


def pytest_configure(config: pytest.Config) -> None:
    """Each pytest-xdist worker, and every service or command it starts, picks free ports from a
    range of its own: ``make test`` runs the service tests on two workers side by side."""
    worker = os.environ.get("PYTEST_XDIST_WORKER", "")
    if not worker.startswith("gw") or not worker[2:].isdigit():
        return  # not a pytest-xdist worker: the whole range
    from carpulse.stack import FREE_PORTS_ENV, free_port_range

    if not os.environ.get(FREE_PORTS_ENV):
        workers = int(os.environ.get("PYTEST_XDIST_WORKER_COUNT", "1"))
        a, b = worker_port_range(worker, workers, *free_port_range())
        os.environ[FREE_PORTS_ENV] = f"{a}-{b}"


def require_data(relative: str) -> Path:
    """Path to shared data; skip with a reason when missing, but fail under CI=true."""
    path = shared_data_dir() / relative
    if not path.exists():
        msg = f"shared data {path} is missing (see ../shared/DATA.md)"
        if IN_CI:
            pytest.fail(msg + " and CI=true forbids skipping")
        pytest.skip(msg)
    return path


@pytest.fixture(scope="session")
def local_stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[object]:
    """A real Mosquitto + Apache Kafka (KRaft, SASL_SSL) + InfluxDB 1.x on free loopback ports."""
    from carpulse.stack import throwaway_stack
    from core.config import load_settings

    with throwaway_stack(tmp_path_factory.mktemp("stack")) as stack:
        stack.settings = load_settings(stack.config_file)  # type: ignore[attr-defined]
        yield stack


def _pg_bin(name: str) -> str | None:
    import glob
    import shutil

    found = shutil.which(name)
    if found:
        return found
    candidates = sorted(glob.glob(f"/usr/lib/postgresql/*/bin/{name}"))
    return candidates[-1] if candidates else None


@pytest.fixture(scope="session")
def postgres_url() -> Iterator[str]:
    """A real PostgreSQL server (Debian ``postgresql``) in a temporary directory on a free port."""
    import pwd
    import shutil
    import subprocess
    import tempfile

    from carpulse.stack import free_port

    initdb, pg_ctl = _pg_bin("initdb"), _pg_bin("pg_ctl")
    if not (initdb and pg_ctl):
        msg = "PostgreSQL server binaries not found (apt-get install postgresql)"
        if IN_CI:
            pytest.fail(msg)
        pytest.skip(msg)
    root = Path(tempfile.mkdtemp(prefix="carpulse-pg-"))
    prefix: list[str] = []
    if os.geteuid() == 0:  # PostgreSQL refuses to run as root
        pw = pwd.getpwnam("postgres")
        os.chown(root, pw.pw_uid, pw.pw_gid)
        prefix = ["runuser", "-u", "postgres", "--"]
    data, port = root / "data", free_port()
    subprocess.run(
        [*prefix, initdb, "-D", str(data), "-A", "trust", "-U", "carpulse", "--no-sync"],
        check=True,
        capture_output=True,
    )
    opts = f"-c listen_addresses=127.0.0.1 -p {port} -k {root} -c fsync=off -c max_connections=50"
    subprocess.run(
        [*prefix, pg_ctl, "-D", str(data), "-o", opts, "-l", str(root / "pg.log"), "-w", "start"],
        check=True,
        capture_output=True,
    )
    try:
        yield f"postgresql://carpulse@127.0.0.1:{port}/postgres"
    finally:
        subprocess.run(
            [*prefix, pg_ctl, "-D", str(data), "-m", "immediate", "stop"], capture_output=True
        )
        shutil.rmtree(root, ignore_errors=True)


def new_postgres_database(postgres_url: str, template: str | None = None) -> str:
    """The URL of a new, empty database on the ``postgres_url`` server (a copy of ``template``)."""
    import uuid

    from sqlalchemy import text

    from crm.store import make_engine

    name = "t_" + uuid.uuid4().hex[:10]
    admin = make_engine(postgres_url, isolation_level="AUTOCOMMIT")
    try:
        with admin.connect() as conn:
            conn.execute(
                text(f"CREATE DATABASE {name}" + (f" TEMPLATE {template}" if template else ""))
            )
    finally:
        admin.dispose()
    return postgres_url.rsplit("/", 1)[0] + "/" + name


@pytest.fixture(scope="session")
def postgres_migrated(postgres_url: str) -> str:
    """A database on ``postgres_url`` migrated to the CRM's head once per session, as a template.

    A test's own database copied from it (``new_postgres_database(url, postgres_migrated)``) skips
    the Alembic run that each test would repeat (0.72 -> 0.23 s a database, median of 6). Tests of
    the migrations themselves start from an empty database.
    """
    from crm.migrate import upgrade
    from crm.store import make_engine

    url = new_postgres_database(postgres_url)
    engine = make_engine(url)
    try:
        upgrade(engine)
    finally:
        engine.dispose()  # a template must have no open connection
    return url.rsplit("/", 1)[1]
