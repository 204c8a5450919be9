"""Points ledger, loyalty coupon templates, tier ids

Revision ID: 0008
Revises: 0007
Create Date: 2026-12-04 22:40:00

``points_ledger`` is the append-only ledger of ``crm.loyalty`` (triggers refuse UPDATE and
DELETE, as for the audit log). Existing members' points become
an opening-balance row each (so the tier window sees them); tiers stored under their Chinese
names become the tier ids (普卡 standard, 银卡 silver, 金卡 gold, 白金/白金卡 platinum). The
coupon templates the shipped win-back and referral rules issue are added when missing (their
titles and values can be changed with ``carpulse crm templates add``).
"""

from __future__ import annotations

import datetime as dt

import sqlalchemy as sa
from alembic import op

import crm.schema

revision = "0008"
down_revision = "0007"
branch_labels = None
depends_on = None

TIER_IDS = {"普卡": "standard", "银卡": "silver", "金卡": "gold", "白金": "platinum",
            "白金卡": "platinum"}  # fmt: skip
SQLITE_TRIGGERS = [
    "CREATE TRIGGER IF NOT EXISTS points_ledger_no_update BEFORE UPDATE ON points_ledger "
    "BEGIN SELECT RAISE(ABORT, 'points_ledger is append-only'); END",
    "CREATE TRIGGER IF NOT EXISTS points_ledger_no_delete BEFORE DELETE ON points_ledger "
    "BEGIN SELECT RAISE(ABORT, 'points_ledger is append-only'); END",
]
PG_TRIGGERS = [
    "CREATE OR REPLACE FUNCTION points_ledger_append_only() RETURNS trigger LANGUAGE plpgsql AS "
    "$$ BEGIN RAISE EXCEPTION 'points_ledger is append-only'; END $$",
    "CREATE TRIGGER points_ledger_no_change BEFORE UPDATE OR DELETE ON points_ledger "
    "FOR EACH ROW EXECUTE FUNCTION points_ledger_append_only()",
]
TEMPLATES = (
    ("win-back", "回厂礼券", "Welcome-back coupon", 200, 60),
    ("referral-thanks", "推荐感谢券", "Referral thank-you coupon", 100, 90),
)


def upgrade() -> None:
    op.create_table(
        "points_ledger",
        sa.Column("id", sa.Integer(), autoincrement=True, nullable=False),
        sa.Column("customer_id", sa.String(length=32), nullable=False),
        sa.Column("source", sa.String(length=120), nullable=False),
        sa.Column("seq", sa.Integer(), nullable=False),
        sa.Column("kind", sa.String(length=16), nullable=False),
        sa.Column("delta", sa.Integer(), nullable=False),
        sa.Column("amount", sa.Numeric(precision=12, scale=2), nullable=True),
        sa.Column("at", crm.schema.UTCDateTime(timezone=True), nullable=False),
        sa.Column("actor", sa.String(length=64), nullable=False),
        sa.Column("detail", sa.JSON(), nullable=False),
        sa.Column("created_at", crm.schema.UTCDateTime(timezone=True), nullable=False),
        sa.ForeignKeyConstraint(["customer_id"], ["customers.id"]),
        sa.PrimaryKeyConstraint("id"),
        sa.UniqueConstraint("source", "seq", name="uq_points_source_seq"),
    )
    op.create_index("ix_points_customer_at", "points_ledger", ["customer_id", "at"], unique=False)
    sqlite = op.get_bind().dialect.name == "sqlite"
    for stmt in SQLITE_TRIGGERS if sqlite else PG_TRIGGERS:  # corrections are new rows
        op.execute(stmt)
    conn = op.get_bind()
    now = dt.datetime.now(dt.UTC)
    ledger = sa.table(
        "points_ledger",
        sa.column("customer_id", sa.String()), sa.column("source", sa.String()),
        sa.column("seq", sa.Integer()), sa.column("kind", sa.String()),
        sa.column("delta", sa.Integer()), sa.column("at", crm.schema.UTCDateTime()),
        sa.column("actor", sa.String()), sa.column("detail", sa.JSON()),
        sa.column("created_at", crm.schema.UTCDateTime()),
    )  # fmt: skip
    members = conn.execute(sa.text("SELECT customer_id, points FROM members WHERE points <> 0"))
    rows = [{"customer_id": cid, "source": f"opening:{cid}", "seq": 0, "kind": "adjustment",
             "delta": int(pts), "at": now, "actor": "migration-0008", "detail": {},
             "created_at": now} for cid, pts in members]  # fmt: skip
    if rows:
        op.bulk_insert(ledger, rows)  # type: ignore[arg-type]
    for name, tier in TIER_IDS.items():
        conn.execute(
            sa.text("UPDATE members SET tier = :t WHERE tier = :n"), {"t": tier, "n": name}
        )
    have = set(conn.scalars(sa.text("SELECT code FROM coupon_templates")))
    templates = sa.table(
        "coupon_templates",
        sa.column("code", sa.String()), sa.column("title_zh", sa.String()),
        sa.column("title_en", sa.String()), sa.column("value", sa.Numeric(12, 2)),
        sa.column("valid_days", sa.Integer()), sa.column("shareable", sa.Boolean()),
    )  # fmt: skip
    new = [{"code": c, "title_zh": zh, "title_en": en, "value": v, "valid_days": d,
            "shareable": c != "referral-thanks"}
           for c, zh, en, v, d in TEMPLATES if c not in have]  # fmt: skip
    if new:
        op.bulk_insert(templates, new)  # type: ignore[arg-type]


def downgrade() -> None:
    if op.get_bind().dialect.name != "sqlite":
        op.execute("DROP TRIGGER IF EXISTS points_ledger_no_change ON points_ledger")
        op.execute("DROP FUNCTION IF EXISTS points_ledger_append_only()")
    op.drop_index("ix_points_customer_at", table_name="points_ledger")
    op.drop_table("points_ledger")
