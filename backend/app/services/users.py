"""Profiles, GDPR export and erasure, and the admin's user management."""

import uuid
from datetime import UTC, datetime
from typing import Any

from sqlalchemy import func, or_, select
from sqlalchemy.ext.asyncio import AsyncSession

from app.errors import EmailTaken, NotFound
from app.models import Role, User
from app.services import auth
from app.services.passwords import ensure_strong
from app.utils.security import hash_password, random_token


async def get_user(session: AsyncSession, user_id: uuid.UUID) -> User:
    user = await session.get(User, user_id)
    if user is None:
        raise NotFound("No such user")
    return user


def apply_changes(user: User, changes: dict[str, Any]) -> None:
    for field, value in changes.items():
        setattr(user, field, value)


async def update_profile(user: User, changes: dict[str, Any]) -> User:
    """Apply already-validated profile changes; `None` only clears the phone number."""
    apply_changes(user, {k: v for k, v in changes.items() if v is not None or k == "phone"})
    return user


async def export(session: AsyncSession, user: User) -> dict[str, Any]:
    """Everything stored about the user, for GDPR data portability."""
    from app.schemas.user import UserOut

    return {
        "user": UserOut.model_validate(user).model_dump(mode="json"),
        "email_verified_at": user.email_verified_at,
        "updated_at": user.updated_at,
        "appointments": [],
    }


async def erase(session: AsyncSession, user: User) -> None:
    """Anonymise the account in place (its id may still be referenced) and end every session."""
    await auth.revoke_all_sessions(user)
    user.email = f"deleted-{user.id}@deleted.invalid"
    user.full_name = "Deleted user"
    user.phone = None
    user.hashed_password = await hash_password(random_token())
    user.is_active = False
    user.deleted_at = datetime.now(UTC)


async def list_users(
    session: AsyncSession, *, role: Role | None, q: str | None, limit: int, offset: int
) -> tuple[list[User], int]:
    query = select(User).where(User.deleted_at.is_(None))
    if role is not None:
        query = query.where(User.role == role.value)
    if q:
        pattern = f"%{q.lower().replace('%', r'\%').replace('_', r'\_')}%"
        query = query.where(or_(User.email.like(pattern), func.lower(User.full_name).like(pattern)))
    total = await session.scalar(select(func.count()).select_from(query.subquery()))
    rows = await session.scalars(query.order_by(User.created_at, User.id).limit(limit).offset(offset))
    return list(rows), total or 0


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
    session.add(user)
    await session.flush()
    return user


async def admin_update(session: AsyncSession, user: User, changes: dict[str, Any]) -> User:
    deactivating = changes.get("is_active") is False and user.is_active
    role_changed = "role" in changes and changes["role"] is not None and changes["role"] != user.role
    await update_profile(user, changes)
    if role_changed or deactivating:
        # A role lives in the access token: make the old ones fail so nobody keeps powers they lost.
        await auth.revoke_all_sessions(user)
    return user


async def deactivate(session: AsyncSession, user: User) -> None:
    if user.is_active:
        user.is_active = False
        await auth.revoke_all_sessions(user)
