"""``carpulse users add|disable|set-role|list``: dashboard users in the CRM database, passwords
never on the command line."""

from __future__ import annotations

import json
from pathlib import Path

from typer.testing import CliRunner

from carpulse.cli import app
from crm.store import CrmStore
from dashboards import auth


def test_users_lifecycle(tmp_path: Path) -> None:
    db = f"sqlite:///{tmp_path / 'crm.sqlite'}"
    run = CliRunner().invoke
    assert run(app, ["crm", "migrate", "--db", db]).exit_code == 0
    res = run(app, ["users", "add", "li.advisor", "--role", "service_advisor",
                    "--dealer", "dealer-a", "--password-stdin", "--db", db],
              input="correct horse battery\n")  # fmt: skip
    assert res.exit_code == 0, res.output
    store = CrmStore.from_url(db)
    with store.tx() as s:
        user = auth.authenticate(s, "li.advisor", "correct horse battery")
        assert user is not None and (user.role, user.dealer_id) == ("service_advisor", "dealer-a")
    assert run(app, ["users", "set-role", "li.advisor", "dealer_admin", "--db", db]).exit_code == 0
    assert run(app, ["users", "disable", "li.advisor", "--db", db]).exit_code == 0
    with store.tx() as s:
        assert auth.authenticate(s, "li.advisor", "correct horse battery") is None
    listed = run(app, ["users", "list", "--db", db])
    assert json.loads(listed.output) == {"username": "li.advisor", "role": "dealer_admin",
                                         "dealer": "dealer-a", "active": False}  # fmt: skip
    assert "correct horse" not in listed.output and "argon2" not in listed.output
    # add again: password, role and dealer reset, enabled again
    pw = tmp_path / "pw"
    pw.write_text("another good one\n")
    res = run(app, ["users", "add", "li.advisor", "--role", "auditor", "--dealer", "dealer-b",
                    "--password-file", str(pw), "--db", db])  # fmt: skip
    assert res.exit_code == 0, res.output
    with store.tx() as s:
        user = auth.authenticate(s, "li.advisor", "another good one")
        assert user is not None and user.active and user.role == "auditor"
    store.engine.dispose()


def test_users_mistakes_are_one_clear_message(tmp_path: Path) -> None:
    db = f"sqlite:///{tmp_path / 'crm.sqlite'}"
    run = CliRunner().invoke
    assert run(app, ["crm", "migrate", "--db", db]).exit_code == 0
    cases = [
        (["users", "add", "x", "--role", "boss", "--dealer", "d", "--password-stdin"],
         "--role 'boss': expected one of"),
        (["users", "add", "x", "--role", "auditor", "--dealer", "d", "--password-stdin"],
         "at least 8 characters"),
        (["users", "disable", "nobody"], "no dashboard user 'nobody'"),
        (["users", "set-role", "nobody", "auditor"], "no dashboard user 'nobody'"),
        (["users", "add", "=bad", "--role", "auditor", "--dealer", "d"], "user name '=bad'"),
    ]  # fmt: skip
    for args, why in cases:
        res = run(app, [*args, "--db", db], input="short\n")
        assert res.exit_code != 0 and why in str(res.exception), (args, res.exception)
