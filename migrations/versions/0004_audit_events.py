"""audit trail (issue 12): append-only audit_events with an HMAC chain; signing secrets for service clients

Revision ID: 0004
Revises: 0003
Create Date: 2026-12-02 04:30:00.000000

Placeholder in the chain until its issue fills it in.
"""

from __future__ import annotations

revision = "0004"
down_revision = "0003"
branch_labels = None
depends_on = None


def upgrade() -> None:
    pass


def downgrade() -> None:
    pass
