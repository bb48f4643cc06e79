import uuid
from datetime import datetime

from sqlalchemy import BigInteger, ForeignKey, Identity, Index, String, Text, func
from sqlalchemy.dialects.postgresql import ARRAY
from sqlalchemy.orm import Mapped, mapped_column

from app.models.base import Base

# Every event a webhook endpoint may subscribe to (`event_types`); one name per event, used everywhere.
WEBHOOK_EVENT_TYPES = (
    "appointment.created",
    "appointment.confirmed",
    "appointment.rescheduled",
    "appointment.cancelled",
    "appointment.completed",
    "appointment.no_show",
    "series.created",
    "series.cancelled",
    "user.erased",
)


class WebhookEndpoint(Base):
    """A receiver of signed event notifications (Standard Webhooks 1.0), managed by admins.

    The signing secret is sealed (app/utils/secretbox.py, purpose "webhook-secret"); after a
    rotation the previous one keeps signing beside it until `previous_secret_until`. Each event is
    one outbox row per subscribed active endpoint (kind "webhook"): those rows are its deliveries.
    """

    __tablename__ = "webhook_endpoints"

    id: Mapped[uuid.UUID] = mapped_column(primary_key=True, default=uuid.uuid4)
    url: Mapped[str] = mapped_column(String(2048))
    description: Mapped[str] = mapped_column(String(500), default="")
    event_types: Mapped[list[str]] = mapped_column(ARRAY(String(40)))
    is_active: Mapped[bool] = mapped_column(default=True)
    secret_encrypted: Mapped[str] = mapped_column(Text)
    previous_secret_encrypted: Mapped[str | None] = mapped_column(Text)
    previous_secret_until: Mapped[datetime | None]
    # Since when every attempt failed (cleared by a success): past WEBHOOK_DISABLE_AFTER_DAYS it is disabled.
    failing_since: Mapped[datetime | None]
    disabled_reason: Mapped[str | None] = mapped_column(String(200))
    created_at: Mapped[datetime] = mapped_column(server_default=func.now())
    updated_at: Mapped[datetime] = mapped_column(server_default=func.now(), onupdate=func.now())


class WebhookAttempt(Base):
    """One HTTP attempt at one delivery (an outbox row): what the deliveries view shows."""

    __tablename__ = "webhook_attempts"
    __table_args__ = (Index("ix_webhook_attempts_outbox_id", "outbox_id", "id"),)

    id: Mapped[int] = mapped_column(BigInteger, Identity(), primary_key=True)
    outbox_id: Mapped[int] = mapped_column(BigInteger, ForeignKey("outbox.id", ondelete="CASCADE"))
    attempted_at: Mapped[datetime] = mapped_column(server_default=func.now())
    status_code: Mapped[int | None]
    latency_ms: Mapped[int | None]
    error: Mapped[str | None] = mapped_column(Text)
    response_body: Mapped[str | None] = mapped_column(Text)  # the first WEBHOOK_RESPONSE_BYTES, as text
