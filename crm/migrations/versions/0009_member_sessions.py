"""Member-page sessions

Revision ID: 0009
Revises: 0008
Create Date: 2026-12-04 22:50:00

The mobile member page (``dashboards.member``) signs a customer in with a signed, expiring link
(``crm.member_links``); the session it opens is kept here, and a logout retires the link too.
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

import crm.schema

revision = "0009"
down_revision = "0008"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "member_sessions",
        sa.Column("token_hash", sa.String(length=64), nullable=False),
        sa.Column("customer_id", sa.String(length=32), nullable=False),
        sa.Column("link_nonce", sa.String(length=32), nullable=False),
        sa.Column("created_at", crm.schema.UTCDateTime(timezone=True), nullable=False),
        sa.Column("expires_at", crm.schema.UTCDateTime(timezone=True), nullable=False),
        sa.Column("ended_at", crm.schema.UTCDateTime(timezone=True), nullable=True),
        sa.ForeignKeyConstraint(["customer_id"], ["customers.id"]),
        sa.PrimaryKeyConstraint("token_hash"),
    )
    with op.batch_alter_table("member_sessions") as batch:
        batch.create_index("ix_member_sessions_customer_id", ["customer_id"], unique=False)
        batch.create_index("ix_member_sessions_link_nonce", ["link_nonce"], unique=False)


def downgrade() -> None:
    op.drop_table("member_sessions")
