"""settlement reconciliation runs (issue 13)

Revision ID: 0005
Revises: 0004
Create Date: 2026-12-02 04:30:00.000000

Placeholder in the chain until its issue fills it in.
"""

from __future__ import annotations

revision = "0005"
down_revision = "0004"
branch_labels = None
depends_on = None


def upgrade() -> None:
    pass


def downgrade() -> None:
    pass
