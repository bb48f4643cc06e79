"""Email change: the address an email-change token confirms

Revision ID: 0004
Revises: 0002
Create Date: 2026-12-01 11:00:00
"""

from collections.abc import Sequence

import sqlalchemy as sa

from alembic import op

revision: str = "0004"
down_revision: str | None = "0003"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.add_column("action_tokens", sa.Column("new_email", sa.String(length=320), nullable=True))


def downgrade() -> None:
    op.drop_column("action_tokens", "new_email")
