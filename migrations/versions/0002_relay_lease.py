"""relay lease; outbox quarantine

Revision ID: 0002
Revises: 0001
Create Date: 2026-11-22 10:00:00.000000

`relay_leases` elects the one outbox relay that publishes (payment_service/worker/relay.py);
`outbox_events.quarantined_at` / `last_error` set aside rows that can never be published.
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import mysql

# Times are naive UTC; DATETIME(6) keeps microseconds on MySQL and MariaDB.
UTC_DATETIME = sa.DateTime().with_variant(mysql.DATETIME(fsp=6), "mysql").with_variant(mysql.DATETIME(fsp=6), "mariadb")

revision = "0002"
down_revision = "0001"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "relay_leases",
        sa.Column("name", sa.String(length=64), nullable=False),
        sa.Column("holder", sa.String(length=128), nullable=True),
        sa.Column("expires_at", UTC_DATETIME, nullable=False),
        sa.Column("fencing", sa.BigInteger(), nullable=False),
        sa.PrimaryKeyConstraint("name", name=op.f("pk_relay_leases")),
    )
    # Nullable columns: an instant change on MySQL 8 / MariaDB, no table rebuild.
    with op.batch_alter_table("outbox_events", schema=None) as batch_op:
        batch_op.add_column(sa.Column("quarantined_at", UTC_DATETIME, nullable=True))
        batch_op.add_column(sa.Column("last_error", sa.Text(), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("outbox_events", schema=None) as batch_op:
        batch_op.drop_column("last_error")
        batch_op.drop_column("quarantined_at")
    op.drop_table("relay_leases")
