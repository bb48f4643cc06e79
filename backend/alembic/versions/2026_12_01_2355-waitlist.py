"""Waitlist: clients waiting for a slot of a service, and the offers that hold a freed slot for one of them

Revision ID: 0016
Revises: 0015
Create Date: 2026-12-01 23:00:00
"""

from collections.abc import Sequence

import sqlalchemy as sa

from alembic import op

revision: str = "0016"
down_revision: str | None = "0015"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

_ENTRY = "'waiting', 'offered', 'booked', 'expired', 'declined', 'left'"
_OFFER = "'offered', 'claimed', 'declined', 'expired', 'withdrawn'"


def _timestamps() -> list[sa.Column]:
    return [
        sa.Column("created_at", sa.DateTime(timezone=True), server_default=sa.text("now()"), nullable=False),
        sa.Column("updated_at", sa.DateTime(timezone=True), server_default=sa.text("now()"), nullable=False),
    ]


def _user(table: str, column: str, nullable: bool = False) -> tuple[sa.Column, sa.ForeignKeyConstraint]:
    return sa.Column(column, sa.Uuid(), nullable=nullable), sa.ForeignKeyConstraint(
        [column], ["users.id"], name=op.f(f"fk_{table}_{column}_users"), ondelete="CASCADE"
    )


def upgrade() -> None:
    client, client_fk = _user("waitlist_entries", "client_id")
    staff, staff_fk = _user("waitlist_entries", "staff_id", nullable=True)
    op.create_table(
        "waitlist_entries",
        sa.Column("id", sa.Uuid(), nullable=False),
        client,
        sa.Column("service_id", sa.Uuid(), nullable=False),
        staff,
        sa.Column("first_date", sa.Date(), nullable=False),
        sa.Column("last_date", sa.Date(), nullable=False),
        sa.Column("earliest_time", sa.Time(), nullable=False),
        sa.Column("latest_time", sa.Time(), nullable=False),
        sa.Column("timezone", sa.String(length=64), nullable=False),
        sa.Column("status", sa.String(length=16), nullable=False),
        *_timestamps(),
        sa.CheckConstraint(f"status IN ({_ENTRY})", name=op.f("ck_waitlist_entries_status")),
        sa.CheckConstraint("first_date <= last_date", name=op.f("ck_waitlist_entries_dates")),
        sa.CheckConstraint("earliest_time < latest_time", name=op.f("ck_waitlist_entries_times")),
        client_fk,
        staff_fk,
        sa.ForeignKeyConstraint(
            ["service_id"], ["services.id"], name=op.f("fk_waitlist_entries_service_id_services"), ondelete="CASCADE"
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_waitlist_entries")),
    )
    op.create_index(
        "ix_waitlist_entries_service_queue",
        "waitlist_entries",
        ["service_id", "created_at", "id"],
        postgresql_where=sa.text("status = 'waiting'"),
    )
    op.create_index("ix_waitlist_entries_client", "waitlist_entries", ["client_id", "created_at"])

    client, client_fk = _user("waitlist_offers", "client_id")
    staff, staff_fk = _user("waitlist_offers", "staff_id")
    op.create_table(
        "waitlist_offers",
        sa.Column("id", sa.Uuid(), nullable=False),
        sa.Column("entry_id", sa.Uuid(), nullable=False),
        client,
        staff,
        sa.Column("service_id", sa.Uuid(), nullable=False),
        sa.Column("starts_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("ends_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("blocked_from", sa.DateTime(timezone=True), nullable=False),
        sa.Column("blocked_until", sa.DateTime(timezone=True), nullable=False),
        sa.Column("expires_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("status", sa.String(length=16), nullable=False),
        sa.Column("appointment_id", sa.Uuid(), nullable=True),
        *_timestamps(),
        sa.CheckConstraint(f"status IN ({_OFFER})", name=op.f("ck_waitlist_offers_status")),
        sa.CheckConstraint(
            "blocked_from <= starts_at AND blocked_until >= ends_at", name=op.f("ck_waitlist_offers_blocked_covers")
        ),
        client_fk,
        staff_fk,
        sa.ForeignKeyConstraint(
            ["entry_id"],
            ["waitlist_entries.id"],
            name=op.f("fk_waitlist_offers_entry_id_waitlist_entries"),
            ondelete="CASCADE",
        ),
        sa.ForeignKeyConstraint(
            ["service_id"], ["services.id"], name=op.f("fk_waitlist_offers_service_id_services"), ondelete="CASCADE"
        ),
        sa.ForeignKeyConstraint(
            ["appointment_id"],
            ["appointments.id"],
            name=op.f("fk_waitlist_offers_appointment_id_appointments"),
            ondelete="SET NULL",
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_waitlist_offers")),
    )
    op.create_index(
        "ix_waitlist_offers_staff_blocked",
        "waitlist_offers",
        ["staff_id", "blocked_from", "blocked_until"],
        postgresql_where=sa.text("status = 'offered'"),
    )
    op.create_index(
        "ix_waitlist_offers_expiry", "waitlist_offers", ["expires_at"], postgresql_where=sa.text("status = 'offered'")
    )
    op.create_index("ix_waitlist_offers_entry", "waitlist_offers", ["entry_id"])
    op.create_index("ix_waitlist_offers_client", "waitlist_offers", ["client_id"])


def downgrade() -> None:
    op.drop_table("waitlist_offers")
    op.drop_table("waitlist_entries")
