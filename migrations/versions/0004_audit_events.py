"""audit trail (issue 12): append-only audit_events with an HMAC chain; signing secrets for service clients

Revision ID: 0004
Revises: 0003
Create Date: 2026-12-02 04:30:00.000000

`audit_events`: one row per mutation, rejected mutation and state change; `seq`, `prev_hash` and `hash`
are filled once, by the sealer, which chains rows in `seq` order (payment_service/adapters/audit_store.py).
`audit_chain`: the chain's head and, after a purge, its anchor (one row, id 1).
`api_clients.require_signing`, `api_signing_secrets` (a salt per secret, never the secret) and
`request_signatures` (signatures seen, for replay refusal) serve signed requests (docs/auth.md).
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import mysql

UTC_DATETIME = sa.DateTime().with_variant(mysql.DATETIME(fsp=6), "mysql").with_variant(mysql.DATETIME(fsp=6), "mariadb")
AUTO_ID = sa.BigInteger().with_variant(sa.Integer(), "sqlite")

revision = "0004"
down_revision = "0003"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "audit_events",
        sa.Column("id", AUTO_ID, autoincrement=True, nullable=False),
        sa.Column("occurred_at", UTC_DATETIME, nullable=False),
        sa.Column("actor", sa.String(length=100), nullable=False),
        sa.Column("actor_key_prefix", sa.String(length=16), nullable=True),
        sa.Column("action", sa.String(length=64), nullable=False),
        sa.Column("resource_type", sa.String(length=32), nullable=True),
        sa.Column("resource_id", sa.String(length=64), nullable=True),
        sa.Column("outcome", sa.String(length=16), nullable=False),
        sa.Column("http_status", sa.Integer(), nullable=True),
        sa.Column("request_id", sa.String(length=128), nullable=True),
        sa.Column("source", sa.String(length=45), nullable=True),
        sa.Column("summary", sa.String(length=255), nullable=False),
        sa.Column("seq", sa.BigInteger(), nullable=True),
        sa.Column("prev_hash", sa.String(length=64), nullable=True),
        sa.Column("hash", sa.String(length=64), nullable=True),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_audit_events")),
        sa.UniqueConstraint("seq", name=op.f("uq_audit_events_seq")),
    )
    op.create_index("ix_audit_events_resource", "audit_events", ["resource_id", "id"])
    op.create_index("ix_audit_events_actor", "audit_events", ["actor", "id"])
    op.create_index("ix_audit_events_occurred", "audit_events", ["occurred_at", "id"])
    op.create_table(
        "audit_chain",
        sa.Column("id", sa.Integer(), autoincrement=False, nullable=False),
        sa.Column("last_seq", sa.BigInteger(), nullable=False),
        sa.Column("last_hash", sa.String(length=64), nullable=False),
        sa.Column("anchor_seq", sa.BigInteger(), nullable=False),
        sa.Column("anchor_hash", sa.String(length=64), nullable=False),
        sa.Column("mac", sa.String(length=64), nullable=True),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_audit_chain")),
    )
    genesis = "0" * 64
    op.execute(
        sa.text(
            "INSERT INTO audit_chain (id, last_seq, last_hash, anchor_seq, anchor_hash, mac) "
            "VALUES (1, 0, :g, 0, :g, NULL)"
        ).bindparams(g=genesis)
    )
    with op.batch_alter_table("api_clients", schema=None) as batch_op:
        batch_op.add_column(sa.Column("require_signing", sa.Boolean(), nullable=False, server_default=sa.false()))
    op.create_table(
        "api_signing_secrets",
        sa.Column("id", AUTO_ID, autoincrement=True, nullable=False),
        sa.Column("client_id", sa.String(length=40), nullable=False),
        sa.Column("prefix", sa.String(length=16), nullable=False),
        sa.Column("salt", sa.String(length=64), nullable=False),
        sa.Column("created_at", UTC_DATETIME, nullable=False),
        sa.Column("expires_at", UTC_DATETIME, nullable=True),
        sa.Column("revoked_at", UTC_DATETIME, nullable=True),
        sa.ForeignKeyConstraint(
            ["client_id"], ["api_clients.id"], name=op.f("fk_api_signing_secrets_client_id_api_clients")
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_api_signing_secrets")),
    )
    op.create_index("ix_api_signing_secrets_client", "api_signing_secrets", ["client_id"])
    op.create_table(
        "request_signatures",
        sa.Column("signature_hash", sa.String(length=64), nullable=False),
        sa.Column("client_id", sa.String(length=40), nullable=False),
        sa.Column("expires_at", UTC_DATETIME, nullable=False),
        sa.PrimaryKeyConstraint("signature_hash", name=op.f("pk_request_signatures")),
    )
    op.create_index("ix_request_signatures_expires", "request_signatures", ["expires_at"])


def downgrade() -> None:
    op.drop_index("ix_request_signatures_expires", table_name="request_signatures")
    op.drop_table("request_signatures")
    op.drop_table("api_signing_secrets")  # with its index (MySQL keeps an index a foreign key needs)
    with op.batch_alter_table("api_clients", schema=None) as batch_op:
        batch_op.drop_column("require_signing")
    op.drop_table("audit_chain")
    op.drop_index("ix_audit_events_occurred", table_name="audit_events")
    op.drop_index("ix_audit_events_actor", table_name="audit_events")
    op.drop_index("ix_audit_events_resource", table_name="audit_events")
    op.drop_table("audit_events")
