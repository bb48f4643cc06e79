"""Booking limits: a client's bookings of a service per day, week and month and the least gap
between them; a staff member's appointments per day

Revision ID: 0015
Revises: 0014
Create Date: 2026-12-01 23:00:00
"""

from collections.abc import Sequence

import sqlalchemy as sa

from alembic import op

revision: str = "0015"
down_revision: str | None = "0014"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

_CLIENT_LIMITS = (
    "max_bookings_per_client_day",
    "max_bookings_per_client_week",
    "max_bookings_per_client_month",
    "min_gap_minutes",
)


def upgrade() -> None:
    for column in _CLIENT_LIMITS:
        op.add_column("services", sa.Column(column, sa.Integer(), nullable=True))
    op.create_check_constraint(
        op.f("ck_services_client_limits"),
        "services",
        "max_bookings_per_client_day BETWEEN 1 AND 1000 AND max_bookings_per_client_week BETWEEN 1 AND 1000"
        " AND max_bookings_per_client_month BETWEEN 1 AND 1000 AND min_gap_minutes BETWEEN 1 AND 525600",
    )
    op.add_column("staff_profiles", sa.Column("max_appointments_per_day", sa.Integer(), nullable=True))
    op.create_check_constraint(
        op.f("ck_staff_profiles_daily_limit"), "staff_profiles", "max_appointments_per_day BETWEEN 1 AND 1000"
    )


def downgrade() -> None:
    op.drop_constraint(op.f("ck_staff_profiles_daily_limit"), "staff_profiles")
    op.drop_column("staff_profiles", "max_appointments_per_day")
    op.drop_constraint(op.f("ck_services_client_limits"), "services")
    for column in reversed(_CLIENT_LIMITS):
        op.drop_column("services", column)
