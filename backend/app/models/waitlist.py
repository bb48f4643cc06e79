import enum
import uuid
from collections.abc import Collection
from datetime import date, datetime, time

from sqlalchemy import CheckConstraint, ColumnElement, Date, ForeignKey, Index, String, Time, and_, func, text
from sqlalchemy.orm import Mapped, mapped_column

from app.models.base import Base, UUIDPk


class WaitlistStatus(enum.StrEnum):
    waiting = "waiting"  # in the queue for a slot
    offered = "offered"  # holds an offer (`WaitlistOffer`)
    booked = "booked"  # claimed its offer, or booked the service some other way
    expired = "expired"  # its offer ran out unclaimed, or its window passed
    declined = "declined"  # declined its offer
    left = "left"  # left the waitlist


class OfferStatus(enum.StrEnum):
    offered = "offered"  # holding the slot until `expires_at`
    claimed = "claimed"
    declined = "declined"
    expired = "expired"
    withdrawn = "withdrawn"  # its entry closed meanwhile (booked elsewhere, left, account erased)


OPEN_ENTRY_STATUSES = (WaitlistStatus.waiting, WaitlistStatus.offered)


def _in(column: str, values: type[enum.StrEnum]) -> str:
    return f"{column} IN ({', '.join(repr(v.value) for v in values)})"


def live_hold_sql(table: str = "waitlist_offers") -> str:
    """SQL text: an offer still holding its slot (a hold blocks the slot like a booking)."""
    return f"{table}.status = '{OfferStatus.offered.value}' AND {table}.expires_at > now()"


def live_seat_holds(keys: Collection[uuid.UUID]) -> ColumnElement[bool]:
    """Offers still holding a seat of one of these group sessions (each takes one seat of it)."""
    return and_(WaitlistOffer.session_key.in_(list(keys)), text(live_hold_sql()))


class WaitlistEntry(UUIDPk, Base):
    """A client waiting for a slot of a service (with one staff member, or any) whose start lies in
    [first_date, last_date] and which lies within [earliest_time, latest_time], in `timezone`'s
    local time. The queue's order is (created_at, id)."""

    __tablename__ = "waitlist_entries"
    __table_args__ = (
        CheckConstraint(_in("status", WaitlistStatus), name="status"),
        CheckConstraint("first_date <= last_date", name="dates"),
        CheckConstraint("earliest_time < latest_time", name="times"),
        Index(
            "ix_waitlist_entries_service_queue",
            "service_id",
            "created_at",
            "id",
            postgresql_where=text("status = 'waiting'"),
        ),
        Index("ix_waitlist_entries_client", "client_id", "created_at"),
    )

    client_id: Mapped[uuid.UUID] = mapped_column(ForeignKey("users.id", ondelete="CASCADE"))
    service_id: Mapped[uuid.UUID] = mapped_column(ForeignKey("services.id", ondelete="CASCADE"))
    staff_id: Mapped[uuid.UUID | None] = mapped_column(ForeignKey("users.id", ondelete="CASCADE"))
    first_date: Mapped[date] = mapped_column(Date)
    last_date: Mapped[date] = mapped_column(Date)
    earliest_time: Mapped[time] = mapped_column(Time)
    latest_time: Mapped[time] = mapped_column(Time)
    timezone: Mapped[str] = mapped_column(String(64))
    status: Mapped[str] = mapped_column(String(16), default=WaitlistStatus.waiting.value)
    created_at: Mapped[datetime] = mapped_column(server_default=func.now())
    updated_at: Mapped[datetime] = mapped_column(server_default=func.now(), onupdate=func.now())


class WaitlistOffer(UUIDPk, Base):
    """A slot held for one waiter until `expires_at`: while `offered` and unexpired it blocks
    `[blocked_from, blocked_until)` of the staff member's calendar exactly like a booking. Of a
    group session service it holds one seat of the session `session_key` (`booking.seats`): a seat
    taken like a booked one, and like one it leaves the session's time free for its other seats."""

    __tablename__ = "waitlist_offers"
    __table_args__ = (
        CheckConstraint(_in("status", OfferStatus), name="status"),
        CheckConstraint("blocked_from <= starts_at AND blocked_until >= ends_at", name="blocked_covers"),
        Index(
            "ix_waitlist_offers_staff_blocked",
            "staff_id",
            "blocked_from",
            "blocked_until",
            postgresql_where=text("status = 'offered'"),
        ),
        Index("ix_waitlist_offers_expiry", "expires_at", postgresql_where=text("status = 'offered'")),
        Index("ix_waitlist_offers_session", "session_key", postgresql_where=text("status = 'offered'")),
        Index("ix_waitlist_offers_entry", "entry_id"),
        Index("ix_waitlist_offers_client", "client_id"),
    )

    entry_id: Mapped[uuid.UUID] = mapped_column(ForeignKey("waitlist_entries.id", ondelete="CASCADE"))
    client_id: Mapped[uuid.UUID] = mapped_column(ForeignKey("users.id", ondelete="CASCADE"))
    staff_id: Mapped[uuid.UUID] = mapped_column(ForeignKey("users.id", ondelete="CASCADE"))
    service_id: Mapped[uuid.UUID] = mapped_column(ForeignKey("services.id", ondelete="CASCADE"))
    starts_at: Mapped[datetime]
    ends_at: Mapped[datetime]
    blocked_from: Mapped[datetime]
    blocked_until: Mapped[datetime]
    expires_at: Mapped[datetime]
    status: Mapped[str] = mapped_column(String(16), default=OfferStatus.offered.value)
    session_key: Mapped[uuid.UUID | None]  # a seat hold: the group session it holds a seat of
    appointment_id: Mapped[uuid.UUID | None] = mapped_column(ForeignKey("appointments.id", ondelete="SET NULL"))
    created_at: Mapped[datetime] = mapped_column(server_default=func.now())
    updated_at: Mapped[datetime] = mapped_column(server_default=func.now(), onupdate=func.now())
