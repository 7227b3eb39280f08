"""settlement reconciliation runs (issue 13)

Revision ID: 0005
Revises: 0004
Create Date: 2026-12-02 04:30:00.000000

`reconcile_runs` holds one row per run of `payment-service reconcile-day` (and of the worker's nightly
job): the day and gateway, when it started and finished, what it compared, how many differences it
found and where its report is (the differences themselves too, the first thousand). `claim_key` is set
by the nightly job only (`nightly:<day>:<gateway>`), UNIQUE, so that one worker of many runs it.
A day's payments and refunds are read by creation time: `payments (gateway, created_at)` and
`refunds (created_at)` serve those reads without a table scan.
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import mysql

UTC_DATETIME = sa.DateTime().with_variant(mysql.DATETIME(fsp=6), "mysql").with_variant(mysql.DATETIME(fsp=6), "mariadb")
LONG_TEXT = sa.Text().with_variant(mysql.MEDIUMTEXT(), "mysql").with_variant(mysql.MEDIUMTEXT(), "mariadb")

revision = "0005"
down_revision = "0004"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "reconcile_runs",
        sa.Column("id", sa.BigInteger().with_variant(sa.Integer(), "sqlite"), autoincrement=True, nullable=False),
        sa.Column("day", sa.Date(), nullable=False),
        sa.Column("gateway", sa.String(length=16), nullable=False),
        sa.Column("trigger", sa.String(length=16), nullable=False),
        sa.Column("claim_key", sa.String(length=64), nullable=True),
        sa.Column("status", sa.String(length=16), nullable=False),
        sa.Column("started_at", UTC_DATETIME, nullable=False),
        sa.Column("finished_at", UTC_DATETIME, nullable=True),
        sa.Column("gateway_charges", sa.Integer(), nullable=True),
        sa.Column("gateway_refunds", sa.Integer(), nullable=True),
        sa.Column("our_payments", sa.Integer(), nullable=True),
        sa.Column("our_refunds", sa.Integer(), nullable=True),
        sa.Column("differences", sa.Integer(), nullable=True),
        sa.Column("report_location", sa.String(length=512), nullable=True),
        sa.Column("report", LONG_TEXT, nullable=True),
        sa.Column("error", sa.Text(), nullable=True),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_reconcile_runs")),
        sa.UniqueConstraint("claim_key", name=op.f("uq_reconcile_runs_claim_key")),
    )
    with op.batch_alter_table("reconcile_runs", schema=None) as batch_op:
        batch_op.create_index("ix_reconcile_runs_gateway_day", ["gateway", "day"], unique=False)
    with op.batch_alter_table("payments", schema=None) as batch_op:
        batch_op.create_index("ix_payments_gateway_created", ["gateway", "created_at"], unique=False)
    with op.batch_alter_table("refunds", schema=None) as batch_op:
        batch_op.create_index("ix_refunds_created", ["created_at"], unique=False)


def downgrade() -> None:
    with op.batch_alter_table("refunds", schema=None) as batch_op:
        batch_op.drop_index("ix_refunds_created")
    with op.batch_alter_table("payments", schema=None) as batch_op:
        batch_op.drop_index("ix_payments_gateway_created")
    with op.batch_alter_table("reconcile_runs", schema=None) as batch_op:
        batch_op.drop_index("ix_reconcile_runs_gateway_day")
    op.drop_table("reconcile_runs")
