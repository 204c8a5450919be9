"""The CRM database every ``carpulse`` command opens: ``--db``, else ``[crm]``, else the stack's."""

from __future__ import annotations

import os
from typing import TYPE_CHECKING, Annotated

import typer

from core.config import CarpulseSettings
from core.errors import ConfigError

if TYPE_CHECKING:
    from crm.store import CrmStore

DbOpt = Annotated[
    str | None,
    typer.Option(
        "--db", help="CRM database URL (default \\[crm] url or url_file, else the stack's SQLite)."
    ),
]


def settings_db_url(settings: CarpulseSettings) -> str:
    c = settings.crm
    if not c.url and c.url_file is None and (env := os.environ.get("CARPULSE_CRM_URL")):
        return env
    return c.resolved_url(settings.stack)


def db_url(db: str | None) -> str:
    """``--db``, else ``[crm]`` (``CARPULSE_CRM__URL``, the file's ``url``/``url_file``; the
    older ``CARPULSE_CRM_URL`` still counts when neither is set), else the stack's SQLite."""
    if db:
        return db
    from core.config import cli_settings

    return settings_db_url(cli_settings())


def open_store(db: str | None) -> CrmStore:
    """The CRM store, once its schema is this carpulse's (``carpulse crm migrate`` migrates;
    nothing else does)."""
    from crm.migrate import check_schema
    from crm.store import CrmStore

    store = CrmStore.from_url(db_url(db))
    try:
        check_schema(store.engine)
    except ConfigError:
        store.engine.dispose()
        raise
    return store
