import uuid
from datetime import date, datetime, time
from typing import Any

from sqlalchemy import BigInteger, CheckConstraint, ForeignKey, Identity, Index, SmallInteger, String, Text, func
from sqlalchemy.dialects.postgresql import JSONB
from sqlalchemy.orm import Mapped, mapped_column

from app.models.base import Base, Timestamps, UUIDPk


class StaffProfile(Timestamps, Base):
    """A specialist's public face and the time zone their hours are written in."""

    __tablename__ = "staff_profiles"
    __table_args__ = (CheckConstraint("max_appointments_per_day BETWEEN 1 AND 1000", name="daily_limit"),)

    user_id: Mapped[uuid.UUID] = mapped_column(ForeignKey("users.id", ondelete="CASCADE"), primary_key=True)
    timezone: Mapped[str] = mapped_column(String(64), default="UTC")
    bio: Mapped[str] = mapped_column(Text, default="")
    # A booking limit (app/services/booking/limits.py): appointments per local day, None = none.
    max_appointments_per_day: Mapped[int | None]


class WeeklyInterval(Base):
    """Working hours on a weekday (0 = Monday), local wall-clock time in the staff member's zone."""

    __tablename__ = "weekly_intervals"
    __table_args__ = (
        CheckConstraint("weekday BETWEEN 0 AND 6", name="weekday"),
        CheckConstraint("start_time < end_time", name="order"),
        Index("ix_weekly_intervals_staff_weekday", "staff_id", "weekday"),
    )

    id: Mapped[int] = mapped_column(BigInteger, Identity(), primary_key=True)
    staff_id: Mapped[uuid.UUID] = mapped_column(ForeignKey("users.id", ondelete="CASCADE"))
    weekday: Mapped[int] = mapped_column(SmallInteger)
    start_time: Mapped[time]
    end_time: Mapped[time]


class DateOverride(UUIDPk, Base):
    """Hours that replace the weekly ones for one local date; an empty list closes the day."""

    __tablename__ = "date_overrides"
    __table_args__ = (Index("uq_date_overrides_staff_date", "staff_id", "date", unique=True),)

    staff_id: Mapped[uuid.UUID] = mapped_column(ForeignKey("users.id", ondelete="CASCADE"))
    date: Mapped[date]
    intervals: Mapped[list[dict[str, Any]]] = mapped_column(JSONB, default=list)  # [{"start": "09:00", "end": ...}]
    created_at: Mapped[datetime] = mapped_column(server_default=func.now())


class TimeOff(UUIDPk, Base):
    __tablename__ = "time_off"
    __table_args__ = (
        CheckConstraint("starts_at < ends_at", name="order"),
        Index("ix_time_off_staff_range", "staff_id", "starts_at", "ends_at"),
    )

    staff_id: Mapped[uuid.UUID] = mapped_column(ForeignKey("users.id", ondelete="CASCADE"))
    starts_at: Mapped[datetime]
    ends_at: Mapped[datetime]
    reason: Mapped[str | None] = mapped_column(String(500))
    created_at: Mapped[datetime] = mapped_column(server_default=func.now())
