"""``carpulse users add|disable|set-role|list``: the dashboard's users, in the CRM database.

Passwords never come from a flag (it would show in ``ps`` and shell history): from a prompt,
from ``--password-file`` or from one line on stdin (``--password-stdin``).
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer

from core.errors import ConfigError

if TYPE_CHECKING:
    from sqlalchemy.orm import Session

    from dashboards.auth import DashboardUser

users_app = typer.Typer(help="Dashboard users: call-centre agents, service advisors, admins.")

DbOpt = Annotated[
    str | None,
    typer.Option(
        "--db", help="CRM database URL (default \\[crm] url or url_file, else the stack's SQLite)."
    ),
]
ROLE_HELP = "call_centre_agent, service_advisor, dealer_admin, auditor or platform_admin."


def _user(s: Session, username: str) -> DashboardUser:
    from dashboards.auth import DashboardUser

    user = s.get(DashboardUser, username)
    if user is None:
        raise ConfigError(f"no dashboard user {username!r} (see `carpulse users list`)")
    return user


def _password(password_file: Path | None, password_stdin: bool) -> str:
    if password_file is not None:
        try:
            return password_file.read_text(encoding="utf-8").strip()
        except (OSError, UnicodeDecodeError) as err:
            raise ConfigError(f"--password-file {password_file}: {err}") from err
    if password_stdin:
        return sys.stdin.readline().rstrip("\r\n")
    if not sys.stdin.isatty():
        raise ConfigError(
            "no terminal to ask for the password: use --password-file or --password-stdin"
        )
    return str(typer.prompt("Password", hide_input=True, confirmation_prompt=True))


def _run(db: str | None, fn: object) -> None:
    from crm.cli_store import open_store as _store

    store = _store(db)  # refuses a CRM not migrated (the users table is migration 0004's)
    try:
        with store.tx() as s:
            fn(s)  # type: ignore[operator]
    finally:
        store.engine.dispose()


@users_app.command("add")
def users_add(
    username: Annotated[str, typer.Argument(help="Login name.")],
    role: Annotated[str, typer.Option(help=ROLE_HELP)],
    dealer: Annotated[str, typer.Option(help="Dealer whose vehicles and customers they see.")],
    password_file: Annotated[
        Path | None, typer.Option(help="Read the password from this file.")
    ] = None,
    password_stdin: Annotated[
        bool, typer.Option("--password-stdin", help="Read the password from stdin.")
    ] = False,
    db: DbOpt = None,
) -> None:
    """Create a user, or reset an existing one's password, role and dealer (and enable it)."""
    import re

    from crm.store import audit
    from dashboards.auth import ROLES, add_user

    if not re.match(r"^[A-Za-z0-9][A-Za-z0-9_.@-]{0,63}$", username):
        raise ConfigError(f"user name {username!r}: 1..64 letters, digits, '_', '.', '@' or '-'")
    if role not in ROLES:
        raise ConfigError(f"--role {role!r}: expected one of {', '.join(ROLES)}")
    password = _password(password_file, password_stdin)

    def go(s: Session) -> None:
        try:
            add_user(s, username, password, role, dealer)
        except ValueError as err:
            raise ConfigError(str(err)) from None
        audit(s, "cli", "user.add", username, dealer_id=dealer, role=role)

    _run(db, go)
    typer.echo(f"user {username}: {role} at {dealer}, enabled")


@users_app.command("disable")
def users_disable(
    username: Annotated[str, typer.Argument(help="Login name.")], db: DbOpt = None
) -> None:
    """Disable a user: their open sessions end at their next request."""
    from crm.store import audit

    def go(s: Session) -> None:
        user = _user(s, username)
        user.active = False
        audit(s, "cli", "user.disable", username, dealer_id=user.dealer_id)

    _run(db, go)
    typer.echo(f"user {username}: disabled")


@users_app.command("set-role")
def users_set_role(
    username: Annotated[str, typer.Argument(help="Login name.")],
    role: Annotated[str, typer.Argument(help=ROLE_HELP)],
    db: DbOpt = None,
) -> None:
    """Change a user's role; it applies at their next request."""
    from crm.store import audit
    from dashboards.auth import ROLES

    if role not in ROLES:
        raise ConfigError(f"role {role!r}: expected one of {', '.join(ROLES)}")

    def go(s: Session) -> None:
        user = _user(s, username)
        old, user.role = user.role, role
        audit(s, "cli", "user.set_role", username, dealer_id=user.dealer_id, old=old, new=role)

    _run(db, go)
    typer.echo(f"user {username}: {role}")


@users_app.command("list")
def users_list(db: DbOpt = None) -> None:
    """The users, one JSON object a line (no password hashes)."""
    from sqlalchemy import select

    from dashboards.auth import DashboardUser

    def go(s: Session) -> None:
        for u in s.scalars(select(DashboardUser).order_by(DashboardUser.username)):
            typer.echo(json.dumps({"username": u.username, "role": u.role,
                                   "dealer": u.dealer_id, "active": u.active}))  # fmt: skip

    _run(db, go)
