"""GDPR export: every row about the person, with nobody else's contact details."""

import uuid
from typing import Any

from jinja2 import TemplateError
from sqlalchemy import Text, and_, cast, or_, select
from sqlalchemy.ext.asyncio import AsyncSession

from app.models import (
    ActionToken,
    Appointment,
    AppointmentSeries,
    AuditEntry,
    CalendarBusyBlock,
    CalendarConnection,
    CalendarFeed,
    DateOverride,
    OutboxMessage,
    Reminder,
    Service,
    StaffProfile,
    TimeOff,
    User,
    WaitlistEntry,
    WaitlistOffer,
    WeeklyInterval,
    service_staff,
)
from app.schemas.appointment import AppointmentOut
from app.schemas.calendar_connection import CalendarConnectionOut
from app.schemas.export import (
    ExportActionToken,
    ExportAppointment,
    ExportAuditEntry,
    ExportBusyBlock,
    ExportCalendarConnection,
    ExportEmail,
    ExportReminder,
    ExportSeries,
    ExportService,
    ExportStaff,
    ExportWaitlistEntry,
    ExportWebhookDelivery,
    UserExport,
)
from app.schemas.feed import ExportCalendarFeed
from app.schemas.staff import OverrideOut, TimeOffOut
from app.schemas.staff import WeeklyInterval as WeeklyIntervalOut
from app.schemas.user import UserOut
from app.schemas.waitlist import WaitlistEntryOut, WaitlistOfferOut
from app.services.integrations import webhook_deliveries
from app.services.messaging import mailer


async def export(session: AsyncSession, user: User) -> UserExport:
    return UserExport(
        user=UserOut.model_validate(user),
        email_verified_at=user.email_verified_at,
        updated_at=user.updated_at,
        appointments=await _appointments(session, user.id),
        series=await _series(session, user.id),
        staff=await _staff(session, user.id),
        audit_entries=await _audit_entries(session, user.id),
        emails=await _emails(session, user.email),
        reminders=await _reminders(session, user.id),
        action_tokens=[
            ExportActionToken.model_validate(token)
            for token in await session.scalars(
                select(ActionToken).where(ActionToken.user_id == user.id).order_by(ActionToken.created_at)
            )
        ],
        calendar_feed=await _calendar_feed(session, user.id),
        calendar_connections=await _calendar_connections(session, user.id),
        webhook_deliveries=[
            ExportWebhookDelivery.model_validate(webhook_deliveries.export_view(row))
            for row in await webhook_deliveries.of_person(session, user.id)
        ],
        waitlist=await _waitlist(session, user.id),
    )


async def _waitlist(session: AsyncSession, user_id: uuid.UUID) -> list[ExportWaitlistEntry]:
    entries = await session.scalars(
        select(WaitlistEntry).where(WaitlistEntry.client_id == user_id).order_by(WaitlistEntry.created_at)
    )
    offers: dict[uuid.UUID, list[WaitlistOfferOut]] = {}
    query = select(WaitlistOffer).where(WaitlistOffer.client_id == user_id).order_by(WaitlistOffer.created_at)
    for offer in await session.scalars(query):
        offers.setdefault(offer.entry_id, []).append(WaitlistOfferOut.model_validate(offer))
    return [
        ExportWaitlistEntry.model_validate(
            WaitlistEntryOut.model_validate(entry).model_dump() | {"offers": offers.get(entry.id, [])}
        )
        for entry in entries
    ]


async def _calendar_feed(session: AsyncSession, user_id: uuid.UUID) -> ExportCalendarFeed | None:
    feed = await session.get(CalendarFeed, user_id)
    return ExportCalendarFeed.model_validate(feed) if feed else None


async def _calendar_connections(session: AsyncSession, user_id: uuid.UUID) -> list[ExportCalendarConnection]:
    connections = await session.scalars(
        select(CalendarConnection).where(CalendarConnection.staff_id == user_id).order_by(CalendarConnection.created_at)
    )
    blocks = await session.execute(
        select(CalendarBusyBlock.connection_id, CalendarBusyBlock.starts_at, CalendarBusyBlock.ends_at)
        .where(CalendarBusyBlock.staff_id == user_id)
        .order_by(CalendarBusyBlock.starts_at)
    )
    by_connection: dict[uuid.UUID, list[ExportBusyBlock]] = {}
    for connection_id, starts_at, ends_at in blocks:
        by_connection.setdefault(connection_id, []).append(ExportBusyBlock(starts_at=starts_at, ends_at=ends_at))
    return [
        ExportCalendarConnection.model_validate(
            {**CalendarConnectionOut.model_validate(row).model_dump(), "busy_blocks": by_connection.get(row.id, [])}
        )
        for row in connections
    ]


def _role(user_id: uuid.UUID, client_id: uuid.UUID) -> str:
    return "client" if client_id == user_id else "staff"


def _party_ids(user_id: uuid.UUID) -> Any:
    party = or_(Appointment.client_id == user_id, Appointment.staff_id == user_id)
    return select(Appointment.id).where(party)


async def _appointments(session: AsyncSession, user_id: uuid.UUID) -> list[ExportAppointment]:
    rows = await session.execute(
        select(Appointment, Service.name, User.full_name)
        .join(Service, Service.id == Appointment.service_id)
        .join(User, User.id == Appointment.staff_id)
        .where(or_(Appointment.client_id == user_id, Appointment.staff_id == user_id))
        .order_by(Appointment.starts_at, Appointment.id)
    )
    return [
        ExportAppointment(
            **AppointmentOut.model_validate(appointment).model_dump(),
            role=_role(user_id, appointment.client_id),
            service_name=service_name,
            staff_name=staff_name,
        )
        for appointment, service_name, staff_name in rows
    ]


async def _series(session: AsyncSession, user_id: uuid.UUID) -> list[ExportSeries]:
    rows = await session.execute(
        select(AppointmentSeries, Service.name, User.full_name)
        .join(Service, Service.id == AppointmentSeries.service_id)
        .join(User, User.id == AppointmentSeries.staff_id)
        .where(or_(AppointmentSeries.client_id == user_id, AppointmentSeries.staff_id == user_id))
        .order_by(AppointmentSeries.created_at, AppointmentSeries.id)
    )
    return [
        ExportSeries(
            id=series.id,
            role=_role(user_id, series.client_id),
            rrule=series.rrule,
            client_id=series.client_id,
            staff_id=series.staff_id,
            service_id=series.service_id,
            service_name=service_name,
            staff_name=staff_name,
            created_at=series.created_at,
        )
        for series, service_name, staff_name in rows
    ]


async def _staff(session: AsyncSession, user_id: uuid.UUID) -> ExportStaff | None:
    profile = await session.get(StaffProfile, user_id)
    if profile is None:
        return None
    services = await session.execute(
        select(Service.id, Service.name)
        .join(service_staff, service_staff.c.service_id == Service.id)
        .where(service_staff.c.staff_id == user_id)
        .order_by(Service.name)
    )
    hours = await session.scalars(
        select(WeeklyInterval)
        .where(WeeklyInterval.staff_id == user_id)
        .order_by(WeeklyInterval.weekday, WeeklyInterval.start_time)
    )
    overrides = await session.scalars(
        select(DateOverride).where(DateOverride.staff_id == user_id).order_by(DateOverride.date)
    )
    time_off = await session.scalars(select(TimeOff).where(TimeOff.staff_id == user_id).order_by(TimeOff.starts_at))
    return ExportStaff(
        timezone=profile.timezone,
        bio=profile.bio,
        services=[ExportService(id=service_id, name=name) for service_id, name in services],
        weekly_hours=[WeeklyIntervalOut(weekday=h.weekday, start=h.start_time, end=h.end_time) for h in hours],
        overrides=[OverrideOut.model_validate(row) for row in overrides],
        time_off=[TimeOffOut.model_validate(row) for row in time_off],
    )


async def _audit_entries(session: AsyncSession, user_id: uuid.UUID) -> list[ExportAuditEntry]:
    appointment_ids = select(cast(Appointment.id, Text)).where(
        or_(Appointment.client_id == user_id, Appointment.staff_id == user_id)
    )
    about = or_(
        and_(AuditEntry.entity_type.in_(("user", "schedule")), AuditEntry.entity_id == str(user_id)),
        and_(AuditEntry.entity_type == "appointment", AuditEntry.entity_id.in_(appointment_ids.scalar_subquery())),
    )
    rows = await session.execute(
        select(AuditEntry, about.label("as_subject"))
        .where(or_(about, AuditEntry.actor_id == user_id))
        .order_by(AuditEntry.created_at, AuditEntry.id)
    )
    return [
        ExportAuditEntry(
            id=entry.id,
            action=entry.action,
            entity_type=entry.entity_type,
            entity_id=entry.entity_id,
            actor_id=entry.actor_id,
            as_actor=entry.actor_id == user_id,
            as_subject=bool(as_subject),
            before=entry.before if as_subject else None,
            after=entry.after if as_subject else None,
            created_at=entry.created_at,
        )
        for entry, as_subject in rows
    ]


def _subject(payload: dict[str, Any]) -> str | None:
    try:
        return mailer.render(payload["template"], payload.get("locale", "en"), payload.get("context", {})).subject
    except (TemplateError, KeyError, ValueError):
        return None


async def _emails(session: AsyncSession, email: str) -> list[ExportEmail]:
    rows = await session.scalars(
        select(OutboxMessage)
        .where(OutboxMessage.kind == "email", OutboxMessage.payload["to"].astext == email)
        .order_by(OutboxMessage.created_at, OutboxMessage.id)
    )
    return [
        ExportEmail(
            id=row.id,
            template=str(row.payload.get("template", "")),
            subject=_subject(row.payload),
            status="sent" if row.sent_at else "failed" if row.failed_at else "pending",
            attempts=row.attempts,
            created_at=row.created_at,
            sent_at=row.sent_at,
            failed_at=row.failed_at,
        )
        for row in rows
    ]


async def _reminders(session: AsyncSession, user_id: uuid.UUID) -> list[ExportReminder]:
    rows = await session.scalars(
        select(Reminder).where(Reminder.appointment_id.in_(_party_ids(user_id))).order_by(Reminder.due_at, Reminder.id)
    )
    return [ExportReminder.model_validate(row) for row in rows]
