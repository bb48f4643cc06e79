"""Accounts and sessions: registration, verification, login, refresh, logout, password reset."""

from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

from sqlalchemy import select, update
from sqlalchemy.ext.asyncio import AsyncSession

from app.config import get_settings
from app.errors import (
    BadToken,
    EmailNotVerified,
    InactiveUser,
    InvalidCredentials,
    InvalidRefreshToken,
    InvalidToken,
    WrongPassword,
)
from app.models import ActionToken, ActionTokenPurpose, User
from app.redis import get_redis
from app.services import rate_limit, tokens
from app.services.outbox import queue_email
from app.services.passwords import ensure_strong
from app.utils.security import (
    AccessClaims,
    burn_password_check,
    create_access_token,
    hash_password,
    random_token,
    token_digest,
    verify_password,
)


@dataclass(frozen=True)
class TokenPair:
    access_token: str
    refresh_token: str
    expires_in: int
    token_type: str = "bearer"


def normalize_email(email: str) -> str:
    return email.strip().lower()


def _now() -> datetime:
    return datetime.now(UTC)


async def get_user_by_email(session: AsyncSession, email: str) -> User | None:
    return await session.scalar(select(User).where(User.email == normalize_email(email)))


# --- access ------------------------------------------------------------------------------------


async def authenticate_access(session: AsyncSession, claims: AccessClaims) -> User:
    """The user behind a decoded access token, or 401 if the token was revoked in any way."""
    async with get_redis().pipeline(transaction=False) as pipe:
        pipe.exists(f"denied-jti:{claims.jti}")
        pipe.hmget(f"family:{claims.session_id}", ["reaffirmed", "revoked"])
        denied, (reaffirmed, family_revoked) = await pipe.execute()
    if denied:
        raise InvalidToken("This token has been revoked")
    if family_revoked:  # its login ended: logout, or a refresh token of that login was replayed
        raise InvalidToken("This session has been revoked")
    user = await session.get(User, claims.user_id)
    if user is None or not user.is_active or user.deleted_at is not None:
        raise InvalidToken()
    if max(claims.issued_at, float(reaffirmed or 0)) < user.tokens_valid_after.timestamp():
        raise InvalidToken("This session has been revoked")
    return user


async def _issue_pair(user: User, family: str | None = None, refresh_token: str | None = None) -> TokenPair:
    if family is None:
        family, refresh_token = await tokens.start_family(user.id)
    access, lifetime = create_access_token(user.id, user.role, session_id=family)
    assert refresh_token is not None
    return TokenPair(access_token=access, refresh_token=refresh_token, expires_in=lifetime)


async def login(session: AsyncSession, email: str, password: str, client_ip: str) -> TokenPair:
    settings = get_settings()
    email = normalize_email(email)
    await rate_limit.hit(settings.login_attempts_per_ip, "login-ip", client_ip)
    await rate_limit.ensure_allowed(settings.login_failures_per_email, "login-fail", email)
    user = await get_user_by_email(session, email)
    if user is None or user.deleted_at is not None:
        await burn_password_check(password)
        await rate_limit.record(settings.login_failures_per_email, "login-fail", email)
        raise InvalidCredentials()
    valid, upgraded = await verify_password(password, user.hashed_password)
    if not valid:
        await rate_limit.record(settings.login_failures_per_email, "login-fail", email)
        raise InvalidCredentials()
    if not user.is_active:
        raise InactiveUser()
    if not user.is_verified:
        raise EmailNotVerified("Confirm your email address first; we can send the link again")
    if upgraded:
        user.hashed_password = upgraded
    return await _issue_pair(user)


async def refresh(session: AsyncSession, refresh_token: str) -> TokenPair:
    grant, successor = await tokens.rotate(refresh_token)
    user = await session.get(User, grant.user_id)
    if (
        user is None
        or not user.is_active
        or user.deleted_at is not None
        or grant.valid_from < user.tokens_valid_after.timestamp()
    ):
        await tokens.revoke_family(grant.family)
        raise InvalidRefreshToken()
    return await _issue_pair(user, grant.family, successor)


async def logout(claims: AccessClaims, refresh_token: str | None) -> None:
    await tokens.deny_access_token(claims.jti, claims.expires_at)
    await tokens.revoke_family(claims.session_id)
    if refresh_token:
        grant = await tokens.peek(refresh_token)
        if grant is not None and grant.user_id == claims.user_id:
            await tokens.revoke_family(grant.family)


async def revoke_all_sessions(user: User, *, keep_session: str | None = None) -> None:
    """Every token issued so far stops working at once (the row change commits with the caller)."""
    user.tokens_valid_after = _now()
    await tokens.revoke_all_families(user.id, keep=keep_session)
    if keep_session:
        await tokens.reaffirm_family(keep_session)


# --- single-use tokens -------------------------------------------------------------------------


async def _new_action_token(session: AsyncSession, user: User, purpose: ActionTokenPurpose, ttl: timedelta) -> str:
    token = random_token()
    session.add(
        ActionToken(token_hash=token_digest(token), user_id=user.id, purpose=purpose.value, expires_at=_now() + ttl)
    )
    await session.flush()
    return token


async def _spend_action_token(session: AsyncSession, token: str, purpose: ActionTokenPurpose) -> User:
    """Mark a token used (compare-and-swap, so two concurrent spends cannot both succeed)."""
    user_id = await session.scalar(
        update(ActionToken)
        .where(
            ActionToken.token_hash == token_digest(token),
            ActionToken.purpose == purpose.value,
            ActionToken.used_at.is_(None),
            ActionToken.expires_at > _now(),
        )
        .values(used_at=_now())
        .returning(ActionToken.user_id)
    )
    user = await session.get(User, user_id) if user_id else None
    if user is None or user.deleted_at is not None:
        raise BadToken()
    return user


def _link(path: str, token: str) -> str:
    return f"{get_settings().frontend_url.rstrip('/')}/{path}?token={token}"


async def _send_verification(session: AsyncSession, user: User) -> None:
    hours = get_settings().verify_email_token_expire_hours
    token = await _new_action_token(session, user, ActionTokenPurpose.verify_email, timedelta(hours=hours))
    await queue_email(
        session,
        to=user.email,
        template="verify_email",
        locale=user.locale,
        context={"full_name": user.full_name, "link": _link("verify-email", token), "expires_hours": hours},
    )


# --- flows -------------------------------------------------------------------------------------


async def register(
    session: AsyncSession, *, email: str, password: str, full_name: str, timezone: str, locale: str
) -> None:
    """Create an account, or mail the owner of an existing one; the caller cannot tell which."""
    ensure_strong(password)
    hashed = await hash_password(password)  # also for a known email, so both paths take the same time
    existing = await get_user_by_email(session, email)
    if existing is not None:
        if existing.deleted_at is None:
            await queue_email(
                session,
                to=existing.email,
                template="already_registered",
                locale=existing.locale,
                context={
                    "full_name": existing.full_name,
                    "login_link": f"{get_settings().frontend_url.rstrip('/')}/login",
                    "reset_link": f"{get_settings().frontend_url.rstrip('/')}/reset-password",
                },
            )
        return
    user = User(
        email=normalize_email(email),
        hashed_password=hashed,
        full_name=full_name,
        timezone=timezone,
        locale=locale,
    )
    session.add(user)
    await session.flush()
    await _send_verification(session, user)


async def verify_email(session: AsyncSession, token: str) -> User:
    user = await _spend_action_token(session, token, ActionTokenPurpose.verify_email)
    if user.email_verified_at is None:
        user.email_verified_at = _now()
    return user


async def resend_verification(session: AsyncSession, email: str) -> None:
    user = await get_user_by_email(session, email)
    if user is not None and user.is_active and user.deleted_at is None and not user.is_verified:
        await _send_verification(session, user)


async def request_password_reset(session: AsyncSession, email: str) -> None:
    user = await get_user_by_email(session, email)
    if user is None or not user.is_active or user.deleted_at is not None:
        return
    minutes = get_settings().password_reset_token_expire_minutes
    token = await _new_action_token(session, user, ActionTokenPurpose.password_reset, timedelta(minutes=minutes))
    await queue_email(
        session,
        to=user.email,
        template="password_reset",
        locale=user.locale,
        context={"full_name": user.full_name, "link": _link("reset-password", token), "expires_minutes": minutes},
    )


async def confirm_password_reset(session: AsyncSession, token: str, new_password: str) -> None:
    ensure_strong(new_password)
    user = await _spend_action_token(session, token, ActionTokenPurpose.password_reset)
    user.hashed_password = await hash_password(new_password)
    # The mailbox was proven, so an unverified address counts as verified from now on.
    user.email_verified_at = user.email_verified_at or _now()
    await revoke_all_sessions(user)


async def change_password(session: AsyncSession, user: User, claims: AccessClaims, current: str, new: str) -> None:
    """New password; every other session ends, the caller's own stays signed in."""
    valid, _ = await verify_password(current, user.hashed_password)
    if not valid:
        raise WrongPassword()
    ensure_strong(new)
    user.hashed_password = await hash_password(new)
    await revoke_all_sessions(user, keep_session=claims.session_id)
