"""canonical amounts and FX rates (issue 13)

Revision ID: 0006
Revises: 0005
Create Date: 2026-12-02 04:30:00.000000

Placeholder in the chain until its issue fills it in.
"""

from __future__ import annotations

revision = "0006"
down_revision = "0005"
branch_labels = None
depends_on = None


def upgrade() -> None:
    pass


def downgrade() -> None:
    pass
