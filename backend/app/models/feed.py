import uuid
from datetime import datetime

from sqlalchemy import ForeignKey, String, func
from sqlalchemy.orm import Mapped, mapped_column

from app.models.base import Base


class CalendarFeed(Base):
    """A user's calendar feed. The secret URL is not stored: it is an HMAC over (user id, `version`)
    (app/services/integrations/feeds.py), so rotating is `version + 1` and the old URL dies.

    `content_digest` and `content_changed_at` are what the last fetch served: the digest is the
    feed's ETag, and `content_changed_at` (its Last-Modified) moves only when the digest changes."""

    __tablename__ = "calendar_feeds"

    user_id: Mapped[uuid.UUID] = mapped_column(ForeignKey("users.id", ondelete="CASCADE"), primary_key=True)
    version: Mapped[int] = mapped_column(default=1)
    created_at: Mapped[datetime] = mapped_column(server_default=func.now())
    rotated_at: Mapped[datetime | None]
    content_digest: Mapped[str | None] = mapped_column(String(64))
    content_changed_at: Mapped[datetime] = mapped_column(server_default=func.now())
    last_fetched_at: Mapped[datetime | None]
