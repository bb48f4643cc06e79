"""Changing a user's email address: the new one takes effect only once a link mailed to it is spent.

The request needs the current password. The old address is told twice: when the change is asked
for and when it happens. A new address that belongs to another account is answered like a free
one (202); its owner gets a "this address already has an account" email instead of a link, so the
requester learns nothing they could not already read in that mailbox. Sessions stay signed in: the
address is not a credential, and the password (re-entered to ask) is unchanged; reset links mailed
to the old address stop working.
"""

from datetime import UTC, datetime, timedelta

from sqlalchemy import update
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncSession

from app.config import get_settings
from app.errors import BadToken, EmailTaken
from app.models import ActionToken, ActionTokenPurpose, User
from app.services import audit
from app.services.accounts import auth
from app.services.messaging.outbox import queue_email
from app.utils.security import token_digest

PURPOSE = ActionTokenPurpose.email_change


async def _tell(session: AsyncSession, to: str, template: str, user: User, new_email: str, **extra) -> None:
    context = {"full_name": user.full_name, "new_email": new_email, **extra}
    secret_keys = ("link",) if "link" in extra else ()
    await queue_email(session, to=to, template=template, locale=user.locale, context=context, secret_keys=secret_keys)


async def request_change(session: AsyncSession, user: User, new_email: str, password: str) -> None:
    """Mail a confirmation link to `new_email` (or, if it is taken, a notice to its owner) and tell the old one."""
    await auth.check_current_password(user, password)
    new_email = auth.normalize_email(new_email)
    if new_email == user.email:
        await auth.as_if_writing(session)
        return
    await auth.void_links(session, user, PURPOSE)  # only the latest request can be confirmed
    owner = await auth.get_user_by_email(session, new_email)
    if owner is None:
        hours = get_settings().verify_email_token_expire_hours
        token = await auth.new_action_token(session, user, PURPOSE, timedelta(hours=hours), new_email=new_email)
        link = auth.link("confirm-email-change", token)
        await _tell(session, new_email, "email_change_verify", user, new_email, link=link, expires_hours=hours)
    elif owner.deleted_at is None:
        await _tell(session, new_email, "email_change_taken", owner, new_email)
    await _tell(session, user.email, "email_change_requested", user, new_email)


async def confirm_change(session: AsyncSession, token: str) -> User:
    """Spend an email-change token: the account moves to the address it was mailed to."""
    now = datetime.now(UTC)
    spent = (
        await session.execute(
            update(ActionToken)
            .where(
                ActionToken.token_hash == token_digest(token),
                ActionToken.purpose == PURPOSE.value,
                ActionToken.used_at.is_(None),
                ActionToken.expires_at > now,
            )
            .values(used_at=now)
            .returning(ActionToken.user_id, ActionToken.new_email)
        )
    ).first()
    user = await session.get(User, spent.user_id) if spent else None
    if user is None or spent is None or spent.new_email is None or not user.is_active or user.deleted_at is not None:
        raise BadToken()
    # The holder of this link reads that mailbox, so telling them it was taken meanwhile reveals nothing.
    if await auth.get_user_by_email(session, spent.new_email) is not None:
        raise EmailTaken("This address belongs to another account now")
    old_email = user.email
    try:
        async with session.begin_nested():
            user.email = spent.new_email
            user.email_verified_at = user.email_verified_at or now
    except IntegrityError:
        raise EmailTaken("This address belongs to another account now") from None
    await auth.void_links(session, user, ActionTokenPurpose.password_reset)
    await auth.void_links(session, user, ActionTokenPurpose.verify_email)
    await _tell(session, old_email, "email_changed", user, spent.new_email)
    await audit.record(
        session,
        actor_id=user.id,
        action="user.email_change",
        entity_type="user",
        entity_id=user.id,
        before={"email": old_email},
        after={"email": user.email},
    )
    return user
