"""The caller's own profile, and user management for admins."""

import uuid
from typing import Annotated

from fastapi import APIRouter, Query, status

from app.api.deps import AdminUser, Claims, CurrentUser, CurrentUserView, DbSession, Limit, Offset
from app.api.problems import problem_responses
from app.errors import EmailTaken, NotFound, RateLimited, SelfLockout, StaffHasBookings, WeakPassword, WrongPassword
from app.models import Role
from app.schemas.common import Message
from app.schemas.export import UserExport
from app.schemas.user import (
    EmailChange,
    PasswordChange,
    UserAdminUpdate,
    UserCreate,
    UserOut,
    UserPage,
    UserUpdateMe,
)
from app.services.accounts import auth, email_change, users
from app.services.accounts.guards import limit_sensitive

router = APIRouter(prefix="/users", tags=["users"])

ADMIN_ERRORS = problem_responses(NotFound)
ADMIN_WRITE_ERRORS = problem_responses(NotFound, SelfLockout, StaffHasBookings)


@router.get("/me", operation_id="users-get-me", summary="My profile")
async def get_me(user: CurrentUserView) -> UserOut:
    """The signed-in user's profile."""
    return UserOut.model_validate(user)


@router.patch("/me", operation_id="users-update-me", summary="Edit my profile")
async def update_me(body: UserUpdateMe, user: CurrentUser, session: DbSession) -> UserOut:
    """Change name, phone, time zone or locale; any other field is refused with 422."""
    return UserOut.model_validate(await users.update_profile(session, user, body.model_dump(exclude_unset=True)))


@router.post(
    "/me/password",
    operation_id="users-change-password",
    status_code=status.HTTP_204_NO_CONTENT,
    summary="Change my password",
    responses=problem_responses(WrongPassword, WeakPassword, RateLimited),
)
async def change_password(body: PasswordChange, user: CurrentUser, claims: Claims, session: DbSession) -> None:
    """Set a new password; every other session ends, this one stays signed in."""
    await auth.change_password(session, user, claims, body.current_password, body.new_password)


@router.post(
    "/me/email",
    operation_id="users-change-email",
    status_code=status.HTTP_202_ACCEPTED,
    summary="Change my email address",
    responses=problem_responses(WrongPassword, RateLimited),
)
async def change_email(body: EmailChange, user: CurrentUser, session: DbSession) -> Message:
    """Mail a confirmation link to the new address (taken or not, the answer is the same); it takes effect
    once confirmed at `POST /auth/email-change/confirm`, and the old address is told."""
    await limit_sensitive("email-change", str(user.id), user.email, by="user")
    await email_change.request_change(session, user, body.new_email, body.password)
    return Message(detail="If the address can receive mail, a confirmation link is on its way.")


@router.get("/me/export", operation_id="users-export-me", summary="Export my data")
async def export_me(user: CurrentUser, session: DbSession) -> UserExport:
    """Everything stored about me, as JSON (GDPR data portability)."""
    return await users.export(session, user)


@router.delete(
    "/me",
    operation_id="users-delete-me",
    status_code=status.HTTP_204_NO_CONTENT,
    summary="Delete my account",
)
async def delete_me(user: CurrentUser, session: DbSession) -> None:
    """Erase my personal data and end every session (GDPR erasure)."""
    await users.erase(session, user)


@router.get("", operation_id="users-list", summary="List users")
async def list_users(
    _: AdminUser,
    session: DbSession,
    role: Role | None = None,
    q: Annotated[str | None, Query(max_length=200, description="Part of the email or name")] = None,
    limit: Limit = 50,
    offset: Offset = 0,
) -> UserPage:
    """Users, oldest first, filtered by role and by a part of the email or name."""
    rows, total = await users.list_users(session, role=role, q=q, limit=limit, offset=offset)
    return UserPage(items=[UserOut.model_validate(u) for u in rows], total=total, limit=limit, offset=offset)


@router.post(
    "",
    operation_id="users-create",
    status_code=status.HTTP_201_CREATED,
    summary="Create a user",
    responses=problem_responses(EmailTaken, WeakPassword),
)
async def create(body: UserCreate, admin: AdminUser, session: DbSession) -> UserOut:
    """Create a user of any role (a new specialist, say), verified or not."""
    data = body.model_dump(exclude={"is_verified"})
    return UserOut.model_validate(await users.create_user(session, verified=body.is_verified, actor=admin, **data))


@router.get("/{user_id}", operation_id="users-get", summary="Get a user", responses=ADMIN_ERRORS)
async def get(user_id: uuid.UUID, _: AdminUser, session: DbSession) -> UserOut:
    """One user by id."""
    return UserOut.model_validate(await users.get_user(session, user_id))


CancelFuture = Annotated[
    bool,
    Query(
        description="When demoting or deactivating a staff member: cancel their future appointments (with emails) "
        "instead of answering 409 `staff_has_bookings`"
    ),
]


@router.patch("/{user_id}", operation_id="users-update", summary="Edit a user", responses=ADMIN_WRITE_ERRORS)
async def update(
    user_id: uuid.UUID, body: UserAdminUpdate, admin: AdminUser, session: DbSession, cancel_future: CancelFuture = False
) -> UserOut:
    """Change a user's profile, role or active flag; a role change or deactivation ends their sessions."""
    user = await users.get_user(session, user_id)
    changes = body.model_dump(exclude_unset=True)
    updated = await users.admin_update(session, user, changes, actor=admin, cancel_future=cancel_future)
    return UserOut.model_validate(updated)


@router.delete(
    "/{user_id}",
    operation_id="users-deactivate",
    status_code=status.HTTP_204_NO_CONTENT,
    summary="Deactivate a user",
    responses=ADMIN_WRITE_ERRORS,
)
async def deactivate(
    user_id: uuid.UUID, admin: AdminUser, session: DbSession, cancel_future: CancelFuture = False
) -> None:
    """Deactivate a user: they can no longer sign in and their sessions end at once."""
    user = await users.get_user(session, user_id)
    await users.deactivate(session, user, actor=admin, cancel_future=cancel_future)
