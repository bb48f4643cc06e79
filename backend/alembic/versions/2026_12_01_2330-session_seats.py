"""Group session seats: each live seat of a session holds its own number, one per client

Revision ID: 0013
Revises: 0012
Create Date: 2026-12-01 23:30:00
"""

from collections.abc import Sequence

import sqlalchemy as sa

from alembic import op

revision: str = "0013"
down_revision: str | None = "0012"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

_LIVE = "status IN ('pending', 'confirmed')"


def upgrade() -> None:
    op.add_column("appointments", sa.Column("seat", sa.Integer(), nullable=True))
    op.create_check_constraint(op.f("ck_appointments_seat"), "appointments", "seat >= 1")
    op.create_check_constraint(
        op.f("ck_appointments_seat_of_session"), "appointments", "(session_key IS NULL) = (seat IS NULL)"
    )
    op.create_index(
        "uq_appointments_session_seat",
        "appointments",
        ["session_key", "seat"],
        unique=True,
        postgresql_where=sa.text(_LIVE),
    )
    op.create_index(
        "uq_appointments_session_client",
        "appointments",
        ["session_key", "client_id"],
        unique=True,
        postgresql_where=sa.text(_LIVE),
    )


def downgrade() -> None:
    op.drop_index("uq_appointments_session_client", "appointments")
    op.drop_index("uq_appointments_session_seat", "appointments")
    op.drop_constraint(op.f("ck_appointments_seat_of_session"), "appointments")
    op.drop_constraint(op.f("ck_appointments_seat"), "appointments")
    op.drop_column("appointments", "seat")
