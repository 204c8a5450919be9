"""Loading a dealer's data: ``carpulse crm import``, ``carpulse crm templates add|list`` and
``carpulse registry export`` (device -> VIN for the stream, from the CRM).

Only typer is imported at module level; SQLAlchemy loads inside the commands.
"""

from __future__ import annotations

import json
import os
import sys
import tempfile
from collections.abc import Sequence
from decimal import Decimal, InvalidOperation
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import typer

from core.errors import ConfigError
from crm.cli_store import DbOpt, open_store

if TYPE_CHECKING:
    from crm.store import CrmStore

templates_app = typer.Typer(help="Coupon templates the rules and the advisors issue from.")
registry_app = typer.Typer(
    help="The device -> VIN registry the stream reads (\\[stream] registry)."
)


def _db_error(err: Exception) -> ConfigError:
    return ConfigError(f"CRM database: {str(err).splitlines()[0][:300]}")


def import_cmd(
    folder: Annotated[Path, typer.Argument(help="Folder with the DMS exports (*.csv).")],
    db: DbOpt = None,
    dealer: Annotated[
        str, typer.Option(help="Dealer id the customers and vehicles belong to.")
    ] = "default",
    region: Annotated[
        str, typer.Option(help="Country of phone numbers written without +country code.")
    ] = "CN",
    as_json: Annotated[bool, typer.Option("--json", help="Print the summary as JSON.")] = False,
    dry_run: Annotated[
        bool, typer.Option("--dry-run", help="Validate and count, then roll everything back.")
    ] = False,
    vin_check_digit: Annotated[
        bool,
        typer.Option(
            help="Verify the check digit (position 9) of North American and Chinese VINs; "
            "turn off only for records known to carry VINs without one."
        ),
    ] = True,
) -> None:
    """Import customers, vehicles, ownerships, consents and service records from DMS CSV exports.

    Files (each optional): customers.csv (customer_ref, name, phone, email, wechat_openid,
    member_card), vehicles.csv (vin, model, year, plate, device_id), ownerships.csv (vin,
    customer_ref, from_date, to_date), consents.csv (customer_ref, purpose, granted, at),
    service_records.csv (vin, date, odometer_km, work, amount). UTF-8 with a header row; extra
    columns are ignored. Importing the same files again changes nothing. Every rejected row is
    printed as file:line: reason (on stderr; in the JSON with --json); the exit code is 1 when
    any row was rejected (the others are imported).
    """
    import phonenumbers
    from sqlalchemy.exc import OperationalError, ProgrammingError

    from crm.onboard import import_folder

    if region.upper() not in phonenumbers.SUPPORTED_REGIONS:
        raise ConfigError(f"--region {region!r}: not a country code phonenumbers knows (CN, HK...)")
    region = region.upper()
    store = open_store(db)
    try:
        report = import_folder(
            store, folder, dealer_id=dealer, region=region, dry_run=dry_run,
            vin_check_digit=vin_check_digit,
        )  # fmt: skip
    except (OperationalError, ProgrammingError) as err:
        raise _db_error(err) from err
    finally:
        store.engine.dispose()
    if as_json:
        typer.echo(json.dumps(report.to_json(), ensure_ascii=False, indent=2))
    else:
        for line in report.rejects:
            typer.echo(line, err=True)
        typer.echo(f"{'file':22} inserted updated unchanged rejected")
        for name, rep in report.files.items():
            if rep.present:
                typer.echo(f"{name:22} {rep.inserted:8} {rep.updated:7} {rep.unchanged:9} "
                           f"{rep.rejected:8}")  # fmt: skip
        if dry_run:
            typer.echo("dry run: nothing was written")
    if report.rejects:
        raise typer.Exit(1)


# ----- coupon templates ----------------------------------------------------------------------
@templates_app.command("add")
def templates_add(
    code: Annotated[str, typer.Argument(help="Template code the rules name (e.g. maintenance).")],
    title_zh: Annotated[str, typer.Option("--title-zh", help="Title shown in Chinese.")],
    title_en: Annotated[str, typer.Option("--title-en", help="Title shown in English.")],
    value: Annotated[str, typer.Option(help="Face value (CNY).")] = "0",
    valid_days: Annotated[int, typer.Option(min=1, max=3650, help="Days a coupon is valid.")] = 30,
    shareable: Annotated[bool, typer.Option(help="Holders may pass it on.")] = True,
    db: DbOpt = None,
) -> None:
    """Create a coupon template, or update the one with this code (idempotent)."""
    import re

    from core.errors import FieldError
    from crm.fields import check_text
    from crm.schema import CouponTemplate
    from crm.store import audit

    if not re.match(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$", code):
        raise ConfigError(f"template code {code!r}: 1..64 letters, digits, '_', '.' or '-'")
    try:
        zh = check_text(title_zh, "--title-zh", 200)
        en = check_text(title_en, "--title-en", 200)
        amount = Decimal(value)
    except FieldError as err:
        raise ConfigError(str(err)) from None
    except InvalidOperation:
        raise ConfigError(f"--value {value!r} is not a number") from None
    if not amount.is_finite() or amount < 0 or amount >= Decimal("1e10"):
        raise ConfigError(f"--value {value!r} must be 0..9999999999.99")
    store = open_store(db)
    try:
        with store.tx() as s:
            t = s.get(CouponTemplate, code)
            new = {"title_zh": zh, "title_en": en, "value": amount.quantize(Decimal("0.01")),
                   "valid_days": valid_days, "shareable": shareable}  # fmt: skip
            if t is None:
                s.add(CouponTemplate(code=code, **new))
                state = "added"
            elif any(getattr(t, k) != v for k, v in new.items()):
                for k, v in new.items():
                    setattr(t, k, v)
                state = "updated"
            else:
                state = "unchanged"
            if state != "unchanged":
                audit(s, "cli", f"coupon_template.{'add' if state == 'added' else 'update'}", code)
    finally:
        store.engine.dispose()
    typer.echo(f"{state} coupon template {code}")


@templates_app.command("list")
def templates_list(
    db: DbOpt = None,
    as_json: Annotated[bool, typer.Option("--json", help="One JSON document.")] = False,
) -> None:
    """The coupon templates in the CRM."""
    from sqlalchemy import select

    from crm.schema import CouponTemplate

    store = open_store(db)
    try:
        with store.tx() as s:
            rows = [
                {"code": t.code, "title_zh": t.title_zh, "title_en": t.title_en,
                 "value": str(t.value), "valid_days": t.valid_days, "shareable": t.shareable}
                for t in s.scalars(select(CouponTemplate).order_by(CouponTemplate.code))
            ]  # fmt: skip
    finally:
        store.engine.dispose()
    if as_json:
        typer.echo(json.dumps(rows, ensure_ascii=False, indent=2))
        return
    for r in rows:
        typer.echo(f"{r['code']:20} {r['value']:>10} {r['valid_days']:4}d "
                   f"{'shareable' if r['shareable'] else 'personal':9} {r['title_zh']} / {r['title_en']}")  # fmt: skip


# ----- registry ------------------------------------------------------------------------------
def registry_doc(store: CrmStore, *, with_service: bool, gates: Sequence[str] = ()) -> Any:
    """``{device: vin}`` of every vehicle with a device; with ``with_service`` the list form
    ``[{"device_id", "vin", "last_service": {"date", "odometer_km"}}]`` the stream seeds its
    service-due model from; dealer gate cameras (``{"device_id", "role": "gate"}`` items) are
    the ones enrolled in the CRM (``carpulse devices enroll --gate``) and ``gates``."""
    from sqlalchemy import func, select

    from crm.schema import Vehicle
    from crm.tables import GateDevice, ServiceRecord

    with store.tx() as s:
        pairs = s.execute(
            select(Vehicle.device_id, Vehicle.vin)
            .where(Vehicle.device_id.is_not(None))
            .order_by(Vehicle.device_id)
        ).all()
        gates = sorted(set(gates) | set(s.execute(select(GateDevice.device_id)).scalars()))
        if not with_service and not gates:
            return {d: v for d, v in pairs}
        latest = (
            select(ServiceRecord.vin, func.max(ServiceRecord.service_date).label("day"))
            .group_by(ServiceRecord.vin)
            .subquery()
        )
        last = {
            r.vin: {"date": r.service_date.isoformat(), "odometer_km": r.odometer_km}
            for r in s.execute(
                select(ServiceRecord).join(
                    latest,
                    (ServiceRecord.vin == latest.c.vin)
                    & (ServiceRecord.service_date == latest.c.day),
                )
            ).scalars()
        }
    out: list[dict[str, Any]] = [{"device_id": g, "role": "gate"} for g in gates]
    for device, vin in pairs:
        item: dict[str, Any] = {"device_id": device, "vin": vin}
        if with_service and vin in last:
            item["last_service"] = last[vin]
        out.append(item)
    return out


@registry_app.command("export")
def registry_export(
    db: DbOpt = None,
    out: Annotated[
        Path | None,
        typer.Option(help="Write here (atomically: readers never see half a file); else stdout."),
    ] = None,
    with_service: Annotated[
        bool,
        typer.Option(
            "--with-service/--plain",
            help="Include each vehicle's last service (date, odometer) for the stream's "
            "service-due model (list form), or just {device: vin}.",
        ),
    ] = True,
    gate: Annotated[
        list[str] | None,
        typer.Option(help="A dealer gate camera's device id (repeatable; list form)."),
    ] = None,
) -> None:
    """Export the device -> VIN registry from the CRM as JSON, for the stream's registry setting.

    It replaces the file: gate cameras enrolled with `carpulse devices enroll --gate` are in it;
    others must be given again with --gate (or set in the stream section's gate_devices)."""
    from core.topics import DEVICE_ID_RE

    for g in gate or ():
        if not DEVICE_ID_RE.fullmatch(g):
            raise ConfigError(f"--gate {g!r}: not a device id")
    store = open_store(db)
    try:
        doc = registry_doc(store, with_service=with_service, gates=gate or ())
    finally:
        store.engine.dispose()
    text = json.dumps(doc, ensure_ascii=False, indent=1) + "\n"
    if out is None:
        sys.stdout.write(text)
        return
    out.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=out.parent, prefix=f".{out.name}.")
    with os.fdopen(fd, "w") as fh:
        fh.write(text)
    os.replace(tmp, out)
    typer.echo(f"{len(doc)} device(s) -> {out}", err=True)
