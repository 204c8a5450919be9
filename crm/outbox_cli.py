"""``carpulse crm outbox list|requeue``: the messages the CRM could not deliver, and sending them again.

A message (e-mail, webhook) goes dead after its last retry or at once on a permanent error, such
as no SMTP server configured. After the operator fixes the cause, ``requeue`` puts dead letters
back in the queue. A message is refused when its customer was erased or withdrew the consent
its rule asked for.

Only typer is imported at module level; SQLAlchemy loads inside the commands.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated, Any

import typer

from crm.cli_store import DbOpt, open_store

outbox_app = typer.Typer(
    help="Messages (e-mail, webhook) the CRM could not deliver: list, requeue."
)

STATES = ("dead", "pending", "sent")
CHANNELS = ("email", "webhook")


def _choice(value: str | None, allowed: tuple[str, ...], what: str) -> str | None:
    if value is not None and value not in allowed:
        raise typer.BadParameter(
            f"must be one of {', '.join(allowed)}, not {value!r}", param_hint=what
        )
    return value


def _row(msg: Any) -> dict[str, Any]:
    from crm.delivery import masked_error, masked_target

    return {
        "id": msg.id,
        "state": msg.state,
        "channel": msg.channel,
        "to": masked_target(msg),
        "rule": (msg.payload or {}).get("rule"),
        "attempts": msg.attempts,
        "created_at": msg.created_at.isoformat(timespec="seconds"),
        "last_error": masked_error(msg.last_error),
    }  # no subject: it names the car (plate, VIN)


@outbox_app.command("list")
def list_cmd(
    db: DbOpt = None,
    state: Annotated[str, typer.Option(help="dead, pending or sent.")] = "dead",
    channel: Annotated[str | None, typer.Option(help="email or webhook (default both).")] = None,
    limit: Annotated[int, typer.Option(min=1, max=10_000, help="Newest first, at most.")] = 50,
    as_json: Annotated[bool, typer.Option("--json", help="JSON lines.")] = False,
) -> None:
    """List outbox messages, newest first (dead letters by default), with the last error.

    Addresses are shown masked (first letter and domain; a webhook's host only), in the errors
    too; subjects are not shown (they name the car).
    """
    from crm.delivery import outbox_rows

    _choice(state, STATES, "--state")
    _choice(channel, CHANNELS, "--channel")
    with open_store(db).tx() as s:
        rows = [_row(m) for m in outbox_rows(s, state, channel, limit)]
    if as_json:
        for r in rows:
            typer.echo(json.dumps(r, ensure_ascii=False))
        return
    if not rows:
        typer.echo(f"no {state} messages")
        return
    for r in rows:
        typer.echo(
            f"{r['id']:>7}  {r['created_at']}  {r['channel']:<7} {r['to']:<28} "
            f"{r['rule'] or '-':<24} attempts {r['attempts']}  {r['last_error'][:60]}"
        )


@outbox_app.command("requeue")
def requeue_cmd(
    ids: Annotated[
        list[int] | None, typer.Argument(min=1, max=2**63 - 1, help="Outbox message ids.")
    ] = None,
    db: DbOpt = None,
    all_dead: Annotated[
        bool, typer.Option("--all-dead", help="Every dead letter (of --channel, if given).")
    ] = False,
    channel: Annotated[str | None, typer.Option(help="With --all-dead: email or webhook.")] = None,
    rules: Annotated[
        list[Path] | None,
        typer.Option("--rules", help="The worker's rules, if not the shipped ones."),
    ] = None,
    actor: Annotated[str, typer.Option(help="Who requeues (audited).")] = "cli",
    dry_run: Annotated[
        bool, typer.Option("--dry-run", help="Say what would go, change nothing.")
    ] = False,
) -> None:
    """Send dead letters again: the delivery job picks them up at its next run.

    A message is refused, with the reason, when its customer was erased or withdrew the consent
    its rule asked for. The others are requeued in one transaction. Exit code 1 when any was
    refused.
    """
    from crm.delivery import outbox_rows, requeue, requeue_refusal
    from crm.rules import load_rules, shipped_rules
    from crm.tables import OutboxMessage

    _choice(channel, CHANNELS, "--channel")
    if bool(ids) == all_dead:
        raise typer.BadParameter("give message ids or --all-dead (not both)", param_hint="IDS")
    ruleset = load_rules(rules) if rules else shipped_rules()
    refused: list[str] = []
    done: list[int] = []
    with open_store(db).tx() as s:
        if all_dead:
            msgs = outbox_rows(s, "dead", channel, limit=1_000_000)
        else:
            msgs = []
            for mid in ids or []:
                msg = s.get(OutboxMessage, mid)
                if msg is None:
                    refused.append(f"{mid}: no such outbox message")
                else:
                    msgs.append(msg)
        for msg in msgs:
            if why := requeue_refusal(s, msg, ruleset):
                refused.append(f"{msg.id}: {why}")
            else:
                done.append(msg.id)
        if not dry_run:
            for mid in done:  # each passed requeue_refusal just above
                requeue(s, mid, actor)
    for line in refused:
        typer.echo(f"refused {line}", err=True)
    verb = "would requeue" if dry_run else "requeued"
    typer.echo(f"{verb} {len(done)} message(s); refused {len(refused)}")
    if refused:
        raise typer.Exit(1)
