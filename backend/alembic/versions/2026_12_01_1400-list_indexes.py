"""List indexes: every list's filters and sort order served by an index

Revision ID: 0005
Revises: 0004
Create Date: 2026-12-01 14:00:00
"""

from collections.abc import Sequence

import sqlalchemy as sa

from alembic import op

revision: str = "0005"
down_revision: str | None = "0004"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

LIVE_USERS = sa.text("deleted_at IS NULL")


def upgrade() -> None:
    # Admins' appointment list (by start), and a staff member's (the blocked-range index serves
    # availability, not this order).
    op.create_index("ix_appointments_starts", "appointments", ["starts_at", "id"])
    op.create_index("ix_appointments_staff_starts", "appointments", ["staff_id", "starts_at", "id"])
    op.create_index("ix_audit_log_action_created", "audit_log", ["action", "created_at"])
    op.create_index("ix_users_created", "users", ["created_at", "id"], postgresql_where=LIVE_USERS)
    op.create_index("ix_users_role_created", "users", ["role", "created_at", "id"], postgresql_where=LIVE_USERS)
    op.create_index("ix_users_role_name", "users", ["role", "full_name", "id"])
    op.create_index("ix_services_name", "services", ["name", "id"])


def downgrade() -> None:
    op.drop_index("ix_services_name", table_name="services")
    op.drop_index("ix_users_role_name", table_name="users")
    op.drop_index("ix_users_role_created", table_name="users")
    op.drop_index("ix_users_created", table_name="users")
    op.drop_index("ix_audit_log_action_created", table_name="audit_log")
    op.drop_index("ix_appointments_staff_starts", table_name="appointments")
    op.drop_index("ix_appointments_starts", table_name="appointments")
