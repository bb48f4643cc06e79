"""A staff member's external calendar (an ICS URL or a CalDAV calendar) and the busy blocks its last
good sync found. Blocks carry no summary or description: only when the staff member is busy."""

import uuid
from datetime import datetime
from enum import StrEnum

from sqlalchemy import BigInteger, Boolean, CheckConstraint, ForeignKey, Identity, Index, Integer, String, Text, func
from sqlalchemy.orm import Mapped, mapped_column

from app.models.base import Base, Timestamps, UUIDPk


class CalendarKind(StrEnum):
    ics = "ics"
    caldav = "caldav"


class CalendarConnection(UUIDPk, Timestamps, Base):
    """Where to read a staff member's busy time, and how the last syncs went.

    `password_encrypted` (CalDAV) is sealed with `app.utils.secretbox` for this row's id and never
    leaves the server. `claimed_until` keeps two workers from syncing the same connection at once."""

    __tablename__ = "calendar_connections"
    __table_args__ = (
        CheckConstraint("kind IN ('ics', 'caldav')", name="kind"),
        Index("ix_calendar_connections_staff_id", "staff_id"),
        Index("ix_calendar_connections_next_sync_at", "next_sync_at"),
    )

    staff_id: Mapped[uuid.UUID] = mapped_column(ForeignKey("users.id", ondelete="CASCADE"))
    kind: Mapped[str] = mapped_column(String(16))
    name: Mapped[str] = mapped_column(String(200), default="")
    url: Mapped[str] = mapped_column(String(2048))
    username: Mapped[str | None] = mapped_column(String(200))
    password_encrypted: Mapped[str | None] = mapped_column(Text)
    push_appointments: Mapped[bool] = mapped_column(Boolean, default=False)
    is_active: Mapped[bool] = mapped_column(Boolean, default=True)
    last_attempt_at: Mapped[datetime | None]
    last_success_at: Mapped[datetime | None]
    last_error: Mapped[str | None] = mapped_column(String(2000))
    consecutive_failures: Mapped[int] = mapped_column(Integer, default=0)
    alerted_at: Mapped[datetime | None]  # the failure alert went out (once per run of failures)
    block_count: Mapped[int] = mapped_column(Integer, default=0)
    next_sync_at: Mapped[datetime] = mapped_column(server_default=func.now())
    claimed_until: Mapped[datetime | None]

    @property
    def has_password(self) -> bool:
        return self.password_encrypted is not None


class CalendarBusyBlock(Base):
    """A busy interval from a connection's last good sync; merged with time off in every calendar read."""

    __tablename__ = "calendar_busy_blocks"
    __table_args__ = (
        CheckConstraint("starts_at < ends_at", name="order"),
        Index("ix_calendar_busy_blocks_staff_range", "staff_id", "starts_at", "ends_at"),
        Index("ix_calendar_busy_blocks_connection_id", "connection_id"),
    )

    id: Mapped[int] = mapped_column(BigInteger, Identity(), primary_key=True)
    connection_id: Mapped[uuid.UUID] = mapped_column(ForeignKey("calendar_connections.id", ondelete="CASCADE"))
    staff_id: Mapped[uuid.UUID] = mapped_column(ForeignKey("users.id", ondelete="CASCADE"))
    starts_at: Mapped[datetime]
    ends_at: Mapped[datetime]
