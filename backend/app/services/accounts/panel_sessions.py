"""Admin panel sessions: a random id in the admin's signed cookie, its record in Redis.

The record (`admin-session:<sha256 of the id>` -> user id and start, expiring with the session)
lets sign-out end a session on the server. Every panel request then re-reads the admin's row: a
session ends at once when its admin is demoted, deactivated or erased, signs out everywhere or
resets their password (`tokens_valid_after` moves past the session's start), or, with
`ADMIN_REQUIRE_TOTP`, no longer has a second factor.
"""

import uuid
from datetime import UTC, datetime

from sqlalchemy.ext.asyncio import AsyncSession

from app.config import get_settings
from app.errors import Forbidden
from app.models import Role, User
from app.redis import get_redis
from app.services.accounts import auth, second_factor
from app.utils.security import random_token, token_digest
from app.utils.time import utcnow


class PanelRefused(Forbidden):
    code, title = "admin_only", "Only admins can use the admin panel"


def _key(session_id: str) -> str:
    return f"admin-session:{token_digest(session_id)}"


async def _may_enter(session: AsyncSession, user: User) -> str | None:
    """Why this account may not hold a panel session now, or None."""
    if user.role != Role.admin.value:
        return "Only admins can use the admin panel"
    if get_settings().admin_require_totp and not await second_factor.is_enabled(session, user.id):
        return "The admin panel needs two-factor sign-in: enable it first (POST /api/v1/auth/totp/setup)"
    return None


async def sign_in(
    session: AsyncSession, email: str, password: str, client_ip: str, totp_code: str | None
) -> tuple[User, str]:
    """The API's sign-in (same hashing, limits and lock-out, same second factor), then admins only.
    Answers the admin and a new session id for the cookie."""
    user = await auth.sign_in(session, email, password, client_ip, totp_code or None)
    if (reason := await _may_enter(session, user)) is not None:
        raise PanelRefused(reason)
    session_id = random_token()
    ttl = get_settings().admin_session_minutes * 60
    await get_redis().set(_key(session_id), f"{user.id}|{utcnow().timestamp()}", ex=ttl)
    return user, session_id


async def current_admin(session: AsyncSession, session_id: str | None) -> User | None:
    """The admin holding this panel session, if it is still live and they are still an admin."""
    if not session_id:
        return None
    record = await get_redis().get(_key(session_id))
    if record is None:
        return None
    raw_user, _, raw_started = (record.decode() if isinstance(record, bytes) else record).partition("|")
    user = await session.get(User, uuid.UUID(raw_user))
    started = datetime.fromtimestamp(float(raw_started), tz=UTC)
    if user is None or not user.is_active or user.deleted_at is not None or started < user.tokens_valid_after:
        await end(session_id)
        return None
    if await _may_enter(session, user) is not None:
        await end(session_id)
        return None
    return user


async def end(session_id: str | None) -> None:
    if session_id:
        await get_redis().delete(_key(session_id))
