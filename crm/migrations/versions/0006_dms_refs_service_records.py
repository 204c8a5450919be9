"""DMS onboarding: customer references per dealer, service history, vehicle model year

Revision ID: 0006
Revises: 0005
Create Date: 2026-12-04 17:05:00

``carpulse crm import`` keys customers by the dealer system's own reference (``customer_refs``)
and keeps the workshop history (``service_records``) that seeds the service-due model.
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

import crm.schema

revision = "0006"
down_revision = "0005"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("vehicles", schema=None) as batch_op:
        batch_op.add_column(sa.Column("model_year", sa.Integer(), nullable=True))
    op.create_table(
        "customer_refs",
        sa.Column("id", sa.Integer(), autoincrement=True, nullable=False),
        sa.Column("dealer_id", sa.String(length=64), nullable=False),
        sa.Column("ref", sa.String(length=64), nullable=False),
        sa.Column("customer_id", sa.String(length=32), nullable=False),
        sa.Column("created_at", crm.schema.UTCDateTime(timezone=True), nullable=False),
        sa.ForeignKeyConstraint(["customer_id"], ["customers.id"]),
        sa.PrimaryKeyConstraint("id"),
        sa.UniqueConstraint("dealer_id", "ref", name="uq_customer_ref"),
    )
    op.create_index(
        op.f("ix_customer_refs_customer_id"), "customer_refs", ["customer_id"], unique=False
    )
    op.create_table(
        "service_records",
        sa.Column("id", sa.Integer(), autoincrement=True, nullable=False),
        sa.Column("vin", sa.String(length=17), nullable=False),
        sa.Column("service_date", sa.Date(), nullable=False),
        sa.Column("odometer_km", sa.Float(), nullable=False),
        sa.Column("work", sa.Text(), nullable=False),
        sa.Column("amount", sa.Numeric(precision=12, scale=2), nullable=True),
        sa.Column("source", sa.String(length=64), nullable=False),
        sa.Column("created_at", crm.schema.UTCDateTime(timezone=True), nullable=False),
        sa.ForeignKeyConstraint(["vin"], ["vehicles.vin"]),
        sa.PrimaryKeyConstraint("id"),
        sa.UniqueConstraint("vin", "service_date", name="uq_service_vin_date"),
    )
    op.create_index(op.f("ix_service_records_vin"), "service_records", ["vin"], unique=False)


def downgrade() -> None:
    op.drop_index(op.f("ix_service_records_vin"), table_name="service_records")
    op.drop_table("service_records")
    op.drop_index(op.f("ix_customer_refs_customer_id"), table_name="customer_refs")
    op.drop_table("customer_refs")
    with op.batch_alter_table("vehicles", schema=None) as batch_op:
        batch_op.drop_column("model_year")
