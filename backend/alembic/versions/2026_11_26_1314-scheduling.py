"""scheduling

Revision ID: 0002
Revises: 0001
Create Date: 2026-11-26 13:14:54.033179+00:00
"""

from collections.abc import Sequence

import sqlalchemy as sa
from sqlalchemy.dialects import postgresql

from alembic import op

revision: str = "0002"
down_revision: str | None = "0001"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    # btree_gist lets one GiST index combine uuid equality with range overlap (the no-double-booking rule).
    op.execute("CREATE EXTENSION IF NOT EXISTS btree_gist")
    op.create_table(
        "services",
        sa.Column("name", sa.String(length=200), nullable=False),
        sa.Column("description", sa.Text(), nullable=False),
        sa.Column("duration_minutes", sa.Integer(), nullable=False),
        sa.Column("buffer_before_minutes", sa.Integer(), nullable=False),
        sa.Column("buffer_after_minutes", sa.Integer(), nullable=False),
        sa.Column("price", sa.Numeric(precision=10, scale=2), nullable=False),
        sa.Column("currency", sa.String(length=3), nullable=False),
        sa.Column("requires_confirmation", sa.Boolean(), nullable=False),
        sa.Column("min_notice_minutes", sa.Integer(), nullable=False),
        sa.Column("max_advance_days", sa.Integer(), nullable=False),
        sa.Column("is_active", sa.Boolean(), nullable=False),
        sa.Column("id", sa.Uuid(), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), server_default=sa.text("now()"), nullable=False),
        sa.Column("updated_at", sa.DateTime(timezone=True), server_default=sa.text("now()"), nullable=False),
        sa.CheckConstraint(
            "buffer_before_minutes >= 0 AND buffer_after_minutes >= 0", name=op.f("ck_services_buffers")
        ),
        sa.CheckConstraint("duration_minutes BETWEEN 5 AND 1440", name=op.f("ck_services_duration")),
        sa.CheckConstraint("max_advance_days BETWEEN 1 AND 730", name=op.f("ck_services_max_advance")),
        sa.CheckConstraint("min_notice_minutes >= 0", name=op.f("ck_services_min_notice")),
        sa.CheckConstraint("price >= 0", name=op.f("ck_services_price")),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_services")),
    )
    op.create_table(
        "appointment_series",
        sa.Column("rrule", sa.String(length=500), nullable=False),
        sa.Column("client_id", sa.Uuid(), nullable=False),
        sa.Column("staff_id", sa.Uuid(), nullable=False),
        sa.Column("service_id", sa.Uuid(), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), server_default=sa.text("now()"), nullable=False),
        sa.Column("id", sa.Uuid(), nullable=False),
        sa.ForeignKeyConstraint(["client_id"], ["users.id"], name=op.f("fk_appointment_series_client_id_users")),
        sa.ForeignKeyConstraint(
            ["service_id"], ["services.id"], name=op.f("fk_appointment_series_service_id_services")
        ),
        sa.ForeignKeyConstraint(["staff_id"], ["users.id"], name=op.f("fk_appointment_series_staff_id_users")),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_appointment_series")),
    )
    op.create_table(
        "audit_log",
        sa.Column("id", sa.BigInteger(), sa.Identity(always=False), nullable=False),
        sa.Column("actor_id", sa.Uuid(), nullable=True),
        sa.Column("action", sa.String(length=64), nullable=False),
        sa.Column("entity_type", sa.String(length=32), nullable=False),
        sa.Column("entity_id", sa.String(length=64), nullable=False),
        sa.Column("before", postgresql.JSONB(astext_type=sa.Text()), nullable=True),
        sa.Column("after", postgresql.JSONB(astext_type=sa.Text()), nullable=True),
        sa.Column("created_at", sa.DateTime(timezone=True), server_default=sa.text("now()"), nullable=False),
        sa.ForeignKeyConstraint(
            ["actor_id"], ["users.id"], name=op.f("fk_audit_log_actor_id_users"), ondelete="SET NULL"
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_audit_log")),
    )
    op.create_index(op.f("ix_audit_log_actor_id"), "audit_log", ["actor_id"], unique=False)
    op.create_index(op.f("ix_audit_log_created_at"), "audit_log", ["created_at"], unique=False)
    op.create_index("ix_audit_log_entity", "audit_log", ["entity_type", "entity_id"], unique=False)
    op.create_table(
        "date_overrides",
        sa.Column("staff_id", sa.Uuid(), nullable=False),
        sa.Column("date", sa.Date(), nullable=False),
        sa.Column("intervals", postgresql.JSONB(astext_type=sa.Text()), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), server_default=sa.text("now()"), nullable=False),
        sa.Column("id", sa.Uuid(), nullable=False),
        sa.ForeignKeyConstraint(
            ["staff_id"], ["users.id"], name=op.f("fk_date_overrides_staff_id_users"), ondelete="CASCADE"
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_date_overrides")),
    )
    op.create_index("uq_date_overrides_staff_date", "date_overrides", ["staff_id", "date"], unique=True)
    op.create_table(
        "service_staff",
        sa.Column("service_id", sa.Uuid(), nullable=False),
        sa.Column("staff_id", sa.Uuid(), nullable=False),
        sa.ForeignKeyConstraint(
            ["service_id"], ["services.id"], name=op.f("fk_service_staff_service_id_services"), ondelete="CASCADE"
        ),
        sa.ForeignKeyConstraint(
            ["staff_id"], ["users.id"], name=op.f("fk_service_staff_staff_id_users"), ondelete="CASCADE"
        ),
        sa.PrimaryKeyConstraint("service_id", "staff_id", name=op.f("pk_service_staff")),
    )
    op.create_index(op.f("ix_service_staff_staff_id"), "service_staff", ["staff_id"], unique=False)
    op.create_table(
        "staff_profiles",
        sa.Column("user_id", sa.Uuid(), nullable=False),
        sa.Column("timezone", sa.String(length=64), nullable=False),
        sa.Column("bio", sa.Text(), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), server_default=sa.text("now()"), nullable=False),
        sa.Column("updated_at", sa.DateTime(timezone=True), server_default=sa.text("now()"), nullable=False),
        sa.ForeignKeyConstraint(
            ["user_id"], ["users.id"], name=op.f("fk_staff_profiles_user_id_users"), ondelete="CASCADE"
        ),
        sa.PrimaryKeyConstraint("user_id", name=op.f("pk_staff_profiles")),
    )
    op.create_table(
        "time_off",
        sa.Column("staff_id", sa.Uuid(), nullable=False),
        sa.Column("starts_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("ends_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("reason", sa.String(length=500), nullable=True),
        sa.Column("created_at", sa.DateTime(timezone=True), server_default=sa.text("now()"), nullable=False),
        sa.Column("id", sa.Uuid(), nullable=False),
        sa.CheckConstraint("starts_at < ends_at", name=op.f("ck_time_off_order")),
        sa.ForeignKeyConstraint(
            ["staff_id"], ["users.id"], name=op.f("fk_time_off_staff_id_users"), ondelete="CASCADE"
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_time_off")),
    )
    op.create_index("ix_time_off_staff_range", "time_off", ["staff_id", "starts_at", "ends_at"], unique=False)
    op.create_table(
        "weekly_intervals",
        sa.Column("id", sa.BigInteger(), sa.Identity(always=False), nullable=False),
        sa.Column("staff_id", sa.Uuid(), nullable=False),
        sa.Column("weekday", sa.SmallInteger(), nullable=False),
        sa.Column("start_time", sa.Time(), nullable=False),
        sa.Column("end_time", sa.Time(), nullable=False),
        sa.CheckConstraint("start_time < end_time", name=op.f("ck_weekly_intervals_order")),
        sa.CheckConstraint("weekday BETWEEN 0 AND 6", name=op.f("ck_weekly_intervals_weekday")),
        sa.ForeignKeyConstraint(
            ["staff_id"], ["users.id"], name=op.f("fk_weekly_intervals_staff_id_users"), ondelete="CASCADE"
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_weekly_intervals")),
    )
    op.create_index("ix_weekly_intervals_staff_weekday", "weekly_intervals", ["staff_id", "weekday"], unique=False)
    op.create_table(
        "appointments",
        sa.Column("series_id", sa.Uuid(), nullable=True),
        sa.Column("client_id", sa.Uuid(), nullable=False),
        sa.Column("staff_id", sa.Uuid(), nullable=False),
        sa.Column("service_id", sa.Uuid(), nullable=False),
        sa.Column("starts_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("ends_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("blocked_from", sa.DateTime(timezone=True), nullable=False),
        sa.Column("blocked_until", sa.DateTime(timezone=True), nullable=False),
        sa.Column("status", sa.String(length=16), nullable=False),
        sa.Column("notes", sa.Text(), nullable=True),
        sa.Column("cancellation_reason", sa.String(length=500), nullable=True),
        sa.Column("cancelled_by", sa.Uuid(), nullable=True),
        sa.Column("sequence", sa.Integer(), nullable=False),
        sa.Column("id", sa.Uuid(), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), server_default=sa.text("now()"), nullable=False),
        sa.Column("updated_at", sa.DateTime(timezone=True), server_default=sa.text("now()"), nullable=False),
        postgresql.ExcludeConstraint(
            (sa.column("staff_id"), "="),
            (sa.text("tstzrange(blocked_from, blocked_until, '[)')"), "&&"),
            where=sa.text("status IN ('pending', 'confirmed')"),
            using="gist",
            name="no_double_booking",
        ),
        sa.CheckConstraint(
            "status IN ('pending', 'confirmed', 'completed', 'no_show', 'cancelled')",
            name=op.f("ck_appointments_status"),
        ),
        sa.CheckConstraint(
            "blocked_from <= starts_at AND blocked_until >= ends_at", name=op.f("ck_appointments_blocked_covers")
        ),
        sa.CheckConstraint("starts_at < ends_at", name=op.f("ck_appointments_order")),
        sa.ForeignKeyConstraint(["cancelled_by"], ["users.id"], name=op.f("fk_appointments_cancelled_by_users")),
        sa.ForeignKeyConstraint(["client_id"], ["users.id"], name=op.f("fk_appointments_client_id_users")),
        sa.ForeignKeyConstraint(
            ["series_id"], ["appointment_series.id"], name=op.f("fk_appointments_series_id_appointment_series")
        ),
        sa.ForeignKeyConstraint(["service_id"], ["services.id"], name=op.f("fk_appointments_service_id_services")),
        sa.ForeignKeyConstraint(["staff_id"], ["users.id"], name=op.f("fk_appointments_staff_id_users")),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_appointments")),
    )
    op.create_index("ix_appointments_client_starts", "appointments", ["client_id", "starts_at"], unique=False)
    op.create_index(op.f("ix_appointments_series_id"), "appointments", ["series_id"], unique=False)
    op.create_index(
        "ix_appointments_staff_blocked", "appointments", ["staff_id", "blocked_from", "blocked_until"], unique=False
    )
    op.create_table(
        "reminders",
        sa.Column("id", sa.BigInteger(), sa.Identity(always=False), nullable=False),
        sa.Column("appointment_id", sa.Uuid(), nullable=False),
        sa.Column("offset_minutes", sa.Integer(), nullable=False),
        sa.Column("due_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("sent_at", sa.DateTime(timezone=True), nullable=True),
        sa.ForeignKeyConstraint(
            ["appointment_id"],
            ["appointments.id"],
            name=op.f("fk_reminders_appointment_id_appointments"),
            ondelete="CASCADE",
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_reminders")),
    )
    op.create_index(
        "ix_reminders_due", "reminders", ["due_at"], unique=False, postgresql_where=sa.text("sent_at IS NULL")
    )
    op.create_index("uq_reminders_appointment_offset", "reminders", ["appointment_id", "offset_minutes"], unique=True)


def downgrade() -> None:
    op.drop_index("uq_reminders_appointment_offset", table_name="reminders")
    op.drop_index("ix_reminders_due", table_name="reminders", postgresql_where=sa.text("sent_at IS NULL"))
    op.drop_table("reminders")
    op.drop_index("ix_appointments_staff_blocked", table_name="appointments")
    op.drop_index(op.f("ix_appointments_series_id"), table_name="appointments")
    op.drop_index("ix_appointments_client_starts", table_name="appointments")
    op.drop_table("appointments")
    op.drop_index("ix_weekly_intervals_staff_weekday", table_name="weekly_intervals")
    op.drop_table("weekly_intervals")
    op.drop_index("ix_time_off_staff_range", table_name="time_off")
    op.drop_table("time_off")
    op.drop_table("staff_profiles")
    op.drop_index(op.f("ix_service_staff_staff_id"), table_name="service_staff")
    op.drop_table("service_staff")
    op.drop_index("uq_date_overrides_staff_date", table_name="date_overrides")
    op.drop_table("date_overrides")
    op.drop_index("ix_audit_log_entity", table_name="audit_log")
    op.drop_index(op.f("ix_audit_log_created_at"), table_name="audit_log")
    op.drop_index(op.f("ix_audit_log_actor_id"), table_name="audit_log")
    op.drop_table("audit_log")
    op.drop_table("appointment_series")
    op.drop_table("services")
