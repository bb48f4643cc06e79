"""Typed application errors, rendered as RFC 9457 problem details by one handler in `main.py`.

The OpenAPI schema is generated from these classes (app/api/problem_docs.py): one schema per `code`;
an annotated class attribute of a subclass (`conflicts: list[datetime]`) documents a member its
problem carries beside the standard ones (`NotRequired[...]` when only some raises send it), and
`documented_headers` the response headers it sets.
"""

from datetime import date, datetime
from typing import Any, ClassVar, Literal, NotRequired, TypedDict


class AppError(Exception):
    status: ClassVar[int] = 400
    code: ClassVar[str] = "bad_request"
    title: ClassVar[str] = "Bad request"
    documented_headers: ClassVar[tuple[str, ...]] = ()

    def __init__(self, detail: str | None = None, *, headers: dict[str, str] | None = None, **extra: Any) -> None:
        super().__init__(detail or self.title)
        self.detail = detail or self.title
        self.headers = headers or {}
        self.extra = extra


class NotFound(AppError):
    status, code, title = 404, "not_found", "Not found"


class Unauthorized(AppError):
    status, code, title = 401, "not_authenticated", "Not authenticated"
    documented_headers = ("WWW-Authenticate",)

    def __init__(self, detail: str | None = None, **extra: Any) -> None:
        super().__init__(detail, headers={"WWW-Authenticate": "Bearer"}, **extra)


class InvalidToken(Unauthorized):
    code, title = "invalid_token", "Invalid or expired token"


class Forbidden(AppError):
    status, code, title = 403, "forbidden", "Forbidden"


class EmailNotVerified(Forbidden):
    code, title = "email_not_verified", "Email address not verified"


class InactiveUser(Forbidden):
    code, title = "inactive_user", "Account is deactivated"


class Conflict(AppError):
    status, code, title = 409, "conflict", "Conflict"


class SelfLockout(Conflict):
    code, title = "self_lockout", "Admins cannot demote or deactivate themselves"


class EmailTaken(Conflict):
    code, title = "email_taken", "An account with this email already exists"


class BadToken(AppError):
    """A single-use token (verification, password reset) that is unknown, used or expired."""

    status, code, title = 400, "invalid_token", "Invalid or expired token"


class WrongPassword(AppError):
    status, code, title = 400, "invalid_password", "Current password is incorrect"


class WeakPassword(AppError):
    status, code, title = 422, "weak_password", "Password is too common"


class OAuthError(AppError):
    """Token endpoint errors carry RFC 6749 §5.2 members beside the problem members."""

    status, code, title = 400, "invalid_grant", "Invalid grant"
    error: str = "invalid_grant"
    error_description: str

    def __init__(self, detail: str | None = None, **extra: Any) -> None:
        super().__init__(detail, error=self.error, error_description=detail or self.title, **extra)


class InvalidCredentials(OAuthError):
    code, title = "invalid_credentials", "Incorrect email or password"


class InvalidRefreshToken(OAuthError):
    code, title = "invalid_refresh_token", "Refresh token is invalid, expired or revoked"


class TokenReused(OAuthError):
    code, title = "token_reused", "Refresh token was already used; the session has been revoked"


class TotpRequired(OAuthError):
    code, title = "totp_required", "A code from your authenticator app (or a recovery code) is required"


class TotpInvalid(OAuthError):
    code, title = "totp_invalid", "The authenticator or recovery code is wrong, expired or already used"


class TotpAlreadyEnabled(Conflict):
    code, title = "totp_already_enabled", "Two-factor sign-in is already enabled"


class TotpNotSetUp(Conflict):
    code, title = "totp_not_set_up", "Start two-factor set-up first"


class TotpNotEnabled(Conflict):
    code, title = "totp_not_enabled", "Two-factor sign-in is not enabled"


class UnsupportedMediaType(AppError):
    status, code, title = 415, "unsupported_media_type", "Unsupported media type"


class RateLimited(AppError):
    status, code, title = 429, "rate_limited", "Too many requests"
    documented_headers = ("Retry-After",)

    def __init__(self, retry_after: int, detail: str | None = None) -> None:
        super().__init__(detail, headers={"Retry-After": str(max(1, retry_after))})
        self.retry_after = retry_after


class ServiceUnavailable(AppError):
    """Try again after `Retry-After` seconds: nothing was done (or the request is safe to repeat)."""

    status, code, title = 503, "service_unavailable", "Service unavailable"
    documented_headers = ("Retry-After",)
    retry_after: ClassVar[int] = 2

    def __init__(self, detail: str | None = None, *, retry_after: int | None = None) -> None:
        super().__init__(detail, headers={"Retry-After": str(max(1, retry_after or self.retry_after))})


class DatabaseUnavailable(ServiceUnavailable):
    """PostgreSQL refused, dropped or could not take the connection (down, restarting, failing over)."""

    code, title = "database_unavailable", "The database is unavailable"


class RedisUnavailable(ServiceUnavailable):
    code, title = "redis_unavailable", "Redis is unavailable"


class ServerBusy(ServiceUnavailable):
    """This process is at its limit (requests in flight, database connections, password hashing)."""

    code, title = "server_busy", "The server is busy"
    retry_after = 1


class DatabaseTimeout(ServiceUnavailable):
    """A statement ran past `statement_timeout`, or waited past `lock_timeout` for a row another
    request holds (app/api/db_timeouts.py); retrying after `Retry-After` is safe, nothing was changed."""

    code, title = "database_timeout", "The database did not answer in time"


class TransactionConflict(ServiceUnavailable):
    """PostgreSQL rolled the request's transaction back to break a deadlock or a serialization race
    (app/api/db_timeouts.py). By design no path of ours deadlocks; should one, the client retries."""

    code, title = "transaction_conflict", "The request collided with another"


class SlotNotOffered(AppError):
    """Outside working hours, in time off, too soon or too far ahead: availability would not offer it."""

    status, code, title = 422, "slot_not_offered", "This time is not offered"
    occurrences: NotRequired[list[datetime]]  # a series' dates whose wall-clock time does not exist


class SlotUnavailable(Conflict):
    """Taken by another live appointment (the exclusion constraint `no_double_booking` says so)."""

    code, title = "slot_unavailable", "This time is no longer available"
    conflicts: list[datetime]  # the taken start times


class SessionFull(Conflict):
    """Every seat of the group session (staff member, service, start) is taken."""

    code, title = "session_full", "This session has no seats left"
    full: list[datetime]  # the starts whose sessions are full


class AlreadyBooked(Conflict):
    """The client already holds a seat of this group session."""

    code, title = "already_booked", "You already have a seat in this session"
    occurrences: list[datetime]  # the starts of the sessions they hold a seat in


class BookingLimitReached(Conflict):
    """A booking limit refuses the booking (app/services/booking/limits.py); each limit its own code."""

    code, title = "booking_limit_reached", "A booking limit was reached"
    limit: int  # the limit: a number of appointments, or for the gap minutes
    period: Literal["day", "week", "month", "gap", "future"]  # periods local to the staff member; future: live ones
    period_start: NotRequired[date]  # the local date the day, week or month starts
    occurrences: list[datetime]  # the starts it refuses


class ClientDailyLimit(BookingLimitReached):
    code, title = "client_daily_limit", "You have reached this service's bookings for that day"


class ClientWeeklyLimit(BookingLimitReached):
    code, title = "client_weekly_limit", "You have reached this service's bookings for that week"


class ClientMonthlyLimit(BookingLimitReached):
    code, title = "client_monthly_limit", "You have reached this service's bookings for that month"


class BookingGapTooShort(BookingLimitReached):
    code, title = "booking_gap_too_short", "Too close to another booking of this service"


class StaffDailyLimit(BookingLimitReached):
    code, title = "staff_daily_limit", "This staff member is fully booked that day"


class ClientLiveLimit(BookingLimitReached):
    code, title = "client_live_limit", "You have as many upcoming appointments as one may hold"


class InvalidTransition(Conflict):
    code, title = "invalid_transition", "The appointment cannot change to that status"


class CancellationWindowClosed(Conflict):
    code, title = "cancellation_window_closed", "It is too late to cancel or move this appointment"


class AppointmentNotStarted(Conflict):
    code, title = "appointment_not_started", "The appointment has not started yet"


class InvalidRecurrence(AppError):
    status, code, title = 422, "invalid_recurrence", "The recurrence rule is not supported"


class IdempotencyKeyReused(AppError):
    status, code, title = 422, "idempotency_key_reused", "This Idempotency-Key was used with a different request"


class IdempotencyKeyInProgress(Conflict):
    code, title = "idempotency_key_in_progress", "A request with this Idempotency-Key is still being processed"
    documented_headers = ("Retry-After",)


class ListedAppointment(TypedDict):
    id: str
    staff_id: str
    client_id: str
    service_id: str
    starts_at: datetime
    ends_at: datetime
    status: str


class AppointmentChanged(Conflict):
    code, title = "appointment_changed", "The appointment changed meanwhile"


class StaffHasBookings(Conflict):
    """Demoting or deactivating a staff member who still has future live appointments (listed)."""

    code, title = "staff_has_bookings", "This staff member has future appointments"
    conflicting_appointments: list[ListedAppointment]  # the first 50, by start
    conflicting_total: int


class ServiceHasBookings(Conflict):
    """Deactivating a service, or removing a provider, while future live appointments depend on it (listed)."""

    code, title = "service_has_bookings", "Future appointments depend on this service"
    conflicting_appointments: list[ListedAppointment]  # the first 50, by start
    conflicting_total: int


# --- problems answered outside AppError handling; declared here so the schema documents them too ---


class ValidationIssue(TypedDict):
    loc: list[str | int]
    msg: str
    type: str


class ValidationFailed(AppError):
    """FastAPI's request validation (RequestValidationError), rendered by the problem handler."""

    status, code, title = 422, "validation_error", "Validation error"
    errors: list[ValidationIssue]


class InvalidValue(AppError):
    """A value the database cannot store (SQLSTATE class 22, a NUL character say)."""

    status, code, title = 422, "invalid_value", "Invalid value"


class PayloadTooLarge(AppError):
    status, code, title = 413, "payload_too_large", "Content too large"


class InternalError(AppError):
    status, code, title = 500, "internal_error", "Internal server error"
