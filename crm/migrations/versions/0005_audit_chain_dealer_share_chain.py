"""audit log: dealer scope and hash chain; the coupon share chain append-only in SQL too

Revision ID: 0005
Revises: 0004
Create Date: 2026-12-04 16:40:00

Existing audit rows get the dealer of their subject (a vehicle or a customer) and are chained in id
order, so ``carpulse crm audit verify`` holds from this revision on. The append-only triggers are
lifted for that backfill only (SQLite: dropped and made again, as a batch rebuild drops them).
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0005"
down_revision = "0004"
branch_labels = None
depends_on = None

SQLITE_AUDIT_TRIGGERS = [
    "CREATE TRIGGER IF NOT EXISTS audit_log_no_update BEFORE UPDATE ON audit_log "
    "BEGIN SELECT RAISE(ABORT, 'audit_log is append-only'); END",
    "CREATE TRIGGER IF NOT EXISTS audit_log_no_delete BEFORE DELETE ON audit_log "
    "BEGIN SELECT RAISE(ABORT, 'audit_log is append-only'); END",
]
SQLITE_SHARE_TRIGGERS = [
    "CREATE TRIGGER IF NOT EXISTS coupon_shares_no_update BEFORE UPDATE ON coupon_shares "
    "BEGIN SELECT RAISE(ABORT, 'coupon_shares is append-only'); END",
    "CREATE TRIGGER IF NOT EXISTS coupon_shares_no_delete BEFORE DELETE ON coupon_shares "
    "BEGIN SELECT RAISE(ABORT, 'coupon_shares is append-only'); END",
]
PG_SHARE_TRIGGERS = [
    "CREATE OR REPLACE FUNCTION coupon_shares_append_only() RETURNS trigger LANGUAGE plpgsql AS "
    "$$ BEGIN RAISE EXCEPTION 'coupon_shares is append-only'; END $$",
    "CREATE TRIGGER coupon_shares_no_change BEFORE UPDATE OR DELETE ON coupon_shares "
    "FOR EACH ROW EXECUTE FUNCTION coupon_shares_append_only()",
]


def _backfill() -> None:
    from crm.audit import GENESIS, row_hash
    from crm.schema import AuditRecord

    bind = op.get_bind()
    for table, key, col in (("vehicles", "vin", "dealer_id"), ("customers", "id", "dealer_id")):
        bind.execute(
            sa.text(
                f"UPDATE audit_log SET dealer_id = (SELECT {table}.{col} FROM {table} "
                f"WHERE {table}.{key} = audit_log.subject) WHERE dealer_id IS NULL"
            )
        )
    t = AuditRecord.__table__
    names = ("at", "actor", "action", "subject", "purpose", "dealer_id", "detail")
    prev = GENESIS
    # only the columns this revision knows: a later one may add more to the model
    rows = bind.execute(sa.select(t.c.id, *(t.c[k] for k in names)).order_by(t.c.id)).mappings()
    for row in rows.all():
        rec = AuditRecord(**{k: row[k] for k in names})
        h = row_hash(prev, rec)
        bind.execute(
            sa.text("UPDATE audit_log SET prev_hash = :p, row_hash = :h WHERE id = :id"),
            {"p": prev, "h": h, "id": row["id"]},
        )
        prev = h


def upgrade() -> None:
    dialect = op.get_bind().dialect.name
    if dialect == "sqlite":
        op.execute("DROP TRIGGER IF EXISTS audit_log_no_update")
        op.execute("DROP TRIGGER IF EXISTS audit_log_no_delete")
    elif dialect == "postgresql":
        op.execute("ALTER TABLE audit_log DISABLE TRIGGER audit_log_no_change")
    with op.batch_alter_table("audit_log", schema=None) as batch_op:
        batch_op.add_column(sa.Column("dealer_id", sa.String(length=64), nullable=True))
        batch_op.add_column(sa.Column("prev_hash", sa.String(length=64), nullable=True))
        batch_op.add_column(sa.Column("row_hash", sa.String(length=64), nullable=True))
    _backfill()
    with op.batch_alter_table("audit_log", schema=None) as batch_op:
        batch_op.alter_column("prev_hash", existing_type=sa.String(length=64), nullable=False)
        batch_op.alter_column("row_hash", existing_type=sa.String(length=64), nullable=False)
        batch_op.create_index(batch_op.f("ix_audit_log_dealer_id"), ["dealer_id"], unique=False)
        batch_op.create_index(batch_op.f("ix_audit_log_prev_hash"), ["prev_hash"], unique=True)
    if dialect == "sqlite":
        for stmt in SQLITE_AUDIT_TRIGGERS + SQLITE_SHARE_TRIGGERS:
            op.execute(stmt)
    elif dialect == "postgresql":
        op.execute("ALTER TABLE audit_log ENABLE TRIGGER audit_log_no_change")
        for stmt in PG_SHARE_TRIGGERS:
            op.execute(stmt)


def downgrade() -> None:
    dialect = op.get_bind().dialect.name
    if dialect == "sqlite":
        for name in ("coupon_shares_no_update", "coupon_shares_no_delete",
                     "audit_log_no_update", "audit_log_no_delete"):  # fmt: skip
            op.execute(f"DROP TRIGGER IF EXISTS {name}")
    elif dialect == "postgresql":
        op.execute("DROP TRIGGER IF EXISTS coupon_shares_no_change ON coupon_shares")
        op.execute("DROP FUNCTION IF EXISTS coupon_shares_append_only()")
    with op.batch_alter_table("audit_log", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_audit_log_prev_hash"))
        batch_op.drop_index(batch_op.f("ix_audit_log_dealer_id"))
        batch_op.drop_column("row_hash")
        batch_op.drop_column("prev_hash")
        batch_op.drop_column("dealer_id")
    if dialect == "sqlite":
        for stmt in SQLITE_AUDIT_TRIGGERS:
            op.execute(stmt)
