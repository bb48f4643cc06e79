from app.models.appointment import (
    LIVE_STATUSES,
    Appointment,
    AppointmentSeries,
    AppointmentStatus,
    Reminder,
    live_status_sql,
)
from app.models.audit import AuditEntry
from app.models.base import Base
from app.models.calendar_connection import CalendarBusyBlock, CalendarConnection, CalendarKind
from app.models.feed import CalendarFeed
from app.models.idempotency import IdempotencyKey
from app.models.outbox import OutboxMessage
from app.models.resource import Resource, ResourceClosure, service_resources
from app.models.schedule import DateOverride, StaffProfile, TimeOff, WeeklyInterval
from app.models.service import Service, service_staff
from app.models.totp import TotpCredential, TotpRecoveryCode
from app.models.user import ActionToken, ActionTokenPurpose, Role, User
from app.models.waitlist import (
    OPEN_ENTRY_STATUSES,
    OfferStatus,
    WaitlistEntry,
    WaitlistOffer,
    WaitlistStatus,
    live_hold_sql,
    live_seat_holds,
)
from app.models.webhook import WEBHOOK_EVENT_TYPES, WebhookAttempt, WebhookEndpoint

__all__ = [
    "LIVE_STATUSES",
    "OPEN_ENTRY_STATUSES",
    "WEBHOOK_EVENT_TYPES",
    "ActionToken",
    "ActionTokenPurpose",
    "Appointment",
    "AppointmentSeries",
    "AppointmentStatus",
    "AuditEntry",
    "Base",
    "CalendarFeed",
    "CalendarBusyBlock",
    "CalendarConnection",
    "CalendarKind",
    "DateOverride",
    "IdempotencyKey",
    "OutboxMessage",
    "Reminder",
    "Resource",
    "ResourceClosure",
    "Role",
    "Service",
    "StaffProfile",
    "TimeOff",
    "TotpCredential",
    "TotpRecoveryCode",
    "User",
    "OfferStatus",
    "WaitlistEntry",
    "WaitlistOffer",
    "WaitlistStatus",
    "WebhookAttempt",
    "WebhookEndpoint",
    "WeeklyInterval",
    "live_hold_sql",
    "live_seat_holds",
    "live_status_sql",
    "service_resources",
    "service_staff",
]
