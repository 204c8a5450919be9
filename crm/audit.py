"""The audit log's hash chain, its dealer scope, its verifier, and the PostgreSQL application role.

``crm.store.audit`` only queues a record on the session; at commit (``before_commit``) the queued
records are chained: each row stores ``prev_hash`` (the row before it) and ``row_hash`` =
SHA-256 of ``prev_hash`` and the row's content, under a lock (PostgreSQL: a transaction advisory
lock; SQLite: the database's write lock) so two transactions never chain onto the same row, and a
unique ``prev_hash`` refuses a fork whatever happens. Chaining at commit and not at the first flush
means a transaction holds the lock only for its last statements: it never waits for a row lock
while holding it. ``verify_chain`` walks the log in id order and reports every row whose content
no longer matches its hash (an edit) and every row whose predecessor is not the row before it (a
deletion or an insertion). Tail truncation leaves a valid shorter chain: keep the printed head
elsewhere (``--expect-head``) to catch it.

``grant_app_role`` makes the PostgreSQL role the applications connect as: it may read and write the
CRM's tables but only SELECT and INSERT ``audit_log`` and the coupon share chain, and it owns
nothing, so it can neither edit the audit rows nor drop the append-only triggers.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import json
import re
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any, Final

from sqlalchemy import Engine, event, select, text
from sqlalchemy.orm import Session

from crm.schema import AuditRecord, Coupon, Customer, Vehicle, utcnow

GENESIS: Final = "0" * 64
PENDING_KEY: Final = "carpulse_audit_pending"
_LOCK_ID: Final = 0x63_61_72_70_61_75_64  # "carpaud": one chain, one lock
APPEND_ONLY_TABLES: Final = ("audit_log", "coupon_shares", "points_ledger")
ROLE_RE: Final = re.compile(r"^[a-z_][a-z0-9_]{0,62}$")


def content(rec: AuditRecord) -> str:
    """The canonical text a row's hash covers: everything but its id and its own hash."""
    at = rec.at.astimezone(dt.UTC).isoformat(timespec="microseconds")
    doc = [at, rec.actor, rec.action, rec.subject, rec.purpose, rec.dealer_id, rec.detail]
    return json.dumps(doc, sort_keys=True, separators=(",", ":"), ensure_ascii=False)


def row_hash(prev_hash: str, rec: AuditRecord) -> str:
    return hashlib.sha256(f"{prev_hash}\n{content(rec)}".encode()).hexdigest()


def queue(s: Session, rec: AuditRecord) -> None:
    """Queue a record for chaining at commit (``crm.store.audit`` calls this)."""
    rec.at = rec.at or utcnow()
    # what is hashed is what the JSON column gives back (tuples become lists...)
    rec.detail = json.loads(json.dumps(rec.detail or {}, default=str))
    s.info.setdefault(PENDING_KEY, []).append(rec)


def _dealer_of(s: Session, subject: str) -> str | None:
    """The dealer a record belongs to, from its subject: a vehicle, a customer or a coupon."""
    if (v := s.get(Vehicle, subject[:17])) is not None and v.vin == subject:
        return v.dealer_id
    if (c := s.get(Customer, subject[:32])) is not None and c.id == subject:
        return c.dealer_id
    if (cp := s.get(Coupon, subject[:32])) is not None and cp.id == subject:
        owner = s.get(Customer, cp.owner_id)
        return None if owner is None else owner.dealer_id
    return None


def _lock_and_head(s: Session) -> str:
    dialect = s.get_bind().dialect.name
    if dialect == "postgresql":
        s.execute(text("SELECT pg_advisory_xact_lock(:k)"), {"k": _LOCK_ID})
    elif dialect == "sqlite":  # a write statement takes the database's write lock now
        s.execute(text("DELETE FROM audit_log WHERE id < 0"))
    head = s.scalar(select(AuditRecord.row_hash).order_by(AuditRecord.id.desc()).limit(1))
    return head or GENESIS


@event.listens_for(Session, "before_commit")
def _chain_pending(s: Session) -> None:
    pending: list[AuditRecord] = s.info.pop(PENDING_KEY, [])
    if not pending:
        return
    with s.no_autoflush:
        for rec in pending:
            if rec.dealer_id is None and rec.subject:
                rec.dealer_id = _dealer_of(s, rec.subject)
    s.flush()  # everything else first: the lock is held only for the audit rows' inserts
    prev = _lock_and_head(s)
    for rec in pending:
        rec.prev_hash = prev
        rec.row_hash = prev = row_hash(prev, rec)
        s.add(rec)
    s.flush()


@event.listens_for(Session, "after_soft_rollback")
def _drop_pending(s: Session, _previous: Any) -> None:
    if not s.in_transaction():
        s.info.pop(PENDING_KEY, None)


@dataclass
class ChainReport:
    rows: int = 0
    head: str = GENESIS
    problems: list[dict[str, Any]] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.problems


def verify_chain(s: Session, expect_head: str | None = None, limit: int = 100) -> ChainReport:
    """Walk the chain in id order; up to ``limit`` problems are listed."""
    report = ChainReport()
    prev = GENESIS
    rows: Iterator[AuditRecord] = s.scalars(
        select(AuditRecord).order_by(AuditRecord.id).execution_options(yield_per=1000)
    )
    for rec in rows:
        report.rows += 1
        if rec.prev_hash != prev:
            report.problems.append(
                {"id": rec.id, "problem": "gap: a row before this one was deleted or inserted"}
            )
        if rec.row_hash != row_hash(rec.prev_hash or "", rec):
            report.problems.append({"id": rec.id, "problem": "edited: content does not match"})
        prev = rec.row_hash or ""
        if len(report.problems) >= limit:
            break
    report.head = prev
    if expect_head is not None and expect_head != prev and len(report.problems) < limit:
        report.problems.append(
            {"id": None, "problem": f"head is {prev}, expected {expect_head}: rows lost at the end"}
        )
    return report


def grant_app_role(engine: Engine, role: str, password: str | None) -> list[str]:
    """Create (or update) the applications' PostgreSQL role; returns the statements run.

    Run as the database owner after every ``carpulse crm migrate`` (new tables need grants).
    """
    if engine.dialect.name != "postgresql":
        raise ValueError("an application role only exists on PostgreSQL")
    if not ROLE_RE.match(role):
        raise ValueError(f"role name {role!r}: lower-case letters, digits and _ only")
    stmts: list[str] = []
    with engine.begin() as conn:
        exists = conn.scalar(text("SELECT 1 FROM pg_roles WHERE rolname = :r"), {"r": role})
        owner = conn.scalar(text("SELECT current_user"))
        if role == owner:
            raise ValueError("the application role must not be the tables' owner")
        if not exists:
            stmts.append(f"CREATE ROLE {role} LOGIN NOSUPERUSER NOCREATEDB NOCREATEROLE")
        if password is not None:
            pw = conn.scalar(text("SELECT quote_literal(:p)"), {"p": password})
            stmts.append(f"ALTER ROLE {role} PASSWORD {pw}")
        db = conn.scalar(text("SELECT quote_ident(current_database())"))
        tables = [
            t
            for t in conn.scalars(
                text("SELECT tablename FROM pg_tables WHERE schemaname = current_schema()")
            )
        ]
        stmts += [
            f"GRANT CONNECT ON DATABASE {db} TO {role}",
            f"GRANT USAGE ON SCHEMA public TO {role}",
            f"REVOKE ALL ON ALL TABLES IN SCHEMA public FROM {role}",
            f"GRANT USAGE, SELECT ON ALL SEQUENCES IN SCHEMA public TO {role}",
        ]
        for t in sorted(tables):
            quoted = conn.scalar(text("SELECT quote_ident(:t)"), {"t": t})
            if t in APPEND_ONLY_TABLES:
                privs = "SELECT, INSERT"
            elif t == "alembic_version":
                privs = "SELECT"
            else:
                privs = "SELECT, INSERT, UPDATE, DELETE"
            stmts.append(f"GRANT {privs} ON {quoted} TO {role}")
        for stmt in stmts:
            conn.execute(text(stmt))
    return [re.sub(r"PASSWORD '.*'", "PASSWORD '********'", x) for x in stmts]
