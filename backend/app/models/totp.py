import uuid
from datetime import datetime

from sqlalchemy import BigInteger, ForeignKey, Identity, Index, String, Text, func
from sqlalchemy.orm import Mapped, mapped_column

from app.models.base import Base


class TotpCredential(Base):
    """A user's TOTP secret (AES-GCM under a key derived from `SECRET_KEY`, never shown again after
    set-up); `enabled_at` is set once a first code proved the authenticator app has it."""

    __tablename__ = "totp_credentials"

    user_id: Mapped[uuid.UUID] = mapped_column(ForeignKey("users.id", ondelete="CASCADE"), primary_key=True)
    secret_encrypted: Mapped[str] = mapped_column(Text)
    enabled_at: Mapped[datetime | None]
    # The newest 30-second step a code was accepted for: each code is good once (no replay).
    last_used_step: Mapped[int] = mapped_column(BigInteger, default=0)
    created_at: Mapped[datetime] = mapped_column(server_default=func.now())


class TotpRecoveryCode(Base):
    """Single-use recovery codes, kept only as SHA-256 digests (they are long random strings)."""

    __tablename__ = "totp_recovery_codes"
    __table_args__ = (Index("uq_totp_recovery_codes_user_digest", "user_id", "code_hash", unique=True),)

    id: Mapped[int] = mapped_column(BigInteger, Identity(), primary_key=True)
    user_id: Mapped[uuid.UUID] = mapped_column(ForeignKey("users.id", ondelete="CASCADE"))
    code_hash: Mapped[str] = mapped_column(String(64))
    used_at: Mapped[datetime | None]
