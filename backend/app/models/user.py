import enum
import uuid
from datetime import UTC, datetime

from sqlalchemy import CheckConstraint, ForeignKey, Index, String, func, text
from sqlalchemy.orm import Mapped, mapped_column

from app.models.base import Base, Timestamps, UUIDPk


class Role(enum.StrEnum):
    user = "user"
    staff = "staff"
    admin = "admin"


UNVERIFIED = "email_verified_at IS NULL AND deleted_at IS NULL"


class User(UUIDPk, Timestamps, Base):
    __tablename__ = "users"
    __table_args__ = (
        CheckConstraint("role IN ('user', 'staff', 'admin')", name="role"),
        CheckConstraint("locale IN ('en', 'ru')", name="locale"),
        Index("uq_users_email", "email", unique=True),
        # The admins' user list (newest accounts last, by role) and the staff list (by name).
        Index("ix_users_created", "created_at", "id", postgresql_where=text("deleted_at IS NULL")),
        Index("ix_users_role_created", "role", "created_at", "id", postgresql_where=text("deleted_at IS NULL")),
        Index("ix_users_role_name", "role", "full_name", "id"),
        # Retention: accounts never verified, oldest first (app/services/retention.py).
        Index("ix_users_unverified", "created_at", postgresql_where=text(UNVERIFIED)),
    )

    email: Mapped[str] = mapped_column(String(320))  # stored lower-cased
    hashed_password: Mapped[str] = mapped_column(String(255))
    full_name: Mapped[str] = mapped_column(String(200))
    phone: Mapped[str | None] = mapped_column(String(32))
    timezone: Mapped[str] = mapped_column(String(64), default="UTC")
    locale: Mapped[str] = mapped_column(String(2), default="en")
    role: Mapped[str] = mapped_column(String(16), default=Role.user.value)
    is_active: Mapped[bool] = mapped_column(default=True)
    email_verified_at: Mapped[datetime | None]
    # Every token issued before this instant is dead: logout-all, password reset, deactivation.
    # Set by the app (not the database clock), because token `iat`s come from the app's clock.
    tokens_valid_after: Mapped[datetime] = mapped_column(default=lambda: datetime.now(UTC), server_default=func.now())
    deleted_at: Mapped[datetime | None]

    @property
    def is_verified(self) -> bool:
        return self.email_verified_at is not None


class ActionTokenPurpose(enum.StrEnum):
    verify_email = "verify_email"
    password_reset = "password_reset"
    email_change = "email_change"


class ActionToken(Base):
    """Single-use tokens mailed to a user; only a SHA-256 of the token is kept."""

    __tablename__ = "action_tokens"
    __table_args__ = (  # retention: spent tokens, oldest first (app/services/retention.py)
        Index("ix_action_tokens_used_at", "used_at", postgresql_where=text("used_at IS NOT NULL")),
        Index("ix_action_tokens_expires_at", "expires_at"),
    )

    token_hash: Mapped[str] = mapped_column(String(64), primary_key=True)
    user_id: Mapped[uuid.UUID] = mapped_column(ForeignKey("users.id", ondelete="CASCADE"), index=True)
    purpose: Mapped[str] = mapped_column(String(32))
    new_email: Mapped[str | None] = mapped_column(String(320))  # the address an email-change token confirms
    expires_at: Mapped[datetime]
    used_at: Mapped[datetime | None]
    created_at: Mapped[datetime] = mapped_column(server_default=func.now())
