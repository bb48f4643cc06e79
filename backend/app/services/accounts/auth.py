"""Accounts and sessions: registration, verification, login, refresh, logout, password reset."""

import hashlib
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager, suppress
from dataclasses import dataclass, fields
from datetime import UTC, datetime, timedelta
from functools import partial

from redis.exceptions import LockError, NoScriptError
from sqlalchemy import func, select, update
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncSession
from sqlalchemy.orm import object_session

from app.config import get_settings
from app.database import after_commit, fetch_row
from app.errors import (
    BadToken,
    EmailNotVerified,
    InactiveUser,
    InvalidCredentials,
    InvalidRefreshToken,
    InvalidToken,
    TokenReused,
    TotpInvalid,
    TotpRequired,
    WrongPassword,
)
from app.models import ActionToken, ActionTokenPurpose, User
from app.redis import get_redis
from app.services import rate_limit
from app.services.accounts import second_factor, tokens
from app.services.accounts.passwords import ensure_strong
from app.services.messaging import events
from app.services.messaging.outbox import queue_email
from app.utils.security import (
    AccessClaims,
    burn_password_check,
    create_access_token,
    hash_password,
    hashing_gate,
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
    if "\x00" in email:  # PostgreSQL text cannot hold NUL, so no such user; asking would be a 500
        return None
    return await session.scalar(select(User).where(User.email == normalize_email(email)))


# --- access ------------------------------------------------------------------------------------


# Whether the token is on the deny-list, and its login's state: one command, one round trip (a pipeline of
# two costs the API half as much again). Both keys carry the login's hash tag: one Redis Cluster slot.
_SESSION_STATE = "return {redis.call('EXISTS', KEYS[1]), redis.call('HMGET', KEYS[2], 'reaffirmed', 'revoked')}"
_SESSION_STATE_SHA = hashlib.sha1(_SESSION_STATE.encode()).hexdigest()


async def _live_session(claims: AccessClaims) -> float:
    """401 unless the token and its login are live in Redis; when the login was last reaffirmed (0 if never)."""
    redis = get_redis()
    keys = (tokens.denied_key(claims.session_id, claims.jti), tokens.family_key(claims.session_id))
    try:
        denied, (reaffirmed, family_revoked) = await redis.evalsha(_SESSION_STATE_SHA, len(keys), *keys)
    except NoScriptError:  # a Redis that has not run it yet (or restarted): EVAL runs it and keeps it
        denied, (reaffirmed, family_revoked) = await redis.eval(_SESSION_STATE, len(keys), *keys)
    if denied:
        raise InvalidToken("This token has been revoked")
    if family_revoked:  # its login ended: logout, or a refresh token of that login was replayed
        raise InvalidToken("This session has been revoked")
    return float(reaffirmed or 0)


def _ensure_may_act[U: (User, UserView)](user: U | None, claims: AccessClaims, reaffirmed: float) -> U:
    if user is None or not user.is_active or user.deleted_at is not None:
        raise InvalidToken()
    if max(claims.issued_at, reaffirmed) < user.tokens_valid_after.timestamp():
        raise InvalidToken("This session has been revoked")
    return user


async def authenticate_access(session: AsyncSession, claims: AccessClaims) -> User:
    """The user behind a decoded access token, or 401 if the token was revoked in any way."""
    reaffirmed = await _live_session(claims)
    return _ensure_may_act(await session.get(User, claims.user_id), claims, reaffirmed)


@dataclass(frozen=True, slots=True)
class UserView:
    """A read-only snapshot of a user row: the profile (`UserOut`'s fields) and what the access checks need."""

    id: uuid.UUID
    email: str
    full_name: str
    phone: str | None
    timezone: str
    locale: str
    role: str
    is_active: bool
    created_at: datetime
    tokens_valid_after: datetime
    deleted_at: datetime | None
    is_verified: bool


_COLUMNS = User.__table__.c
_USER_VIEW_SQL = (
    f"SELECT {', '.join(_COLUMNS[f.name].name for f in fields(UserView) if f.name != 'is_verified')},"
    f" {_COLUMNS.email_verified_at.name} IS NOT NULL FROM {User.__tablename__} WHERE {_COLUMNS.id.name} = $1"
)


async def authenticate_access_view(claims: AccessClaims) -> UserView:
    """Like `authenticate_access`, for a route that only reads the caller: the same checks on the row as
    committed now, read in one statement outside any transaction (no ORM object, no BEGIN/COMMIT)."""
    reaffirmed = await _live_session(claims)
    row = await fetch_row(_USER_VIEW_SQL, claims.user_id)
    return _ensure_may_act(UserView(*row) if row is not None else None, claims, reaffirmed)


async def _issue_pair(user: User, family: str | None = None, refresh_token: str | None = None) -> TokenPair:
    if family is None:
        family, refresh_token = await tokens.start_family(user.id)
    access, lifetime = create_access_token(user.id, user.role, session_id=family)
    assert refresh_token is not None
    return TokenPair(access_token=access, refresh_token=refresh_token, expires_in=lifetime)


@asynccontextmanager
async def password_attempt(email: str) -> AsyncIterator[Callable[[], Awaitable[None]]]:
    """Guard one password check for `email` by the per-email failure limit; yields "count a failure".

    Checks for one email run one at a time (a Redis lock): otherwise a burst of concurrent guesses
    would all pass the limit before the first failure was counted.
    """
    limit = get_settings().login_failures_per_email
    lock = get_redis().lock(f"password-attempt:{email}", timeout=10, sleep=0.02, blocking_timeout=5)
    if not await lock.acquire():
        raise rate_limit.refused("login-in-progress", 1, "Another sign-in to this account is in progress; try again")
    try:
        await rate_limit.ensure_allowed(limit, "login-fail", email)
        yield partial(rate_limit.record, limit, "login-fail", email)
    finally:
        with suppress(LockError):  # held past its timeout: already released
            await lock.release()


async def sign_in(
    session: AsyncSession, email: str, password: str, client_ip: str, totp_code: str | None = None
) -> User:
    """The account these credentials open, under the sign-in limits (per IP, per email, one check per
    email at a time). With a second factor enabled the password alone is 400 `totp_required`; a
    wrong or spent code is `totp_invalid` and counts as a failed sign-in. The API's token endpoint
    and the admin panel both sign in here."""
    email = normalize_email(email)
    hashing_gate().ensure_room()  # a sign-in flood is refused before it costs Redis and database work
    await rate_limit.hit(get_settings().login_attempts_per_ip, "login-ip", client_ip)
    async with password_attempt(email) as count_failure:
        user = await get_user_by_email(session, email)
        if user is None or user.deleted_at is not None:
            await burn_password_check(password)
            valid, upgraded = False, None
        else:
            valid, upgraded = await verify_password(password, user.hashed_password)
        if not valid:
            await count_failure()
            raise InvalidCredentials()
        assert user is not None
        if await second_factor.is_enabled(session, user.id):
            if not totp_code:
                raise TotpRequired("Send `totp_code`: a code from your authenticator app, or a recovery code")
            if not await second_factor.check_code(session, user, totp_code):
                await count_failure()
                raise TotpInvalid()
    if not user.is_active:
        raise InactiveUser()
    if not user.is_verified:
        raise EmailNotVerified("Confirm your email address first; we can send the link again")
    if upgraded:
        user.hashed_password = upgraded
    return user


async def login(
    session: AsyncSession, email: str, password: str, client_ip: str, totp_code: str | None = None
) -> TokenPair:
    return await _issue_pair(await sign_in(session, email, password, client_ip, totp_code))


async def refresh(session: AsyncSession, refresh_token: str) -> TokenPair:
    grant = await tokens.check(refresh_token)
    # Everything that can fail is checked before the token is spent: a refresh refused for a
    # passing reason (the database down) leaves the client's token usable for a retry.
    user = await session.get(User, grant.user_id)
    if (
        user is None
        or not user.is_active
        or user.deleted_at is not None
        or grant.valid_from < user.tokens_valid_after.timestamp()
    ):
        await tokens.revoke_family(grant.family)
        raise InvalidRefreshToken()
    try:
        successor = await tokens.rotate(refresh_token, grant)
    except TokenReused:
        await events.end_sessions(grant.user_id, session_id=grant.family)
        raise
    return await _issue_pair(user, grant.family, successor)


async def logout(claims: AccessClaims, refresh_token: str | None) -> None:
    await tokens.deny_access_token(claims.session_id, claims.jti, claims.expires_at)
    await tokens.revoke_family(claims.session_id)
    await events.end_sessions(claims.user_id, session_id=claims.session_id)
    if refresh_token:
        grant = await tokens.peek(refresh_token)
        if grant is not None and grant.user_id == claims.user_id:
            await tokens.revoke_family(grant.family)
            await events.end_sessions(claims.user_id, session_id=grant.family)


async def revoke_all_sessions(user: User, *, keep_session: str | None = None) -> None:
    """Every token issued so far stops working at once.

    `tokens_valid_after` commits with the caller's change and is what access and refresh checks
    rely on; the refresh families in Redis are tidied up only after that commit.
    """
    user.tokens_valid_after = _now()
    tidy = partial(_revoke_families, user.id, keep_session)
    session = object_session(user)
    if session is None:
        await tidy()
    else:
        after_commit(session, tidy)


async def _revoke_families(user_id: uuid.UUID, keep_session: str | None) -> None:
    await tokens.revoke_all_families(user_id, keep=keep_session)
    if keep_session:
        await tokens.reaffirm_family(keep_session)
    await events.end_sessions(user_id, keep=keep_session)


# --- single-use tokens -------------------------------------------------------------------------


async def new_action_token(
    session: AsyncSession, user: User, purpose: ActionTokenPurpose, ttl: timedelta, *, new_email: str | None = None
) -> str:
    token = random_token()
    session.add(
        ActionToken(
            token_hash=token_digest(token),
            user_id=user.id,
            purpose=purpose.value,
            expires_at=_now() + ttl,
            new_email=new_email,
        )
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
    if user is None or not user.is_active or user.deleted_at is not None:
        raise BadToken()
    return user


async def void_links(session: AsyncSession, user: User, purpose: ActionTokenPurpose) -> None:
    """Links of this kind mailed earlier stop working."""
    await session.execute(
        update(ActionToken)
        .where(ActionToken.user_id == user.id, ActionToken.purpose == purpose.value, ActionToken.used_at.is_(None))
        .values(used_at=_now())
    )


async def _void_password_reset_links(session: AsyncSession, user: User) -> None:
    """Reset links mailed before the password changed must not change it again."""
    await void_links(session, user, ActionTokenPurpose.password_reset)


def link(path: str, token: str) -> str:
    return f"{get_settings().frontend_url.rstrip('/')}/{path}?token={token}"


async def _mail_link(
    session: AsyncSession, user: User, purpose: ActionTokenPurpose, ttl: timedelta, template: str, path: str, **context
) -> None:
    """A single-use link to `{FRONTEND_URL}/{path}`, mailed to the user through the outbox (the link redacted there)."""
    token = await new_action_token(session, user, purpose, ttl)
    await queue_email(
        session,
        to=user.email,
        template=template,
        locale=user.locale,
        context={"full_name": user.full_name, "link": link(path, token), **context},
        secret_keys=("link",),
    )


async def _send_verification(session: AsyncSession, user: User) -> None:
    hours = get_settings().verify_email_token_expire_hours
    await _mail_link(
        session,
        user,
        ActionTokenPurpose.verify_email,
        timedelta(hours=hours),
        "verify_email",
        "verify-email",
        expires_hours=hours,
    )


# --- flows -------------------------------------------------------------------------------------


async def register(
    session: AsyncSession, *, email: str, password: str, full_name: str, timezone: str, locale: str
) -> None:
    """Create an account, or mail the owner of an existing one; the caller cannot tell which.

    Both paths hash the password and queue one email in the request's transaction, so they take
    the same time, and a 202 means the account and its email are committed.
    """
    ensure_strong(password)
    hashed = await hash_password(password)  # also for a known email, so both paths take the same time
    existing = await get_user_by_email(session, email)
    if existing is None:
        user = User(
            email=normalize_email(email),
            hashed_password=hashed,
            full_name=full_name,
            timezone=timezone,
            locale=locale,
        )
        try:
            async with session.begin_nested():
                session.add(user)
        except IntegrityError as exc:
            if "uq_users_email" not in str(exc.orig):
                raise
            existing = await get_user_by_email(session, email)  # registered a moment ago, concurrently
        else:
            await _send_verification(session, user)
            return
    if existing is not None and existing.deleted_at is None:
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


async def verify_email(session: AsyncSession, token: str) -> User:
    user = await _spend_action_token(session, token, ActionTokenPurpose.verify_email)
    if user.email_verified_at is None:
        user.email_verified_at = _now()
    return user


async def as_if_writing(session: AsyncSession) -> None:
    """Make a transaction that writes nothing commit like one that does (an xid, a WAL flush).

    Resend and reset write a token and an email for a known address only; a read-only commit
    skips the flush and would answer measurably sooner for an unknown one.
    """
    await session.execute(select(func.pg_current_xact_id()))


async def resend_verification(session: AsyncSession, email: str) -> None:
    user = await get_user_by_email(session, email)
    if user is not None and user.is_active and user.deleted_at is None and not user.is_verified:
        await _send_verification(session, user)
    else:
        await as_if_writing(session)


async def request_password_reset(session: AsyncSession, email: str) -> None:
    user = await get_user_by_email(session, email)
    if user is None or not user.is_active or user.deleted_at is not None:
        await as_if_writing(session)
        return
    minutes = get_settings().password_reset_token_expire_minutes
    await _mail_link(
        session,
        user,
        ActionTokenPurpose.password_reset,
        timedelta(minutes=minutes),
        "password_reset",
        "reset-password",
        expires_minutes=minutes,
    )


async def confirm_password_reset(session: AsyncSession, token: str, new_password: str) -> None:
    ensure_strong(new_password)
    user = await _spend_action_token(session, token, ActionTokenPurpose.password_reset)
    await _void_password_reset_links(session, user)
    user.hashed_password = await hash_password(new_password)
    # The mailbox was proven, so an unverified address counts as verified from now on.
    user.email_verified_at = user.email_verified_at or _now()
    await revoke_all_sessions(user)


async def check_current_password(user: User, password: str) -> None:
    """400 `invalid_password` unless it is the user's password; failures count like failed logins."""
    async with password_attempt(user.email) as count_failure:
        valid, _ = await verify_password(password, user.hashed_password)
        if not valid:
            await count_failure()
            raise WrongPassword()


async def check_second_factor(session: AsyncSession, user: User, code: str) -> None:
    """400 `totp_invalid` unless `code` is a fresh TOTP or unused recovery code of the user; failures
    count like failed logins (so six digits cannot be guessed through this door either)."""
    async with password_attempt(user.email) as count_failure:
        if not await second_factor.check_code(session, user, code):
            await count_failure()
            raise TotpInvalid()


async def change_password(session: AsyncSession, user: User, claims: AccessClaims, current: str, new: str) -> None:
    """New password; every other session ends, the caller's own stays signed in.

    Wrong current passwords count against the same per-email limit as failed logins, so a stolen
    access token cannot be used to guess the password without limit.
    """
    await check_current_password(user, current)
    ensure_strong(new)
    await _void_password_reset_links(session, user)
    user.hashed_password = await hash_password(new)
    await revoke_all_sessions(user, keep_session=claims.session_id)
