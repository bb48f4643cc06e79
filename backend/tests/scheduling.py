"""Factories for booking tests: staff with weekly hours in their zone, services, appointments, headers."""

import uuid
from collections.abc import Iterable
from datetime import UTC, date, datetime, time, timedelta
from zoneinfo import ZoneInfo

from sqlalchemy import insert
from sqlalchemy.ext.asyncio import AsyncSession

from app.models import Appointment, Role, Service, StaffProfile, User, WeeklyInterval, service_staff
from app.schemas.common import iso_z
from tests.factories import create_user, start_session

BERLIN = ZoneInfo("Europe/Berlin")
URL = "/api/v1/appointments"


async def create_staff(
    session: AsyncSession,
    *,
    timezone: str = "Europe/Berlin",
    hours: Iterable[tuple[str, str]] = (("09:00", "17:00"),),
    weekdays: Iterable[int] = range(7),
    locale: str = "en",
    user_timezone: str | None = None,
    full_name: str | None = None,
) -> User:
    """A staff member working `hours` (local wall time in `timezone`) on every given weekday."""
    user = await create_user(
        session, role=Role.staff, timezone=user_timezone or timezone, locale=locale, full_name=full_name
    )
    session.add(StaffProfile(user_id=user.id, timezone=timezone, bio=""))
    for weekday in weekdays:
        for start, end in hours:
            session.add(
                WeeklyInterval(
                    staff_id=user.id,
                    weekday=weekday,
                    start_time=time.fromisoformat(start),
                    end_time=time.fromisoformat(end),
                )
            )
    await session.commit()
    return user


async def create_service(
    session: AsyncSession,
    staff: Iterable[User],
    *,
    name: str = "Consultation",
    duration: int = 60,
    buffer_before: int = 0,
    buffer_after: int = 0,
    requires_confirmation: bool = False,
    min_notice: int = 60,
    max_advance: int = 400,
) -> Service:
    service = Service(
        name=name,
        description="",
        duration_minutes=duration,
        buffer_before_minutes=buffer_before,
        buffer_after_minutes=buffer_after,
        requires_confirmation=requires_confirmation,
        min_notice_minutes=min_notice,
        max_advance_days=max_advance,
    )
    session.add(service)
    await session.flush()
    for member in staff:
        await session.execute(insert(service_staff).values(service_id=service.id, staff_id=member.id))
    await session.commit()
    return service


def days_ahead(days: int) -> date:
    return (datetime.now(UTC) + timedelta(days=days)).date()


def local(day: date, hour: int, minute: int = 0, zone: ZoneInfo = BERLIN) -> datetime:
    return datetime.combine(day, time(hour, minute), tzinfo=zone)


def zulu(value: datetime) -> str:
    return iso_z(value)


async def add_appointment(
    session: AsyncSession,
    client: User,
    staff: User,
    service: Service,
    starts_at: datetime,
    *,
    status: str = "confirmed",
    series_id: uuid.UUID | None = None,
    commit: bool = True,
) -> Appointment:
    """Straight into the table (no availability checks): past appointments, edge cases."""
    starts_at = starts_at.astimezone(UTC)
    ends_at = starts_at + timedelta(minutes=service.duration_minutes)
    appointment = Appointment(
        client_id=client.id,
        staff_id=staff.id,
        service_id=service.id,
        starts_at=starts_at,
        ends_at=ends_at,
        blocked_from=starts_at - timedelta(minutes=service.buffer_before_minutes),
        blocked_until=ends_at + timedelta(minutes=service.buffer_after_minutes),
        status=status,
        series_id=series_id,
        sequence=0,
    )
    session.add(appointment)
    if commit:
        await session.commit()
    return appointment


async def headers_for(user: User) -> dict[str, str]:
    return (await start_session(user)).headers


def booking_body(service: Service, staff: User, starts_at: datetime, **extra) -> dict:
    return {"service_id": str(service.id), "staff_id": str(staff.id), "starts_at": starts_at.isoformat(), **extra}
