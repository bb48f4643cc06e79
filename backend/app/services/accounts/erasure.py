"""GDPR erasure: the account row stays (other rows point at its id), but nothing stored names the person.

Gone: the profile's email, name and phone; the notes of their appointments as client and the
cancellation reasons of those and of any appointment they cancelled; a staff member's bio and
time-off reasons; their calendar feed (its URL stops working); their external calendar
connections (URLs, sealed passwords) and busy blocks; the `data` of every webhook delivery about
them (ids only remain); their waitlist entries and offers (a slot held for them passes on); the
content of every email to them (those not yet sent never will be);
and, in every email about them and every audit entry by or about them, their name, address and
phone (replaced by "Deleted user", the account's anonymous address, "[erased]") and those notes.
Kept: the appointments themselves (the other party's calendar and history), series, schedules,
and the audit trail's shape (who did what, when). Future live appointments are cancelled first,
with the usual emails to the other party, which leave anonymised too. A last sweep replaces the
address (and a phone number) in every text and JSON column of every table, and the stored answers
of the person's idempotent requests (`idempotency_keys`) are deleted.
"""

import re
import uuid
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from sqlalchemy import Text, and_, cast, delete, func, or_, select, update
from sqlalchemy.ext.asyncio import AsyncSession

from app.models import (
    ActionToken,
    Appointment,
    AuditEntry,
    CalendarBusyBlock,
    CalendarConnection,
    CalendarFeed,
    OutboxMessage,
    StaffProfile,
    TimeOff,
    User,
)
from app.services import audit
from app.services.accounts import auth, second_factor
from app.services.accounts.traces import ERASED, ERASED_NAME, Traces, sweep
from app.services.booking import cancellation, idempotency, waitlist_holds
from app.services.integrations import webhook_deliveries, webhooks
from app.services.messaging import outbox
from app.utils.ics import refold, unfold
from app.utils.security import hash_password, random_token

USER_FIELDS = frozenset({"email", "full_name", "phone"})
_SCHEDULE_TEXT = ("reason", "bio")
_LINKED_APPOINTMENT = re.compile(r"/appointments/([0-9a-f-]{36})$")


@dataclass(frozen=True)
class _Involvement:
    """The person's appointments, and which of their free-text fields go."""

    ids: frozenset[str]  # as client or as staff
    notes_erased: frozenset[str]  # as client: the notes are theirs
    reason_erased: frozenset[str]  # as client, or cancelled by them (but not the erasure's own cancellations)


def _party_appointment_ids(user_id: uuid.UUID) -> Any:
    """SQL: the ids (as text) of the appointments the person is the client or staff member of."""
    party = or_(Appointment.client_id == user_id, Appointment.staff_id == user_id)
    return select(cast(Appointment.id, Text)).where(party).scalar_subquery()


def anonymous_email(user_id: uuid.UUID) -> str:
    return f"deleted-{user_id}@deleted.invalid"


async def erase(session: AsyncSession, user: User) -> None:
    """Anonymise the account in place and end every session; future appointments are cancelled
    first, and the other party is told (without the erased person's details)."""
    traces = Traces.of(
        email=user.email, full_name=user.full_name, phone=user.phone, anonymous_email=anonymous_email(user.id)
    )
    cancelled = await cancellation.cancel_for_erasure(session, user)
    await auth.revoke_all_sessions(user)
    await outbox.forget_recipient(session, user.email)
    await _anonymise_account(session, user)
    involvement = await _involvement(session, user.id, {a.id for a in cancelled})
    await _erase_written_text(session, user.id, involvement)
    await _scrub_outbox(session, user.id, traces, involvement)
    await webhook_deliveries.forget_person(session, user.id)
    await waitlist_holds.forget_client(session, user.id)
    await _scrub_audit_trail(session, user.id, traces, involvement)
    await audit.record(
        session,
        actor_id=user.id,
        action="user.erase",
        entity_type="user",
        entity_id=user.id,
        after={"is_active": False, "deleted_at": user.deleted_at},
    )
    await session.flush()
    await sweep(session, traces)
    await idempotency.forget_user(session, user.id)
    await webhooks.emit(session, "user.erased", [webhooks.Event({"id": str(user.id)})])


async def _anonymise_account(session: AsyncSession, user: User) -> None:
    user.email = anonymous_email(user.id)
    user.full_name = ERASED_NAME
    user.phone = None
    user.hashed_password = await hash_password(random_token())
    user.is_active = False
    user.deleted_at = datetime.now(UTC)
    await session.execute(delete(ActionToken).where(ActionToken.user_id == user.id))
    await session.execute(delete(CalendarFeed).where(CalendarFeed.user_id == user.id))  # its URL dies
    await second_factor.remove(session, user.id)  # the TOTP secret and recovery codes
    # External calendars: their URLs, sealed passwords and busy blocks (the account is inactive now).
    await session.execute(delete(CalendarBusyBlock).where(CalendarBusyBlock.staff_id == user.id))
    await session.execute(delete(CalendarConnection).where(CalendarConnection.staff_id == user.id))


async def _involvement(session: AsyncSession, user_id: uuid.UUID, cancelled_now: set[uuid.UUID]) -> _Involvement:
    rows = await session.execute(
        select(Appointment.id, Appointment.client_id, Appointment.staff_id, Appointment.cancelled_by).where(
            or_(Appointment.client_id == user_id, Appointment.staff_id == user_id, Appointment.cancelled_by == user_id)
        )
    )
    ids, notes, reasons = set(), set(), set()
    for appointment_id, client_id, staff_id, cancelled_by in rows:
        key = str(appointment_id)
        if user_id in (client_id, staff_id):
            ids.add(key)
        if client_id == user_id:
            notes.add(key)
        if user_id in (client_id, cancelled_by) and appointment_id not in cancelled_now:
            reasons.add(key)
    return _Involvement(frozenset(ids), frozenset(notes), frozenset(reasons))


async def _erase_written_text(session: AsyncSession, user_id: uuid.UUID, involvement: _Involvement) -> None:
    """Appointment notes and reasons (see `_Involvement`), a staff member's bio and time-off reasons."""
    erased = {"notes": involvement.notes_erased, "cancellation_reason": involvement.reason_erased}
    for column, keys in erased.items():
        if keys:
            ids = [uuid.UUID(k) for k in keys]
            statement = update(Appointment).where(Appointment.id.in_(ids)).values({column: None})
            await session.execute(statement.execution_options(synchronize_session=False))
    await session.execute(update(StaffProfile).where(StaffProfile.user_id == user_id).values(bio=""))
    await session.execute(update(TimeOff).where(TimeOff.staff_id == user_id).values(reason=None))


def _linked_appointment(payload: dict[str, Any]) -> str | None:
    match = _LINKED_APPOINTMENT.search(str((payload.get("context") or {}).get("link", "")))
    return match.group(1) if match else None


async def _scrub_outbox(session: AsyncSession, user_id: uuid.UUID, traces: Traces, involvement: _Involvement) -> None:
    """Emails about the person (to the other party of their appointments, or naming them anywhere)."""
    link = func.substring(OutboxMessage.payload["context"]["link"].astext, _LINKED_APPOINTMENT.pattern)
    # A calendar attachment may fold a name across lines; JSON text shows the fold as `\r\n `.
    unfolded = func.replace(cast(OutboxMessage.payload, Text), r"\r\n ", "")
    query = select(OutboxMessage).where(
        or_(
            link.in_(_party_appointment_ids(user_id)),
            unfolded.op("~*")(traces.pattern),
            traces.matches(OutboxMessage.last_error),
        )
    )
    for message in await session.scalars(query.execution_options(populate_existing=True)):
        message.payload = _scrubbed_payload(message.payload, traces, involvement)
        if message.last_error:
            message.last_error = traces.scrub(message.last_error)


def _scrubbed_payload(payload: dict[str, Any], traces: Traces, involvement: _Involvement) -> dict[str, Any]:
    context = dict(payload.get("context") or {})
    appointment_id = _linked_appointment(payload)
    if appointment_id in involvement.notes_erased and context.get("notes"):
        context["notes"] = ""
    if appointment_id in involvement.reason_erased and context.get("reason"):
        context["reason"] = ""
    attachments = [
        {**a, "content": unfold(a["content"])} if _is_calendar(a) else a for a in payload.get("attachments") or []
    ]
    scrubbed = traces.scrub({**payload, "context": context, **({"attachments": attachments} if attachments else {})})
    for attachment in scrubbed.get("attachments") or []:
        if _is_calendar(attachment):
            attachment["content"] = refold(attachment["content"])
    return scrubbed


def _is_calendar(attachment: dict[str, Any]) -> bool:
    return str(attachment.get("mime_type", "")).startswith("text/calendar") and "content" in attachment


async def _scrub_audit_trail(
    session: AsyncSession, user_id: uuid.UUID, traces: Traces, involvement: _Involvement
) -> None:
    """Entries about the person (their account, schedule, appointments) or naming them anywhere."""
    about = or_(
        and_(AuditEntry.entity_type.in_(("user", "schedule")), AuditEntry.entity_id == str(user_id)),
        and_(AuditEntry.entity_type == "appointment", AuditEntry.entity_id.in_(_party_appointment_ids(user_id))),
    )
    query = select(AuditEntry).where(or_(about, traces.matches(AuditEntry.before), traces.matches(AuditEntry.after)))
    for entry in await session.scalars(query.execution_options(populate_existing=True)):
        for side in ("before", "after"):
            values = getattr(entry, side)
            if values:
                redacted = traces.scrub(_redact_fields(values, _fields_to_erase(entry, user_id, involvement)))
                if redacted != values:
                    setattr(entry, side, redacted)


def _fields_to_erase(entry: AuditEntry, user_id: uuid.UUID, involvement: _Involvement) -> frozenset[str]:
    if entry.entity_id == str(user_id):
        return USER_FIELDS if entry.entity_type == "user" else frozenset(_SCHEDULE_TEXT)
    if entry.entity_type == "appointment":
        fields = {"notes"} if entry.entity_id in involvement.notes_erased else set()
        return frozenset(fields | ({"cancellation_reason"} if entry.entity_id in involvement.reason_erased else set()))
    return frozenset()


def _redact_fields(values: dict[str, Any], fields: frozenset[str]) -> dict[str, Any]:
    return {k: ERASED if k in fields and v is not None else v for k, v in values.items()}
