"""dashboards: users, sessions and the pre-login signing secret; the legacy advisor_inbox goes

Revision ID: 0004
Revises: 0003
Create Date: 2026-11-24 09:55:00

Before this revision the dashboards made ``dashboard_users`` and ``dashboard_sessions`` themselves
at start (``create_all``) and dropped their old ``advisor_inbox``. A database that already has those
tables keeps them (same columns); only what is missing is created.
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0004"
down_revision = "0003"
branch_labels = None
depends_on = None


def upgrade() -> None:
    existing = set(sa.inspect(op.get_bind()).get_table_names())
    if "dashboard_users" not in existing:
        op.create_table(
            "dashboard_users",
            sa.Column("username", sa.String(length=64), nullable=False),
            sa.Column("password_hash", sa.String(length=200), nullable=False),
            sa.Column("role", sa.String(length=32), nullable=False),
            sa.Column("dealer_id", sa.String(length=64), nullable=False),
            sa.Column("active", sa.Boolean(), nullable=False),
            sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
            sa.PrimaryKeyConstraint("username"),
        )
    if "dashboard_sessions" not in existing:
        op.create_table(
            "dashboard_sessions",
            sa.Column("token_hash", sa.String(length=64), nullable=False),
            sa.Column("username", sa.String(length=64), nullable=True),
            sa.Column("role", sa.String(length=32), nullable=True),
            sa.Column("dealer_id", sa.String(length=64), nullable=True),
            sa.Column("created", sa.Float(), nullable=False),
            sa.Column("last_seen", sa.Float(), nullable=False),
            sa.Column("expires", sa.Float(), nullable=False),
            sa.Column("grant", sa.JSON(), nullable=True),
            sa.PrimaryKeyConstraint("token_hash"),
        )
        with op.batch_alter_table("dashboard_sessions", schema=None) as batch_op:
            batch_op.create_index(
                batch_op.f("ix_dashboard_sessions_expires"), ["expires"], unique=False
            )
    op.create_table(
        "dashboard_secrets",
        sa.Column("name", sa.String(length=32), nullable=False),
        sa.Column("value", sa.String(length=128), nullable=False),
        sa.PrimaryKeyConstraint("name"),
    )
    op.execute("DROP TABLE IF EXISTS advisor_inbox")


def downgrade() -> None:
    op.drop_table("dashboard_secrets")
    with op.batch_alter_table("dashboard_sessions", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_dashboard_sessions_expires"))
    op.drop_table("dashboard_sessions")
    op.drop_table("dashboard_users")
