from datetime import datetime
from typing import Any

from sqlalchemy import BigInteger, Identity, Index, String, func, text
from sqlalchemy.dialects.postgresql import JSONB
from sqlalchemy.orm import Mapped, mapped_column

from app.models.base import Base


class OutboxMessage(Base):
    """A side effect written in the same transaction as the change that caused it.

    The worker delivers each row once: it claims the row for a while (`claimed_by`, `claimed_until`)
    in one short transaction, sends with no transaction open, and records `sent_at` in another;
    it retries with backoff while the mail server is down, and a claim whose worker died runs out
    and is taken by another. Rows that never reached the queue are picked up by the relay.
    """

    __tablename__ = "outbox"
    __table_args__ = (
        Index("ix_outbox_pending", "next_attempt_at", postgresql_where=text("sent_at IS NULL AND failed_at IS NULL")),
        # Retention: the oldest sent and given-up rows first (app/services/retention.py).
        Index("ix_outbox_sent_at", "sent_at", postgresql_where=text("sent_at IS NOT NULL")),
        Index("ix_outbox_failed_at", "failed_at", postgresql_where=text("failed_at IS NOT NULL")),
        # One webhook endpoint's deliveries, newest first (app/services/integrations/webhook_deliveries.py).
        Index(
            "ix_outbox_webhook_endpoint",
            text("(payload ->> 'endpoint_id')"),
            text("id DESC"),
            postgresql_where=text("kind = 'webhook'"),
        ),
    )

    id: Mapped[int] = mapped_column(BigInteger, Identity(), primary_key=True)
    kind: Mapped[str] = mapped_column(String(32))  # "email", "webhook"
    payload: Mapped[dict[str, Any]] = mapped_column(JSONB)
    created_at: Mapped[datetime] = mapped_column(server_default=func.now())
    next_attempt_at: Mapped[datetime] = mapped_column(server_default=func.now())
    attempts: Mapped[int] = mapped_column(default=0)
    last_error: Mapped[str | None]
    sent_at: Mapped[datetime | None]
    failed_at: Mapped[datetime | None]
    claimed_by: Mapped[str | None] = mapped_column(String(128))  # "host:pid:token" of the attempt
    claimed_until: Mapped[datetime | None]
