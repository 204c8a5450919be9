"""parked events: dead-letter time (expired or over the per-key cap)

Revision ID: 0003
Revises: 0002
Create Date: 2026-11-24 09:10:00
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

import crm.schema

revision = "0003"
down_revision = "0002"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("parked_events", schema=None) as batch_op:
        batch_op.add_column(
            sa.Column("dead_at", crm.schema.UTCDateTime(timezone=True), nullable=True)
        )


def downgrade() -> None:
    with op.batch_alter_table("parked_events", schema=None) as batch_op:
        batch_op.drop_column("dead_at")
