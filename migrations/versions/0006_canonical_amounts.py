"""canonical amounts and FX rates (issue 13)

Revision ID: 0006
Revises: 0005
Create Date: 2026-12-02 04:30:00.000000

Payments, refunds and withdrawals record their amount in CANONICAL_CURRENCY (minor units), the rate
used (units of the canonical currency per unit of the record's, DECIMAL(38, 20); its exact text on
SQLite, which has no decimal type) and the rate's reference time. All nullable: records made before
this release, and records made while no fresh rate was available, have none (docs/amounts.md).
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import mysql

UTC_DATETIME = sa.DateTime().with_variant(mysql.DATETIME(fsp=6), "mysql").with_variant(mysql.DATETIME(fsp=6), "mariadb")
FX_RATE = (
    sa.String(length=40)
    .with_variant(mysql.DECIMAL(precision=38, scale=20), "mysql")
    .with_variant(mysql.DECIMAL(precision=38, scale=20), "mariadb")
)

revision = "0006"
down_revision = "0005"
branch_labels = None
depends_on = None

_TABLES = ("payments", "refunds", "withdrawal_requests")


def upgrade() -> None:
    for table in _TABLES:
        with op.batch_alter_table(table, schema=None) as batch_op:
            batch_op.add_column(sa.Column("canonical_amount", sa.BigInteger(), nullable=True))
            batch_op.add_column(sa.Column("canonical_currency", sa.String(length=3), nullable=True))
            batch_op.add_column(sa.Column("fx_rate", FX_RATE, nullable=True))
            batch_op.add_column(sa.Column("fx_rate_at", UTC_DATETIME, nullable=True))


def downgrade() -> None:
    for table in _TABLES:
        with op.batch_alter_table(table, schema=None) as batch_op:
            batch_op.drop_column("fx_rate_at")
            batch_op.drop_column("fx_rate")
            batch_op.drop_column("canonical_currency")
            batch_op.drop_column("canonical_amount")
