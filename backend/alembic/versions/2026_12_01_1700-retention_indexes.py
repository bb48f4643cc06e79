"""Retention indexes: each purge batch is an index scan on the column its age is counted from

Revision ID: 0008
Revises: 0007
Create Date: 2026-12-01 17:00:00
"""

from collections.abc import Sequence

import sqlalchemy as sa

from alembic import op

revision: str = "0008"
down_revision: str | None = "0007"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

INDEXES = [
    ("ix_outbox_sent_at", "outbox", "sent_at", "sent_at IS NOT NULL"),
    ("ix_outbox_failed_at", "outbox", "failed_at", "failed_at IS NOT NULL"),
    ("ix_action_tokens_used_at", "action_tokens", "used_at", "used_at IS NOT NULL"),
    ("ix_action_tokens_expires_at", "action_tokens", "expires_at", None),
    ("ix_reminders_sent_at", "reminders", "sent_at", "sent_at IS NOT NULL"),
    ("ix_users_unverified", "users", "created_at", "email_verified_at IS NULL AND deleted_at IS NULL"),
]


def upgrade() -> None:
    for name, table, column, where in INDEXES:
        op.create_index(name, table, [column], postgresql_where=sa.text(where) if where else None)


def downgrade() -> None:
    for name, table, _, _ in reversed(INDEXES):
        op.drop_index(name, table_name=table)
