"""Schema migrations with Alembic, run explicitly and under a lock.

* ``migrate(engine)`` is what ``carpulse crm migrate`` (and ``stack up``, ``demo``) runs: it
  takes a lock first, so that two runs at once are safe (PostgreSQL: a transaction-level advisory
  lock, the migration in the same transaction; SQLite: ``flock`` on a lock file beside the
  database), then brings the schema to the latest revision; a no-op when it is there.
* ``check_schema(engine)`` is what every other command runs at start: it refuses, with
  ``SchemaError``, a database whose revision is not this carpulse's, instead of migrating it.
* ``upgrade``/``downgrade`` are the plain Alembic steps (tests, fixtures).
"""

from __future__ import annotations

import contextlib
import fcntl
import logging
import os
from collections.abc import Iterator
from pathlib import Path

from sqlalchemy import Engine, text

from core.errors import ConfigError, SchemaError

# before alembic is imported: it logs a line per plugin at import and per step at run
logging.getLogger("alembic").setLevel(logging.WARNING)

from alembic import command  # noqa: E402
from alembic.config import Config  # noqa: E402
from alembic.runtime.migration import MigrationContext  # noqa: E402
from alembic.script import ScriptDirectory  # noqa: E402

MIGRATIONS = Path(__file__).parent / "migrations"
# pg_advisory_xact_lock key of the CRM's migrations (any constant; 'crmmigr' in ASCII)
PG_LOCK_KEY = 0x63726D6D696772


def alembic_config() -> Config:
    cfg = Config()
    cfg.set_main_option("script_location", str(MIGRATIONS))
    return cfg


def head_revision() -> str:
    """The latest revision this carpulse ships."""
    head = ScriptDirectory.from_config(alembic_config()).get_current_head()
    assert head is not None, "no migrations"
    return head


def current_revision(engine: Engine) -> str | None:
    """The database's revision (``None``: never migrated)."""
    with engine.connect() as conn:
        return MigrationContext.configure(conn).get_current_revision()


def check_schema(engine: Engine) -> str:
    """Return the revision when it is this carpulse's; raise ``SchemaError`` otherwise."""
    head = head_revision()
    try:
        have = current_revision(engine)
    except Exception as err:  # unreachable server, bad credentials: say so, briefly
        first = str(err).splitlines()[0][:300] if str(err) else type(err).__name__
        raise ConfigError(f"CRM database {_where(engine)}: {first}") from err
    if have == head:
        return head
    known = {s.revision for s in ScriptDirectory.from_config(alembic_config()).walk_revisions()}
    if have is None:
        raise SchemaError(
            f"CRM database {_where(engine)} has no schema yet, this carpulse needs {head}: "
            "run `carpulse crm migrate`"
        )
    if have not in known:
        raise SchemaError(
            f"CRM database {_where(engine)} schema at {have}, newer than this carpulse "
            f"({head}): upgrade carpulse"
        )
    raise SchemaError(
        f"CRM database {_where(engine)} schema at {have}, this carpulse needs {head}: "
        "run `carpulse crm migrate`"
    )


def _where(engine: Engine) -> str:
    url = engine.url
    if url.get_backend_name() == "sqlite":
        return url.database or ":memory:"
    return f"{url.host or ''}:{url.port or ''}/{url.database or ''}"


@contextlib.contextmanager
def _sqlite_lock(engine: Engine) -> Iterator[None]:
    db = engine.url.database
    if not db or db == ":memory:" or db.startswith("file:"):
        yield  # nobody else can see this database
        return
    path = Path(db).with_name(Path(db).name + ".migrate-lock")
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o600)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)  # blocks until another migrate is done
        yield
    finally:
        fcntl.flock(fd, fcntl.LOCK_UN)
        os.close(fd)


def migrate(engine: Engine, revision: str = "head") -> tuple[str | None, str]:
    """Bring the database to ``revision`` under the migration lock; returns (before, after)."""
    cfg = alembic_config()
    if engine.url.get_backend_name() == "postgresql":
        with engine.begin() as conn:
            # transaction-level: released at commit or rollback, even if this process dies
            conn.execute(text("SELECT pg_advisory_xact_lock(:k)"), {"k": PG_LOCK_KEY})
            before = MigrationContext.configure(conn).get_current_revision()
            cfg.attributes["connection"] = conn
            command.upgrade(cfg, revision)
            after = MigrationContext.configure(conn).get_current_revision()
        return before, after or ""
    with _sqlite_lock(engine):
        before = current_revision(engine)
        upgrade(engine, revision)
        return before, current_revision(engine) or ""


def upgrade(engine: Engine, revision: str = "head") -> None:
    """Apply every migration up to ``revision`` (idempotent; no lock: tests and fixtures)."""
    cfg = alembic_config()
    with engine.begin() as conn:
        cfg.attributes["connection"] = conn
        command.upgrade(cfg, revision)


def downgrade(engine: Engine, revision: str) -> None:
    cfg = alembic_config()
    with engine.begin() as conn:
        cfg.attributes["connection"] = conn
        command.downgrade(cfg, revision)
