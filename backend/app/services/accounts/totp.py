"""Two-factor sign-in for admins and staff: set up (a secret and an otpauth URI), enable with a first
code (recovery codes are answered once), disable with the password and a code."""

from sqlalchemy.ext.asyncio import AsyncSession

from app.config import get_settings
from app.errors import Forbidden, TotpAlreadyEnabled, TotpInvalid, TotpNotEnabled, TotpNotSetUp
from app.models import Role, TotpCredential, User
from app.services import audit
from app.services.accounts import auth, second_factor
from app.utils.time import utcnow

ALLOWED_ROLES = (Role.admin.value, Role.staff.value)


def _ensure_allowed(user: User) -> None:
    if user.role not in ALLOWED_ROLES:
        raise Forbidden("Two-factor sign-in is offered to staff and admins")


async def _record(session: AsyncSession, user: User, action: str) -> None:
    await audit.record(
        session, actor_id=user.id, action=action, entity_type="user", entity_id=user.id, before=None, after=None
    )


async def begin_setup(session: AsyncSession, user: User) -> tuple[str, str]:
    """A new secret (replacing an unfinished set-up) and its otpauth:// URI for a QR code."""
    _ensure_allowed(user)
    cred = await second_factor.credential(session, user.id)
    if cred is not None and cred.enabled_at is not None:
        raise TotpAlreadyEnabled("Disable it first to move to another authenticator")
    secret = second_factor.new_secret()
    sealed = second_factor.seal_secret(user.id, secret)
    if cred is None:
        session.add(TotpCredential(user_id=user.id, secret_encrypted=sealed, last_used_step=0))
    else:
        cred.secret_encrypted, cred.last_used_step = sealed, 0
    await session.flush()
    return secret, second_factor.provisioning_uri(secret, user.email, get_settings().totp_issuer)


async def enable(session: AsyncSession, user: User, code: str) -> list[str]:
    """Turn the second factor on with a first code from the app; answers the recovery codes (shown once)."""
    _ensure_allowed(user)
    cred = await second_factor.credential(session, user.id)
    if cred is None:
        raise TotpNotSetUp("Call POST /api/v1/auth/totp/setup first")
    if cred.enabled_at is not None:
        raise TotpAlreadyEnabled()
    async with auth.password_attempt(user.email) as count_failure:
        if not second_factor.is_totp_code(code) or not await second_factor.spend_totp(session, cred, code):
            await count_failure()
            raise TotpInvalid("That code does not match; check the app's clock and try the current code")
    await session.refresh(cred)
    cred.enabled_at = utcnow()
    codes = await second_factor.replace_recovery_codes(session, user.id)
    await _record(session, user, "user.totp_enable")
    return codes


async def disable(session: AsyncSession, user: User, password: str, code: str) -> None:
    """Turn it off: the password and a code (TOTP or recovery) prove it is the owner."""
    if not await second_factor.is_enabled(session, user.id):
        raise TotpNotEnabled()
    await auth.check_current_password(user, password)
    await auth.check_second_factor(session, user, code)
    await second_factor.remove(session, user.id)
    await _record(session, user, "user.totp_disable")
