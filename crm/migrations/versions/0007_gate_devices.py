"""Dealer gate cameras enrolled in the CRM

Revision ID: 0007
Revises: 0006
Create Date: 2026-12-04 20:05:00

``carpulse devices enroll DEVICE --gate`` records the gate camera here; ``carpulse registry
export`` names it with ``role = "gate"``, so the stream and the CRM worker accept its gate events.
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

import crm.schema

revision = "0007"
down_revision = "0006"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "gate_devices",
        sa.Column("device_id", sa.String(length=64), nullable=False),
        sa.Column("dealer_id", sa.String(length=64), nullable=False),
        sa.Column("created_at", crm.schema.UTCDateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("device_id"),
    )


def downgrade() -> None:
    op.drop_table("gate_devices")
