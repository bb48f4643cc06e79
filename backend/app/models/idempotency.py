import uuid
from datetime import datetime
from typing import Any

from sqlalchemy import JSON, CheckConstraint, ForeignKey, Index, SmallInteger, String, func
from sqlalchemy.orm import Mapped, mapped_column

from app.models.base import Base

IN_PROGRESS, DONE = "in_progress", "done"


class IdempotencyKey(Base):
    """One `Idempotency-Key` of one caller: the request it stands for and, once done, its answer.

    Written in the transaction of the change it guards, so the answer exists exactly when the
    change does; kept 24 h (the worker purges older rows).
    """

    __tablename__ = "idempotency_keys"
    __table_args__ = (
        CheckConstraint(f"status IN ('{IN_PROGRESS}', '{DONE}')", name="status"),
        Index("ix_idempotency_keys_created_at", "created_at"),
    )

    user_id: Mapped[uuid.UUID] = mapped_column(ForeignKey("users.id", ondelete="CASCADE"), primary_key=True)
    key: Mapped[str] = mapped_column(String(255), primary_key=True)
    fingerprint: Mapped[str] = mapped_column(String(64))
    status: Mapped[str] = mapped_column(String(16), default=IN_PROGRESS)
    response_status: Mapped[int | None] = mapped_column(SmallInteger)
    response_body: Mapped[Any | None] = mapped_column(JSON)  # json, not jsonb: replayed byte for byte
    created_at: Mapped[datetime] = mapped_column(server_default=func.now())
