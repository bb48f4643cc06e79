"""Accounts and sessions. Token endpoints answer RFC 6749 errors beside the problem members."""

from typing import Annotated

from fastapi import APIRouter, Depends, Form, Response, status

from app.api.deps import Claims, CurrentUser, DbSession, RateLimitIP, StaffUser
from app.api.openapi import header_refs
from app.api.problems import problem_responses
from app.errors import (
    BadToken,
    EmailNotVerified,
    EmailTaken,
    InactiveUser,
    InvalidCredentials,
    InvalidRefreshToken,
    RateLimited,
    TokenReused,
    TotpAlreadyEnabled,
    TotpInvalid,
    TotpNotEnabled,
    TotpNotSetUp,
    TotpRequired,
    WeakPassword,
    WrongPassword,
)
from app.schemas.auth import (
    EmailIn,
    LogoutIn,
    PasswordResetConfirm,
    RefreshIn,
    RegisterIn,
    TokenIn,
    TokenPairOut,
    TotpCodeIn,
    TotpDisableIn,
    TotpEnabledOut,
    TotpSetupOut,
)
from app.schemas.common import Message
from app.schemas.user import UserOut
from app.services.accounts import auth, email_change, totp
from app.services.accounts.guards import limit_sensitive
from app.services.accounts.passwords import ensure_strong

router = APIRouter(prefix="/auth", tags=["auth"])

NO_STORE = {"Cache-Control": "no-store", "Pragma": "no-cache"}
TOKEN_ANSWER = {200: {"description": "A new token pair", "headers": header_refs(*NO_STORE)}}
SECRET_ANSWER = {200: {"description": "Secrets shown once", "headers": header_refs(*NO_STORE)}}
ACCEPTED = Message(detail="If the address can receive mail, a message is on its way.")


class LoginForm:
    """The OAuth2 password grant's form (what Swagger's Authorize button sends), every field bounded."""

    def __init__(
        self,
        username: Annotated[str, Form(max_length=320, description="The email address")],
        password: Annotated[str, Form(max_length=1024, json_schema_extra={"format": "password"})],
        grant_type: Annotated[str | None, Form(pattern="^password$")] = None,
        scope: Annotated[str, Form(max_length=1000)] = "",
        client_id: Annotated[str | None, Form(max_length=256)] = None,
        client_secret: Annotated[str | None, Form(max_length=256, json_schema_extra={"format": "password"})] = None,
        totp_code: Annotated[
            str | None,
            Form(max_length=64, description="With two-factor sign-in on: the app's code or a recovery code"),
        ] = None,
    ) -> None:
        self.username, self.password, self.totp_code = username, password, totp_code


@router.post(
    "/register",
    operation_id="auth-register",
    status_code=status.HTTP_202_ACCEPTED,
    summary="Create an account (answers the same whether or not the email is taken)",
    responses=problem_responses(WeakPassword),
)
async def register(body: RegisterIn, session: DbSession, client_ip: RateLimitIP) -> Message:
    """Create an account and queue a verification link; an existing account's owner is told instead."""
    await limit_sensitive("register", client_ip, body.email)
    ensure_strong(body.password)  # the one refusal that may be told: it says nothing about the address
    await auth.register(
        session,
        email=body.email,
        password=body.password,
        full_name=body.full_name,
        timezone=body.timezone,
        locale=body.locale,
    )
    return ACCEPTED


@router.post(
    "/verify-email",
    operation_id="auth-verify-email",
    summary="Confirm an email address",
    responses=problem_responses(BadToken),
)
async def verify_email(body: TokenIn, session: DbSession, client_ip: RateLimitIP) -> UserOut:
    """Spend a verification token (single use) and answer the verified user."""
    await limit_sensitive("verify", client_ip)
    return UserOut.model_validate(await auth.verify_email(session, body.token))


@router.post(
    "/verify-email/resend",
    operation_id="auth-resend-verification",
    status_code=status.HTTP_202_ACCEPTED,
    summary="Send the verification email again",
)
async def resend_verification(body: EmailIn, session: DbSession, client_ip: RateLimitIP) -> Message:
    """Queue a fresh verification link if the account exists and is unverified; the answer never tells."""
    await limit_sensitive("resend", client_ip, body.email)
    await auth.resend_verification(session, body.email)
    return ACCEPTED


@router.post(
    "/login",
    operation_id="auth-login",
    summary="Sign in (OAuth2 password grant)",
    responses=problem_responses(InvalidCredentials, InactiveUser, EmailNotVerified, TotpRequired, TotpInvalid)
    | TOKEN_ANSWER,
)
async def login(
    form: Annotated[LoginForm, Depends()],
    session: DbSession,
    client_ip: RateLimitIP,
    response: Response,
) -> TokenPairOut:
    """Exchange email (`username`) and password (and `totp_code` when two-factor sign-in is on) for tokens."""
    pair = await auth.login(session, form.username, form.password, client_ip, form.totp_code)
    response.headers.update(NO_STORE)
    return TokenPairOut(**pair.__dict__)


@router.post(
    "/refresh",
    operation_id="auth-refresh",
    summary="Rotate a refresh token",
    responses=problem_responses(InvalidRefreshToken, TokenReused) | TOKEN_ANSWER,
)
async def refresh(body: RefreshIn, session: DbSession, response: Response) -> TokenPairOut:
    """Spend a refresh token for a new pair; spending one twice ends that whole login."""
    pair = await auth.refresh(session, body.refresh_token)
    response.headers.update(NO_STORE)
    return TokenPairOut(**pair.__dict__)


@router.post(
    "/logout",
    operation_id="auth-logout",
    status_code=status.HTTP_204_NO_CONTENT,
    summary="Sign out",
)
async def logout(claims: Claims, _: CurrentUser, body: LogoutIn | None = None) -> None:
    """Revoke this access token at once and this login's refresh tokens."""
    await auth.logout(claims, body.refresh_token if body else None)


@router.post(
    "/logout-all",
    operation_id="auth-logout-all",
    status_code=status.HTTP_204_NO_CONTENT,
    summary="Sign out everywhere",
)
async def logout_all(user: CurrentUser, session: DbSession) -> None:
    """Revoke every session of the caller, this one included."""
    await auth.revoke_all_sessions(user)


@router.post(
    "/password-reset",
    operation_id="auth-password-reset",
    status_code=status.HTTP_202_ACCEPTED,
    summary="Mail a password reset link",
)
async def password_reset(body: EmailIn, session: DbSession, client_ip: RateLimitIP) -> Message:
    """Queue a reset link if the account exists; the answer never tells."""
    await limit_sensitive("reset", client_ip, body.email)
    await auth.request_password_reset(session, body.email)
    return ACCEPTED


@router.post(
    "/password-reset/confirm",
    operation_id="auth-password-reset-confirm",
    status_code=status.HTTP_204_NO_CONTENT,
    summary="Set a new password with a reset token",
    responses=problem_responses(BadToken, WeakPassword),
)
async def password_reset_confirm(body: PasswordResetConfirm, session: DbSession, client_ip: RateLimitIP) -> None:
    """Spend a reset token, set the new password and end every session."""
    await limit_sensitive("reset-confirm", client_ip)
    await auth.confirm_password_reset(session, body.token, body.new_password)


@router.post(
    "/email-change/confirm",
    operation_id="auth-confirm-email-change",
    summary="Confirm a new email address",
    responses=problem_responses(BadToken, EmailTaken),
)
async def confirm_email_change(body: TokenIn, session: DbSession, client_ip: RateLimitIP) -> UserOut:
    """Spend an email-change token (single use): the account moves to the address it was mailed to."""
    await limit_sensitive("email-change-confirm", client_ip)
    return UserOut.model_validate(await email_change.confirm_change(session, body.token))


@router.post(
    "/totp/setup",
    operation_id="auth-totp-setup",
    summary="Start two-factor sign-in: a new TOTP secret",
    responses=problem_responses(TotpAlreadyEnabled) | SECRET_ANSWER,
)
async def totp_setup(user: StaffUser, session: DbSession, response: Response) -> TotpSetupOut:
    """Staff and admins: a new secret and its `otpauth://` URI (replacing an unfinished set-up); it
    takes effect once `POST /auth/totp/enable` proves the app has it."""
    secret, uri = await totp.begin_setup(session, user)
    response.headers.update(NO_STORE)
    return TotpSetupOut(secret=secret, otpauth_uri=uri)


@router.post(
    "/totp/enable",
    operation_id="auth-totp-enable",
    summary="Turn two-factor sign-in on",
    responses=problem_responses(TotpNotSetUp, TotpAlreadyEnabled, TotpInvalid, RateLimited) | SECRET_ANSWER,
)
async def totp_enable(body: TotpCodeIn, user: StaffUser, session: DbSession, response: Response) -> TotpEnabledOut:
    """Confirm set-up with the app's current code; answers ten single-use recovery codes, shown only now.
    From then on sign-in needs `totp_code`."""
    codes = await totp.enable(session, user, body.code)
    response.headers.update(NO_STORE)
    return TotpEnabledOut(recovery_codes=codes)


@router.post(
    "/totp/disable",
    operation_id="auth-totp-disable",
    status_code=status.HTTP_204_NO_CONTENT,
    summary="Turn two-factor sign-in off",
    responses=problem_responses(TotpNotEnabled, TotpInvalid, WrongPassword, RateLimited),
)
async def totp_disable(body: TotpDisableIn, user: CurrentUser, session: DbSession) -> None:
    """With the password and a current code (or a recovery code); the secret and recovery codes are deleted."""
    await totp.disable(session, user, body.password, body.code)
