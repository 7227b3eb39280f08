"""lifecycle: claims, sweep bookkeeping, recovery points

Revision ID: 0003
Revises: 0002
Create Date: 2026-12-02 02:00:00.000000

Payments, refunds and withdrawals get the columns of DESIGN.md rule 7: `claimed_until` (a lease
held while a gateway call is in flight), and a sweep's per-record `attempts`, `next_attempt_at`
and `last_error`. The sweeps read `status, next_attempt_at`, which replaces the old
`status, updated_at` / `status, expires_at` indexes. `idempotency_keys.recovery_point` records how
far a request got (rule 9), and stored keys become their SHA-256 (a downgrade cannot undo that; the
service of the previous release would treat them as new keys). `refunds.gateway_payment_id` is the
charge a late-success refund gives back.
"""

from __future__ import annotations

import hashlib

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import mysql

UTC_DATETIME = sa.DateTime().with_variant(mysql.DATETIME(fsp=6), "mysql").with_variant(mysql.DATETIME(fsp=6), "mariadb")

revision = "0003"
down_revision = "0002"
branch_labels = None
depends_on = None

_TABLES = {
    "payments": ["ix_payments_status_updated", "ix_payments_status_expires"],
    "refunds": ["ix_refunds_status_updated"],
    "withdrawal_requests": ["ix_withdrawal_requests_status_updated"],
}


def upgrade() -> None:
    for table, old_indexes in _TABLES.items():
        with op.batch_alter_table(table, schema=None) as batch_op:
            batch_op.add_column(sa.Column("claimed_until", UTC_DATETIME, nullable=True))
            batch_op.add_column(sa.Column("attempts", sa.Integer(), server_default="0", nullable=False))
            batch_op.add_column(sa.Column("next_attempt_at", UTC_DATETIME, nullable=True))
            batch_op.add_column(sa.Column("last_error", sa.Text(), nullable=True))
            for name in old_indexes:
                batch_op.drop_index(name)
            batch_op.create_index(f"ix_{table}_status_next", ["status", "next_attempt_at"], unique=False)
    with op.batch_alter_table("refunds", schema=None) as batch_op:
        batch_op.add_column(sa.Column("gateway_payment_id", sa.String(length=64), nullable=True))
    # Records already open are due at once (a PENDING_3DS payment when it expires), as the old scans had it.
    op.execute("UPDATE payments SET next_attempt_at = COALESCE(expires_at, updated_at)")
    op.execute("UPDATE refunds SET next_attempt_at = updated_at")
    op.execute("UPDATE withdrawal_requests SET next_attempt_at = updated_at")
    with op.batch_alter_table("idempotency_keys", schema=None) as batch_op:
        batch_op.add_column(sa.Column("recovery_point", sa.String(length=16), server_default="STARTED", nullable=False))
    # From this release the service stores an Idempotency-Key only as its SHA-256 (a header value is
    # never stored as sent: it may hold anything, a card number included). Keys stored before are
    # hashed the same way, so a retry that straddles the deploy still finds its request.
    bind = op.get_bind()
    if bind.dialect.name in ("mysql", "mariadb"):
        op.execute("UPDATE idempotency_keys SET `key` = SHA2(`key`, 256)")
    else:
        rows = bind.execute(sa.text('SELECT id, "key" FROM idempotency_keys')).all()
        for row_id, key in rows:
            digest = hashlib.sha256(key.encode()).hexdigest()
            bind.execute(sa.text('UPDATE idempotency_keys SET "key" = :k WHERE id = :id'), {"k": digest, "id": row_id})


def downgrade() -> None:
    with op.batch_alter_table("idempotency_keys", schema=None) as batch_op:
        batch_op.drop_column("recovery_point")
    with op.batch_alter_table("refunds", schema=None) as batch_op:
        batch_op.drop_column("gateway_payment_id")
    old_columns = {
        "ix_payments_status_updated": ["status", "updated_at"],
        "ix_payments_status_expires": ["status", "expires_at"],
        "ix_refunds_status_updated": ["status", "updated_at"],
        "ix_withdrawal_requests_status_updated": ["status", "updated_at"],
    }
    for table, old_indexes in _TABLES.items():
        with op.batch_alter_table(table, schema=None) as batch_op:
            batch_op.drop_index(f"ix_{table}_status_next")
            for name in old_indexes:
                batch_op.create_index(name, old_columns[name], unique=False)
            for column in ("last_error", "next_attempt_at", "attempts", "claimed_until"):
                batch_op.drop_column(column)
