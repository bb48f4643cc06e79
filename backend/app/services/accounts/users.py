"""Profiles, GDPR export and erasure, and the admin's user management."""

import uuid
from datetime import UTC, datetime
from typing import Any

from sqlalchemy import func, or_, select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncSession

from app.errors import EmailTaken, NotFound, SelfLockout
from app.models import Role, User
from app.schemas.export import UserExport
from app.services import audit
from app.services.accounts import auth, erasure
from app.services.accounts import export as data_export
from app.services.accounts.passwords import ensure_strong
from app.services.booking import cancellation
from app.services.pagination import paginate
from app.utils.security import hash_password

# Never written to the audit trail.
_SECRET_FIELDS = ("created_at", "updated_at", "hashed_password", "tokens_valid_after")


def _audit_view(user: User) -> dict[str, Any]:
    return audit.snapshot(user, exclude=_SECRET_FIELDS)


async def _audit(session: AsyncSession, actor: User | None, action: str, user: User, before: dict | None) -> None:
    after = _audit_view(user)
    if before != after:
        await audit.record(
            session,
            actor_id=actor.id if actor else None,
            action=action,
            entity_type="user",
            entity_id=user.id,
            before=before,
            after=after,
        )


async def get_user(session: AsyncSession, user_id: uuid.UUID) -> User:
    user = await session.get(User, user_id)
    if user is None:
        raise NotFound("No such user")
    return user


def _apply(user: User, changes: dict[str, Any]) -> None:
    """Already-validated changes; `None` means "unchanged", except for the phone, which it clears."""
    for field, value in changes.items():
        if value is not None or field == "phone":
            setattr(user, field, value)


async def update_profile(session: AsyncSession, user: User, changes: dict[str, Any]) -> User:
    """The user edits their own profile (the audit log names them as the actor)."""
    before = _audit_view(user)
    _apply(user, changes)
    await _audit(session, user, "user.update", user, before)
    return user


async def export(session: AsyncSession, user: User) -> UserExport:
    """Everything stored about the user, for GDPR data portability."""
    return await data_export.export(session, user)


async def erase(session: AsyncSession, user: User) -> None:
    """GDPR erasure (see `erasure`)."""
    await erasure.erase(session, user)


async def list_users(
    session: AsyncSession, *, role: Role | None, q: str | None, limit: int, offset: int
) -> tuple[list[User], int]:
    query = select(User).where(User.deleted_at.is_(None))
    if role is not None:
        query = query.where(User.role == role.value)
    if q:
        pattern = f"%{q.lower().replace('%', r'\%').replace('_', r'\_')}%"
        query = query.where(or_(User.email.like(pattern), func.lower(User.full_name).like(pattern)))
    return await paginate(session, query, User.created_at, User.id, limit=limit, offset=offset)


async def create_user(
    session: AsyncSession,
    *,
    email: str,
    password: str,
    full_name: str,
    role: Role = Role.user,
    verified: bool = True,
    timezone: str = "UTC",
    locale: str = "en",
    phone: str | None = None,
    actor: User | None = None,
) -> User:
    ensure_strong(password)
    if await auth.get_user_by_email(session, email) is not None:
        raise EmailTaken()
    user = User(
        email=auth.normalize_email(email),
        hashed_password=await hash_password(password),
        full_name=full_name,
        role=role.value,
        timezone=timezone,
        locale=locale,
        phone=phone,
        email_verified_at=datetime.now(UTC) if verified else None,
    )
    try:
        async with session.begin_nested():  # two admins creating the same email at once: one 409, not a 500
            session.add(user)
            await session.flush()
    except IntegrityError:
        raise EmailTaken() from None
    await _audit(session, actor, "user.create", user, None)
    return user


async def admin_update(
    session: AsyncSession,
    user: User,
    changes: dict[str, Any],
    *,
    actor: User | None = None,
    action: str = "user.update",
    cancel_future: bool = False,
) -> User:
    before = _audit_view(user)
    deactivating = changes.get("is_active") is False and user.is_active
    role_changed = "role" in changes and changes["role"] is not None and changes["role"] != user.role
    if (deactivating or role_changed) and actor is not None and actor.id == user.id:
        raise SelfLockout("Ask another admin; this keeps the last admin from locking everyone out")
    if deactivating or role_changed:
        await cancellation.release_staff(session, actor, user, cancel_future=cancel_future)
    _apply(user, changes)
    if role_changed or deactivating:
        # A role lives in the access token: make the old ones fail so nobody keeps powers they lost.
        await auth.revoke_all_sessions(user)
    await _audit(session, actor, action, user, before)
    return user


async def deactivate(
    session: AsyncSession, user: User, *, actor: User | None = None, cancel_future: bool = False
) -> None:
    if actor is not None and actor.id == user.id:
        raise SelfLockout("Ask another admin; this keeps the last admin from locking everyone out")
    if user.is_active:
        changes = {"is_active": False}
        await admin_update(session, user, changes, actor=actor, action="user.deactivate", cancel_future=cancel_future)
