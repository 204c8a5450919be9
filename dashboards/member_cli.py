"""``carpulse member link``: a member-page sign-in link for one customer, sent through the
configured transport (``[member] transport``) or another (``--via``), or printed (``--print``)."""

from __future__ import annotations

from typing import Annotated

import typer

from core.errors import ConfigError

member_app = typer.Typer(help="The mobile member page: sign-in links.")


@member_app.command("link")
def member_link(
    who: Annotated[str, typer.Argument(help="The customer: a phone number, member card or id.")],
    via: Annotated[
        str | None,
        typer.Option(help="Transport (sms, email, wechat, recording); default [member] transport."),
    ] = None,
    print_link: Annotated[
        bool, typer.Option("--print", help="Print the link instead of sending it.")
    ] = False,
    db: Annotated[str | None, typer.Option("--db", help="CRM database URL.")] = None,
) -> None:
    """Sign-in link to the member page for one customer (valid [member] link_ttl_h hours)."""
    import datetime as dt

    from sqlalchemy import select

    from core.config import cli_settings
    from core.errors import CrmError, DeliveryError
    from crm import member_links as ml
    from crm.cli_store import open_store as _store
    from crm.schema import Customer, CustomerIdentity
    from crm.transports import from_settings
    from dashboards.auth import SessionStore

    s = cli_settings()
    if via is not None:
        s = s.model_copy(update={"member": s.member.model_copy(update={"transport": via})})
    transport = None if print_link else from_settings(s)
    if transport is None and not print_link:
        raise ConfigError("no transport: set [member] transport, pass --via, or use --print")
    base = s.dashboard.public_url or f"http://{s.dashboard.host}:{s.dashboard.port}"
    store = _store(db)
    try:
        key = s.member.resolved_key() or SessionStore(store.engine).secret("member-links")
        with store.tx() as tx:
            cid = tx.scalar(
                select(CustomerIdentity.customer_id).where(
                    CustomerIdentity.kind.in_(("phone", "member_card")),
                    CustomerIdentity.value == who.replace(" ", ""),
                )
            )
            if cid is None and tx.get(Customer, who) is not None:
                cid = who
            if cid is None:
                raise ConfigError(f"no customer with the phone, member card or id {who!r}")
            ttl = dt.timedelta(hours=s.member.link_ttl_h)
            try:
                url = ml.issue_sign_in(tx, key, cid, base, ttl)
                if transport is not None:
                    msg = transport.send_link(tx, cid, url, s.member.link_ttl_h)
            except (CrmError, DeliveryError) as err:
                raise ConfigError(str(err)) from err
    finally:
        store.engine.dispose()
    if transport is None:
        typer.echo(url)
    else:
        typer.echo(f"sent to {msg.address} by {s.member.transport}")
