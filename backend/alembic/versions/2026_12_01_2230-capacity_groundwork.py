"""Capacity groundwork: a service's seats per session, and the session key that lets seats of one
session share the staff member's time (and nothing else)

Revision ID: 0012
Revises: 0011
Create Date: 2026-12-01 22:30:00
"""

from collections.abc import Sequence

import sqlalchemy as sa

from alembic import op

revision: str = "0012"
down_revision: str | None = "0011"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

_LIVE = "status IN ('pending', 'confirmed')"
_BLOCKED = "tstzrange(blocked_from, blocked_until, '[)')"


def upgrade() -> None:
    op.add_column("services", sa.Column("capacity", sa.Integer(), server_default="1", nullable=False))
    op.create_check_constraint(op.f("ck_services_capacity"), "services", "capacity BETWEEN 1 AND 1000")
    op.add_column("appointments", sa.Column("session_key", sa.Uuid(), nullable=True))
    op.drop_constraint("no_double_booking", "appointments")
    op.execute(
        "ALTER TABLE appointments ADD CONSTRAINT no_double_booking EXCLUDE USING gist (staff_id WITH =,"
        f" {_BLOCKED} WITH &&, (coalesce(session_key, id)) WITH <>) WHERE ({_LIVE})"
    )


def downgrade() -> None:
    # Fails (as it should) while two live seats of one session exist: cancel them first.
    op.drop_constraint("no_double_booking", "appointments")
    op.execute(
        "ALTER TABLE appointments ADD CONSTRAINT no_double_booking EXCLUDE USING gist (staff_id WITH =,"
        f" {_BLOCKED} WITH &&) WHERE ({_LIVE})"
    )
    op.drop_column("appointments", "session_key")
    op.drop_constraint(op.f("ck_services_capacity"), "services")
    op.drop_column("services", "capacity")
