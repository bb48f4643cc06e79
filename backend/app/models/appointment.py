import enum
import uuid
from datetime import datetime

from sqlalchemy import BigInteger, CheckConstraint, ForeignKey, Identity, Index, String, Text, func, text
from sqlalchemy.dialects.postgresql import ExcludeConstraint
from sqlalchemy.orm import Mapped, mapped_column

from app.models.base import Base, Timestamps, UUIDPk


class AppointmentStatus(enum.StrEnum):
    pending = "pending"
    confirmed = "confirmed"
    completed = "completed"
    no_show = "no_show"
    cancelled = "cancelled"


# The one definition of "live": holds its time, blocks the calendar, gets reminders, can be cancelled.
LIVE_STATUSES = (AppointmentStatus.pending, AppointmentStatus.confirmed)


def live_status_sql(column: str = "status") -> str:
    """`status IN ('pending', 'confirmed')` as SQL text: a literal list, not bound parameters, so the
    planner can match the exclusion constraint's partial GiST index (whose predicate is this text)."""
    return f"{column} IN ({', '.join(repr(s.value) for s in LIVE_STATUSES)})"


class AppointmentSeries(UUIDPk, Base):
    __tablename__ = "appointment_series"

    rrule: Mapped[str] = mapped_column(String(500))
    client_id: Mapped[uuid.UUID] = mapped_column(ForeignKey("users.id"))
    staff_id: Mapped[uuid.UUID] = mapped_column(ForeignKey("users.id"))
    service_id: Mapped[uuid.UUID] = mapped_column(ForeignKey("services.id"))
    created_at: Mapped[datetime] = mapped_column(server_default=func.now())


class Appointment(UUIDPk, Timestamps, Base):
    """A booking. `blocked_*` is the time the staff member is taken, buffers included.

    The exclusion constraint makes two overlapping live bookings of one staff member impossible,
    whatever the concurrency: the database, not the application, is the guarantee. The one
    exception is seats of one group session, which share a `session_key`; every other booking has
    none and counts as its own session (`coalesce(session_key, id)`), so it clashes with anything
    overlapping it.
    """

    __tablename__ = "appointments"
    __table_args__ = (
        ExcludeConstraint(
            ("staff_id", "="),
            (text("tstzrange(blocked_from, blocked_until, '[)')"), "&&"),
            (text("coalesce(session_key, id)"), "<>"),
            name="no_double_booking",
            using="gist",
            where=text(live_status_sql()),
        ),
        # The same guarantee for the resource a booking takes (rooms, chairs: `models.resource`).
        ExcludeConstraint(
            ("resource_id", "="),
            (text("tstzrange(blocked_from, blocked_until, '[)')"), "&&"),
            (text("coalesce(session_key, id)"), "<>"),
            name="no_resource_double_booking",
            using="gist",
            where=text(f"{live_status_sql()} AND resource_id IS NOT NULL"),
        ),
        CheckConstraint("starts_at < ends_at", name="order"),
        CheckConstraint("blocked_from <= starts_at AND blocked_until >= ends_at", name="blocked_covers"),
        CheckConstraint("status IN ('pending', 'confirmed', 'completed', 'no_show', 'cancelled')", name="status"),
        Index("ix_appointments_staff_blocked", "staff_id", "blocked_from", "blocked_until"),
        Index("ix_appointments_client_starts", "client_id", "starts_at"),
        # The lists' order: admins' (every appointment) and a staff member's.
        Index("ix_appointments_starts", "starts_at", "id"),
        Index("ix_appointments_staff_starts", "staff_id", "starts_at", "id"),
        # A group session's live seats hold distinct numbers (1..capacity, chosen under the session
        # lock: `booking.seats`); the index also serves counting a session's seats.
        CheckConstraint("seat >= 1", name="seat"),
        CheckConstraint("(session_key IS NULL) = (seat IS NULL)", name="seat_of_session"),
        Index(
            "uq_appointments_session_seat",
            "session_key",
            "seat",
            unique=True,
            postgresql_where=text(live_status_sql()),
        ),
        # One live seat per client and session.
        Index(
            "uq_appointments_session_client",
            "session_key",
            "client_id",
            unique=True,
            postgresql_where=text(live_status_sql()),
        ),
    )

    series_id: Mapped[uuid.UUID | None] = mapped_column(ForeignKey("appointment_series.id"), index=True)
    client_id: Mapped[uuid.UUID] = mapped_column(ForeignKey("users.id"))
    staff_id: Mapped[uuid.UUID] = mapped_column(ForeignKey("users.id"))
    service_id: Mapped[uuid.UUID] = mapped_column(ForeignKey("services.id"))
    starts_at: Mapped[datetime]
    ends_at: Mapped[datetime]
    blocked_from: Mapped[datetime]
    blocked_until: Mapped[datetime]
    status: Mapped[str] = mapped_column(String(16))
    notes: Mapped[str | None] = mapped_column(Text)
    cancellation_reason: Mapped[str | None] = mapped_column(String(500))
    cancelled_by: Mapped[uuid.UUID | None] = mapped_column(ForeignKey("users.id"))
    # RFC 5545 SEQUENCE: bumped by every change a calendar should pick up (move, cancel).
    sequence: Mapped[int] = mapped_column(default=0)
    # Seats of one group session share it; any other booking has none (see the class doc).
    session_key: Mapped[uuid.UUID | None]
    seat: Mapped[int | None]  # the seat's number in its session (with `session_key`)
    # The resource it takes when its service needs one (kept as history if the resource is deleted: NULL).
    resource_id: Mapped[uuid.UUID | None] = mapped_column(ForeignKey("resources.id", ondelete="SET NULL"))


class Reminder(Base):
    """One reminder per (appointment, offset); the cron claims due rows with FOR UPDATE SKIP LOCKED."""

    __tablename__ = "reminders"
    __table_args__ = (
        Index("uq_reminders_appointment_offset", "appointment_id", "offset_minutes", unique=True),
        Index("ix_reminders_due", "due_at", postgresql_where=text("sent_at IS NULL")),
        Index("ix_reminders_sent_at", "sent_at", postgresql_where=text("sent_at IS NOT NULL")),  # retention
    )

    id: Mapped[int] = mapped_column(BigInteger, Identity(), primary_key=True)
    appointment_id: Mapped[uuid.UUID] = mapped_column(ForeignKey("appointments.id", ondelete="CASCADE"))
    offset_minutes: Mapped[int]
    due_at: Mapped[datetime]
    sent_at: Mapped[datetime | None]
