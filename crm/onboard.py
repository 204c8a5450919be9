"""Onboarding a dealer from DMS exports: ``carpulse crm import DIR``.

Files (each optional, read in this order because later ones refer to earlier ones):
``customers.csv``, ``vehicles.csv``, ``ownerships.csv``, ``consents.csv``,
``service_records.csv``; columns in ``FILES``. A row is validated completely before anything is
written, and written in its own savepoint, so a rejected row leaves no trace; every reject is
reported as ``file:line: reason``. Rows are upserted on a natural key, so importing the same
files again changes nothing and a changed row updates its record:

- customers: ``customer_ref`` per dealer (``customer_refs``); a new ref whose phone, WeChat
  openid or member card the CRM already knows is linked to that customer, never merged silently;
- vehicles: ``vin``; a new plate closes the current plate assignment;
- ownerships: (vin, customer, from_date); intervals of a vehicle may not overlap (rows of a VIN
  are applied in ``from_date`` order, so a file may close the old owner and open the new one);
- consents: (customer, purpose, at);
- service records: (vin, date); the odometer may not go backwards between services. The owner
  on the service's date earns its points (``crm.loyalty``, once per record: a corrected amount
  earns the difference) and the tiers of those who earned are reviewed; an amount over the
  loyalty rules' ``max_service_amount`` is a reject.

A key that appears twice in one file is a reject of the second row ("same vin as line 3").
Dates are days (``YYYY-MM-DD``, also ``/`` or ``.``); an ownership starts and ends at midnight
UTC of its dates. A consent's ``at`` is an ISO 8601 time with an offset, or a date (midnight
UTC).

An empty optional cell means "not given": the stored value is kept. An import is for one dealer
(``--dealer``): a vehicle or an identity that belongs to another dealer is a reject, never a
silent move between tenants.
"""

from __future__ import annotations

import datetime as dt
import re
from collections.abc import Callable
from dataclasses import dataclass, field
from decimal import Decimal
from pathlib import Path
from typing import Any, Final, Literal

from sqlalchemy import select, text
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from core.errors import CarpulseError, ConfigError, CsvFileError, FieldError
from core.topics import DEVICE_ID_RE
from crm import audit as crm_audit
from crm import loyalty
from crm import store as st
from crm.csvfiles import read_rows
from crm.fields import (
    check_amount,
    check_bool,
    check_date,
    check_email,
    check_number,
    check_phone,
    check_text,
    check_time,
    check_vin,
)
from crm.schema import (
    CONSENT_PURPOSES,
    Consent,
    Customer,
    CustomerIdentity,
    Ownership,
    PlateAssignment,
    Vehicle,
    utcnow,
)
from crm.tables import CustomerContact, CustomerRef, ServiceRecord

SOURCE: Final = "dms-import"
FILES: Final[dict[str, tuple[tuple[str, ...], tuple[str, ...]]]] = {
    # name: (required columns, optional columns)
    "customers.csv": (
        ("customer_ref",),
        ("name", "phone", "email", "wechat_openid", "member_card"),
    ),
    "vehicles.csv": (("vin",), ("model", "year", "plate", "device_id")),
    "ownerships.csv": (("vin", "customer_ref", "from_date"), ("to_date",)),
    "consents.csv": (("customer_ref", "purpose", "granted", "at"), ()),
    "service_records.csv": (("vin", "date", "odometer_km"), ("work", "amount")),
}
# the natural key of each file's rows: a key twice in one file is a reject
KEYS: Final[dict[str, tuple[str, ...]]] = {
    "customers.csv": ("customer_ref",),
    "vehicles.csv": ("vin",),
    "ownerships.csv": ("vin", "customer_ref", "from_date"),
    "consents.csv": ("customer_ref", "purpose", "at"),
    "service_records.csv": ("vin", "date"),
}
Outcome = Literal["inserted", "updated", "unchanged"]
OPENID_RE: Final = re.compile(r"^[A-Za-z0-9_-]{1,128}$")
PLATE_RE: Final = re.compile(r"^[0-9A-Z\u4e00-\u9fff]{2,12}$")


@dataclass
class FileReport:
    present: bool = False
    inserted: int = 0
    updated: int = 0
    unchanged: int = 0
    rejected: int = 0

    def counts(self) -> dict[str, Any]:
        return {"present": self.present, "inserted": self.inserted, "updated": self.updated,
                "unchanged": self.unchanged, "rejected": self.rejected}  # fmt: skip


@dataclass
class ImportReport:
    files: dict[str, FileReport] = field(default_factory=lambda: {n: FileReport() for n in FILES})
    rejects: list[str] = field(default_factory=list)  # "file:line: reason"
    dry_run: bool = False

    def to_json(self) -> dict[str, Any]:
        return {"dry_run": self.dry_run, "files": {n: r.counts() for n, r in self.files.items()},
                "rejected": len(self.rejects), "rejects": self.rejects}  # fmt: skip


@dataclass
class Importer:
    """One import into one session; ``run`` reads ``folder`` and fills ``report``."""

    s: Session
    dealer_id: str = "default"
    region: str = "CN"
    today: dt.date = field(default_factory=lambda: dt.datetime.now(dt.UTC).date())
    report: ImportReport = field(default_factory=ImportReport)
    vin_check_digit: bool = True  # verify position 9 of North American and Chinese VINs
    earners: set[str] = field(default_factory=set)  # customers whose points changed

    # ----- driver ---------------------------------------------------------------------------
    def run(self, folder: Path) -> ImportReport:
        if not folder.is_dir():
            raise ConfigError(f"{folder}: not a directory of DMS exports")
        found = [n for n in FILES if (folder / n).is_file()]
        if not found:
            raise ConfigError(f"{folder}: none of {', '.join(FILES)} is there")
        handlers: dict[str, Callable[[dict[str, str]], Outcome]] = {
            "customers.csv": self.customer, "vehicles.csv": self.vehicle,
            "ownerships.csv": self.ownership, "consents.csv": self.consent,
            "service_records.csv": self.service_record,
        }  # fmt: skip
        for name in found:
            self.report.files[name].present = True
            self._file(folder / name, name, handlers[name])
        for cid in sorted(self.earners):  # tiers follow the imported services
            loyalty.review_tier(self.s, cid, reason="import")
        st.audit(self.s, SOURCE, "crm.import", self.dealer_id, dealer_id=self.dealer_id,
                 files={n: r.counts() for n, r in self.report.files.items() if r.present})  # fmt: skip
        return self.report

    def _file(self, path: Path, name: str, handler: Callable[[dict[str, str]], Outcome]) -> None:
        required, optional = FILES[name]
        rep = self.report.files[name]
        rows: list[tuple[int, dict[str, str]]] = []
        try:
            for row in read_rows(path, required, optional):
                if row.cells is None:
                    self._reject(path, row.line, row.reject or "unreadable", rep)
                else:
                    rows.append((row.line, row.cells))
        except CsvFileError as err:
            self.report.rejects.append(f"{err} (file skipped)")
            rep.rejected += 1
            return
        rows = self._drop_duplicates(path, rows, KEYS[name], rep)
        if name in ("ownerships.csv", "service_records.csv"):
            # per vehicle in time order: intervals and odometers are checked against the
            # rows before them; a bad date sorts last and is rejected by the handler
            date_col = "from_date" if name == "ownerships.csv" else "date"
            rows.sort(key=lambda r: (r[1]["vin"].strip().upper(), r[1][date_col].strip(), r[0]))
        for line, cells in rows:
            pending = self.s.info.get(crm_audit.PENDING_KEY, [])
            mark = len(pending)
            try:
                with self.s.begin_nested():
                    outcome = handler(cells)
                    self.s.flush()
            except (CarpulseError, ValueError) as err:
                del pending[mark:]  # the row's audit records go with it
                self._reject(path, line, str(err), rep)
                continue
            except IntegrityError as err:
                del pending[mark:]
                why = str(err.orig).splitlines()[0][:200] if err.orig else "constraint"
                self._reject(path, line, f"conflicts with a record in the CRM ({why})", rep)
                continue
            setattr(rep, outcome, getattr(rep, outcome) + 1)
        self.report.rejects.sort(key=_reject_order)

    def _drop_duplicates(
        self,
        path: Path,
        rows: list[tuple[int, dict[str, str]]],
        key: tuple[str, ...],
        rep: FileReport,
    ) -> list[tuple[int, dict[str, str]]]:
        """A second row with the same key in one file is a reject, not a silent overwrite."""
        first: dict[tuple[str, ...], int] = {}
        out = []
        for line, cells in rows:
            k = tuple(cells[c].strip().upper() if c == "vin" else cells[c].strip() for c in key)
            if k in first:
                self._reject(path, line, f"same {', '.join(key)} as line {first[k]}", rep)
                continue
            first[k] = line
            out.append((line, cells))
        return out

    def _reject(self, path: Path, line: int, reason: str, rep: FileReport) -> None:
        rep.rejected += 1
        self.report.rejects.append(f"{path}:{line}: {reason}")

    # ----- lookups --------------------------------------------------------------------------
    def _customer_of(self, ref_cell: str) -> str:
        ref = _ref(ref_cell)
        link = self.s.scalar(
            select(CustomerRef).where(
                CustomerRef.dealer_id == self.dealer_id, CustomerRef.ref == ref
            )
        )
        if link is None:
            raise FieldError(f"customer_ref {ref!r} is unknown (not in customers.csv or the CRM)")
        return st.resolve(self.s, link.customer_id)

    def _vehicle(self, vin_cell: str) -> Vehicle:
        vin = _field("vin", check_vin, vin_cell, self.vin_check_digit)
        v = self.s.get(Vehicle, vin)
        if v is None:
            raise FieldError(f"vin {vin} is unknown (not in vehicles.csv or the CRM)")
        return v

    # ----- customers.csv --------------------------------------------------------------------
    def customer(self, c: dict[str, str]) -> Outcome:
        ref = _ref(c["customer_ref"])
        name = _field("name", check_text, c.get("name", ""), "name", 200)
        idents: dict[str, str] = {}
        if phone := c.get("phone", "").strip():
            idents["phone"] = _field("phone", check_phone, phone, self.region)
        if openid := c.get("wechat_openid", "").strip():
            if not OPENID_RE.match(openid):
                raise FieldError("wechat_openid: 1..128 letters, digits, '_' or '-'")
            idents["wechat_openid"] = openid
        if card := c.get("member_card", "").strip():
            idents["member_card"] = _field("member_card", check_text, card, "member card", 128)
        email = _field("email", check_email, c["email"]) if c.get("email", "").strip() else None
        owners: dict[str, str] = {}
        for kind, value in idents.items():
            ident = self.s.scalar(
                select(CustomerIdentity).where(
                    CustomerIdentity.kind == kind, CustomerIdentity.value == value
                )
            )
            if ident is not None:
                owners[kind] = st.resolve(self.s, ident.customer_id)
        link = self.s.scalar(
            select(CustomerRef).where(
                CustomerRef.dealer_id == self.dealer_id, CustomerRef.ref == ref
            )
        )
        outcome: Outcome = "unchanged"
        if link is not None:
            cid = st.resolve(self.s, link.customer_id)
        elif owners:
            if len(set(owners.values())) > 1:
                raise FieldError(
                    f"{' and '.join(owners)} belong to different customers in the CRM; "
                    "merge them first"
                )
            cid = next(iter(owners.values()))
            known = self.s.get(Customer, cid)
            if known is not None and known.dealer_id != self.dealer_id:
                kind = next(iter(owners))
                raise FieldError(
                    f"{kind} {idents[kind]} belongs to a customer of dealer {known.dealer_id!r}"
                )
            other = self.s.scalar(
                select(CustomerRef.ref).where(
                    CustomerRef.dealer_id == self.dealer_id, CustomerRef.customer_id == cid
                )
            )
            if other is not None:
                raise FieldError(
                    f"{next(iter(owners))} {idents[next(iter(owners))]} belongs to "
                    f"customer_ref {other!r}"
                )
            self.s.add(CustomerRef(dealer_id=self.dealer_id, ref=ref, customer_id=cid))
            outcome = "updated"  # an existing customer (app, stream) gets its DMS reference
        else:
            cust = Customer(display_name=name, dealer_id=self.dealer_id)
            self.s.add(cust)
            self.s.flush()
            cid = cust.id
            self.s.add(CustomerRef(dealer_id=self.dealer_id, ref=ref, customer_id=cid))
            outcome = "inserted"
        for kind, owner in owners.items():
            if owner != cid:
                raise FieldError(f"{kind} {idents[kind]} belongs to another customer in the CRM")
        cust_row = self.s.get(Customer, cid)
        assert cust_row is not None
        changed = False
        if name and cust_row.display_name != name:
            cust_row.display_name, changed = name, True
        for kind, value in idents.items():
            if kind in owners:
                continue
            # the identity this import gave earlier is replaced; the app's own ones are kept
            for old in self.s.scalars(
                select(CustomerIdentity).where(
                    CustomerIdentity.customer_id == cid,
                    CustomerIdentity.kind == kind,
                    CustomerIdentity.source == SOURCE,
                )
            ):
                self.s.delete(old)
            self.s.flush()
            self.s.add(CustomerIdentity(customer_id=cid, kind=kind, value=value, source=SOURCE))
            changed = True
        if email is not None:
            contact = self.s.get(CustomerContact, cid)
            if contact is None:
                self.s.add(CustomerContact(customer_id=cid, email=email))
                changed = True
            elif contact.email != email:
                contact.email, changed = email, True
        return "updated" if outcome == "unchanged" and changed else outcome

    # ----- vehicles.csv ---------------------------------------------------------------------
    def vehicle(self, c: dict[str, str]) -> Outcome:
        vin = _field("vin", check_vin, c["vin"], self.vin_check_digit)
        model = _field("model", check_text, c.get("model", ""), "model", 100)
        year = None
        if c.get("year", "").strip():
            year = int(_field("year", check_number, c["year"], "year", 1950, self.today.year + 1))
        plate = None
        if raw_plate := c.get("plate", "").strip():
            plate = re.sub(r"[\s·.-]", "", raw_plate).upper()
            if not PLATE_RE.match(plate):
                raise FieldError(f"plate: {raw_plate[:20]!r} is not a licence plate")
        device = c.get("device_id", "").strip() or None
        if device is not None and not DEVICE_ID_RE.match(device):
            raise FieldError("device_id: 1..64 letters, digits, '_', '.' or '-'")
        if device is not None:
            other = self.s.scalar(
                select(Vehicle.vin).where(Vehicle.device_id == device, Vehicle.vin != vin)
            )
            if other is not None:
                raise FieldError(f"device_id {device} is installed in vehicle {other}")
        v = self.s.get(Vehicle, vin)
        outcome: Outcome = "unchanged"
        if v is None:
            v = Vehicle(vin=vin, model=model, model_year=year, device_id=device,
                        dealer_id=self.dealer_id)  # fmt: skip
            self.s.add(v)
            self.s.flush()
            outcome = "inserted"
        else:
            if v.dealer_id != self.dealer_id:
                raise FieldError(f"vin {vin} is a vehicle of dealer {v.dealer_id!r}")
            for attr, value in (("model", model), ("model_year", year), ("device_id", device)):
                if value not in (None, "") and getattr(v, attr) != value:
                    setattr(v, attr, value)
                    outcome = "updated"
        if plate is not None:
            current = self.s.scalar(
                select(PlateAssignment).where(
                    PlateAssignment.vin == vin, PlateAssignment.valid_to.is_(None)
                )
            )
            if current is None or current.plate != plate:
                now = utcnow()
                if current is not None:
                    current.valid_to = now
                self.s.add(PlateAssignment(vin=vin, plate=plate, valid_from=now))
                outcome = "inserted" if outcome == "inserted" else "updated"
        return outcome

    # ----- ownerships.csv -------------------------------------------------------------------
    def ownership(self, c: dict[str, str]) -> Outcome:
        v = self._vehicle(c["vin"])
        cid = self._customer_of(c["customer_ref"])
        start = _field("from_date", check_date, c["from_date"], not_after=self.today)
        end = None
        if c.get("to_date", "").strip():
            end = _field("to_date", check_date, c["to_date"])
            if end <= start:
                raise FieldError(f"to_date {end} is not after from_date {start}")
        frm = _midnight(start)
        to = None if end is None else _midnight(end)
        rows = list(self.s.scalars(select(Ownership).where(Ownership.vin == v.vin)))
        same = [r for r in rows if r.valid_from == frm and st.resolve(self.s, r.customer_id) == cid]
        others = [r for r in rows if r not in same]
        for r in others:
            if frm < (r.valid_to or _FAR) and r.valid_from < (to or _FAR):
                till = "now" if r.valid_to is None else f"{r.valid_to:%Y-%m-%d}"
                who = "the same customer" if st.resolve(self.s, r.customer_id) == cid else (
                    f"customer {r.customer_id}")  # fmt: skip
                raise FieldError(
                    f"ownership {start}..{end or 'now'} overlaps the ownership of {who} "
                    f"{r.valid_from:%Y-%m-%d}..{till}"
                )
        if same:
            row = same[0]
            if row.valid_to == to:
                return "unchanged"
            row.valid_to = to
            st.audit(self.s, SOURCE, "vehicle.ownership", v.vin, owner=cid, to=str(end))
            return "updated"
        self.s.add(Ownership(vin=v.vin, customer_id=cid, valid_from=frm, valid_to=to))
        st.audit(self.s, SOURCE, "vehicle.ownership", v.vin, new_owner=cid, at=frm.isoformat())
        return "inserted"

    # ----- consents.csv ---------------------------------------------------------------------
    def consent(self, c: dict[str, str]) -> Outcome:
        cid = self._customer_of(c["customer_ref"])
        purpose = c["purpose"].strip().lower()
        if purpose not in CONSENT_PURPOSES:
            raise FieldError(
                f"purpose: {purpose[:30]!r} is not one of {', '.join(CONSENT_PURPOSES)}"
            )
        granted = _field("granted", check_bool, c["granted"])
        at = _field("at", check_time, c["at"])
        if at.date() > self.today:
            raise FieldError(f"at: {at:%Y-%m-%d} is in the future")
        row = self.s.scalar(
            select(Consent).where(
                Consent.customer_id == cid, Consent.purpose == purpose, Consent.at == at
            )
        )
        action = "consent." + ("grant" if granted else "revoke")
        if row is not None:
            if row.granted == granted:
                return "unchanged"
            row.granted = granted
            st.audit(self.s, SOURCE, action, cid, purpose, at=at.isoformat(), corrected=True)
            return "updated"
        self.s.add(Consent(customer_id=cid, purpose=purpose, granted=granted, at=at, source=SOURCE))
        st.audit(self.s, SOURCE, action, cid, purpose, at=at.isoformat())
        return "inserted"

    # ----- service_records.csv --------------------------------------------------------------
    def service_record(self, c: dict[str, str]) -> Outcome:
        v = self._vehicle(c["vin"])
        day = _field("date", check_date, c["date"], not_after=self.today)
        km = _field("odometer_km", check_number, c["odometer_km"], "odometer_km", 0, 2_000_000)
        work = _field("work", check_text, c.get("work", ""), "work", 2000, multiline=True)
        amount: Decimal | None = None
        if c.get("amount", "").strip():
            amount = _field("amount", check_amount, c["amount"])
        rows = list(self.s.scalars(select(ServiceRecord).where(ServiceRecord.vin == v.vin)))
        for r in rows:
            if r.service_date == day:
                continue
            if (r.service_date < day and r.odometer_km > km) or (
                r.service_date > day and r.odometer_km < km
            ):
                raise FieldError(
                    f"odometer_km {km:g} on {day} does not fit {r.odometer_km:g} km on "
                    f"{r.service_date} (an odometer never goes backwards)"
                )
        row = next((r for r in rows if r.service_date == day), None)
        outcome: Outcome = "unchanged"
        if row is None:
            row = ServiceRecord(vin=v.vin, service_date=day, odometer_km=km, work=work,
                                amount=amount, source=SOURCE)  # fmt: skip
            self.s.add(row)
            self.s.flush()
            outcome = "inserted"
        else:
            new = (km, work or row.work, amount if amount is not None else row.amount)
            if (row.odometer_km, row.work, row.amount) != new:
                row.odometer_km, row.work, row.amount = new
                outcome = "updated"
        # the owner on that day earns its points once (crm.loyalty: a corrected amount earns
        # the difference; importing the file again earns nothing)
        owner, _ = loyalty.grant_service_record(self.s, row, SOURCE)
        if owner is not None:
            self.earners.add(owner)
        return outcome


_FAR: Final = dt.datetime.max.replace(tzinfo=dt.UTC)


def _midnight(day: dt.date) -> dt.datetime:
    return dt.datetime.combine(day, dt.time(), dt.UTC)


def _ref(cell: str) -> str:
    ref = _field("customer_ref", check_text, cell, "customer_ref", 64)
    if not ref:
        raise FieldError("customer_ref is empty")
    return ref


def _field(column: str, check: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
    """``check(*args)`` with the column named in its error."""
    try:
        return check(*args, **kwargs)
    except FieldError as err:
        msg = str(err)
        raise FieldError(msg if msg.startswith(column) else f"{column}: {msg}") from None


def _reject_order(reject: str) -> tuple[int, str, int]:
    m = re.match(r"^(.*?):(\d+): ", reject)
    if m is None:
        return (0, reject, 0)
    name = Path(m.group(1)).name
    order = list(FILES).index(name) if name in FILES else len(FILES)
    return (order, m.group(1), int(m.group(2)))


def import_folder(
    store: st.CrmStore,
    folder: Path,
    *,
    dealer_id: str = "default",
    region: str = "CN",
    dry_run: bool = False,
    today: dt.date | None = None,
    vin_check_digit: bool = True,
) -> ImportReport:
    """Import the DMS exports in ``folder`` in one transaction (rolled back when ``dry_run``)."""
    with Session(store.engine, expire_on_commit=False) as s:
        imp = Importer(s, dealer_id, region, report=ImportReport(dry_run=dry_run),
                       vin_check_digit=vin_check_digit)  # fmt: skip
        if today is not None:
            imp.today = today
        s.begin()
        if s.get_bind().dialect.name == "sqlite":
            # pysqlite opens its transaction only at the first write: without one, a row's
            # SAVEPOINT would open it and RELEASE would commit it (no rollback, no dry run).
            # A no-op write begins it now, and takes the database's write lock for the import.
            s.execute(text("DELETE FROM customer_refs WHERE id < 0"))
        try:
            imp.run(folder)
        except BaseException:
            s.rollback()
            raise
        if dry_run:
            s.info.pop(crm_audit.PENDING_KEY, None)
            s.rollback()
        else:
            s.commit()
    return imp.report
