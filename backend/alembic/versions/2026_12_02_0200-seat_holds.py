"""Seat holds: a waitlist offer of a group session service holds one seat of its session

Revision ID: 0017
Revises: 0016
Create Date: 2026-12-02 02:00:00
"""

from collections.abc import Sequence

import sqlalchemy as sa

from alembic import op

revision: str = "0017"
down_revision: str | None = "0016"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.add_column("waitlist_offers", sa.Column("session_key", sa.Uuid(), nullable=True))
    op.create_index(
        "ix_waitlist_offers_session", "waitlist_offers", ["session_key"], postgresql_where=sa.text("status = 'offered'")
    )


def downgrade() -> None:
    op.drop_index("ix_waitlist_offers_session", table_name="waitlist_offers")
    op.drop_column("waitlist_offers", "session_key")
