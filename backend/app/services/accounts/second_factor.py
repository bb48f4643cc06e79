"""The TOTP second factor's building blocks: the stored secret, checking a code, recovery codes.

A code is a 6-digit TOTP (RFC 6238, 30 s steps, one step of clock drift either way), accepted once:
the step it matched is stored and a code for that step or an earlier one is refused (a replayed
code). A recovery code is single-use as well (compare-and-swap on `used_at`). Both checks are
compare-and-swap updates, so two concurrent sign-ins with the same code cannot both pass.
"""

import hmac
import secrets
import time
import uuid

import pyotp
from cryptography.exceptions import InvalidTag
from loguru import logger
from sqlalchemy import delete, select, update
from sqlalchemy.ext.asyncio import AsyncSession

from app.models import TotpCredential, TotpRecoveryCode, User
from app.utils.secretbox import open_sealed, seal
from app.utils.security import token_digest
from app.utils.time import utcnow

STEP_SECONDS = 30
DRIFT_STEPS = 1
RECOVERY_CODES = 10
_PURPOSE = "totp-secret"
_RECOVERY_ALPHABET = "abcdefghjkmnpqrstuvwxyz23456789"  # no 0/o, 1/l/i: read off paper


def new_secret() -> str:
    return pyotp.random_base32()


def seal_secret(user_id: uuid.UUID, secret: str) -> str:
    return seal(secret, purpose=_PURPOSE, context=str(user_id))


def reveal_secret(credential: TotpCredential) -> str:
    return open_sealed(credential.secret_encrypted, purpose=_PURPOSE, context=str(credential.user_id))


def provisioning_uri(secret: str, email: str, issuer: str) -> str:
    return pyotp.TOTP(secret).provisioning_uri(name=email, issuer_name=issuer)


async def credential(session: AsyncSession, user_id: uuid.UUID) -> TotpCredential | None:
    return await session.get(TotpCredential, user_id)


async def is_enabled(session: AsyncSession, user_id: uuid.UUID) -> bool:
    query = select(TotpCredential.enabled_at).where(TotpCredential.user_id == user_id)
    return (await session.scalar(query)) is not None


def matching_step(secret: str, code: str, now: float | None = None) -> int | None:
    """The 30-second step whose code this is (within the drift), else None."""
    totp = pyotp.TOTP(secret)
    current = int((time.time() if now is None else now) // STEP_SECONDS)
    for step in range(current - DRIFT_STEPS, current + DRIFT_STEPS + 1):
        if hmac.compare_digest(totp.at(step * STEP_SECONDS), code):
            return step
    return None


def _normalise(code: str) -> str:
    return "".join(code.split()).replace("-", "").lower()


def is_totp_code(code: str) -> bool:
    plain = _normalise(code)
    return len(plain) == 6 and plain.isdigit()


async def spend_totp(session: AsyncSession, cred: TotpCredential, code: str) -> bool:
    try:
        secret = reveal_secret(cred)
    except InvalidTag:  # sealed under an earlier SECRET_KEY: only recovery codes work now
        logger.warning("the TOTP secret of user {} cannot be read (SECRET_KEY changed?)", cred.user_id)
        return False
    step = matching_step(secret, _normalise(code))
    if step is None:
        return False
    spent = await session.scalar(
        update(TotpCredential)
        .where(TotpCredential.user_id == cred.user_id, TotpCredential.last_used_step < step)
        .values(last_used_step=step)
        .returning(TotpCredential.user_id)
    )
    return spent is not None


async def spend_recovery_code(session: AsyncSession, user_id: uuid.UUID, code: str) -> bool:
    spent = await session.scalar(
        update(TotpRecoveryCode)
        .where(
            TotpRecoveryCode.user_id == user_id,
            TotpRecoveryCode.code_hash == token_digest(_normalise(code)),
            TotpRecoveryCode.used_at.is_(None),
        )
        .values(used_at=utcnow())
        .returning(TotpRecoveryCode.id)
    )
    return spent is not None


async def check_code(session: AsyncSession, user: User, code: str) -> bool:
    """Spend a TOTP code or a recovery code of this user's enabled second factor."""
    cred = await credential(session, user.id)
    if cred is None or cred.enabled_at is None or not code or len(code) > 64:
        return False
    if is_totp_code(code):
        return await spend_totp(session, cred, code)
    return await spend_recovery_code(session, user.id, code)


def _recovery_code() -> str:
    raw = "".join(secrets.choice(_RECOVERY_ALPHABET) for _ in range(12))  # ~59 bits
    return f"{raw[:4]}-{raw[4:8]}-{raw[8:]}"


async def replace_recovery_codes(session: AsyncSession, user_id: uuid.UUID) -> list[str]:
    await session.execute(delete(TotpRecoveryCode).where(TotpRecoveryCode.user_id == user_id))
    codes = [_recovery_code() for _ in range(RECOVERY_CODES)]
    session.add_all(TotpRecoveryCode(user_id=user_id, code_hash=token_digest(_normalise(c))) for c in codes)
    await session.flush()
    return codes


async def remove(session: AsyncSession, user_id: uuid.UUID) -> None:
    """Forget the second factor entirely (disable, erasure)."""
    await session.execute(delete(TotpRecoveryCode).where(TotpRecoveryCode.user_id == user_id))
    await session.execute(delete(TotpCredential).where(TotpCredential.user_id == user_id))
