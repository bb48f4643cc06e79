"""Demo data for `python -m app dev` and `seed-demo`: safe to run any number of times."""

from dataclasses import dataclass, field
from datetime import UTC, datetime, time, timedelta

from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncSession

from app.errors import AppError
from app.models import Appointment, Role, Service, StaffProfile, User
from app.schemas.appointment import AppointmentCreate, Recurrence
from app.schemas.staff import Schedule, WeeklyInterval
from app.services.accounts import auth, users
from app.services.booking import booking
from app.services.scheduling import availability, catalogue, schedules
from app.utils.time import utcnow

# Documented in README.md; not in app/data/common-passwords.txt. Development data only.
DEMO_PASSWORD = "c3po-demo-pass"


@dataclass(frozen=True)
class DemoAccount:
    email: str
    full_name: str
    role: Role
    timezone: str
    locale: str = "en"


DEMO_ACCOUNTS = (
    DemoAccount("admin@example.com", "Ada Admin", Role.admin, "UTC"),
    DemoAccount("alice.staff@example.com", "Alice Novak", Role.staff, "Europe/Berlin"),
    DemoAccount("boris.staff@example.com", "Boris Ivanov", Role.staff, "Europe/Moscow", "ru"),
    DemoAccount("nora.staff@example.com", "Nora Jenkins", Role.staff, "America/New_York"),
    DemoAccount("user@example.com", "Uma User", Role.user, "Europe/London"),
)


@dataclass(frozen=True)
class DemoService:
    name: str
    description: str
    duration_minutes: int
    price: str
    staff: tuple[str, ...]
    buffer_before_minutes: int = 0
    buffer_after_minutes: int = 0
    requires_confirmation: bool = False
    min_notice_minutes: int = 60
    max_advance_days: int = 60


DEMO_SERVICES = (
    DemoService(
        "Consultation",
        "A 30-minute first conversation about what you need.",
        30,
        "30.00",
        ("alice.staff@example.com", "boris.staff@example.com", "nora.staff@example.com"),
    ),
    DemoService(
        "Haircut",
        "Wash, cut and style; ten minutes to tidy up afterwards.",
        45,
        "45.00",
        ("alice.staff@example.com", "nora.staff@example.com"),
        buffer_after_minutes=10,
    ),
    DemoService(
        "Deep-tissue massage",
        "Sixty minutes; the specialist confirms each booking.",
        60,
        "80.00",
        ("boris.staff@example.com",),
        buffer_before_minutes=5,
        buffer_after_minutes=15,
        requires_confirmation=True,
        min_notice_minutes=24 * 60,
    ),
)


def _days(weekdays: range | tuple[int, ...], *hours: tuple[str, str]) -> list[WeeklyInterval]:
    return [WeeklyInterval(weekday=day, start=start, end=end) for day in weekdays for start, end in hours]


@dataclass(frozen=True)
class DemoHours:
    timezone: str
    bio: str
    intervals: list[WeeklyInterval] = field(default_factory=list)


# Weekly hours in each person's own zone (three zones, two DST calendars and one without DST).
DEMO_HOURS = {
    "alice.staff@example.com": DemoHours(
        "Europe/Berlin",
        "Stylist and colourist in Berlin, ten years behind the chair.",
        _days(range(5), ("09:00", "13:00"), ("14:00", "18:00")),
    ),
    "boris.staff@example.com": DemoHours(
        "Europe/Moscow",
        "Massage therapist; sessions in Russian or English.",
        _days((0, 2, 4), ("10:00", "19:00")) + _days((5,), ("10:00", "14:00")),
    ),
    "nora.staff@example.com": DemoHours(
        "America/New_York",
        "Consultant in New York; early mornings for European clients.",
        _days(range(1, 6), ("08:00", "12:00"), ("13:00", "16:30")),
    ),
}


async def seed_demo(session: AsyncSession) -> list[tuple[User, bool]]:
    """Create the demo accounts, catalogue and hours that are missing; answer each account and
    whether it was created now.

    Existing data is left exactly as it is (a changed password, price or schedule stays changed).
    """
    seeded: list[tuple[User, bool]] = []
    for account in DEMO_ACCOUNTS:
        user = await auth.get_user_by_email(session, account.email)
        created = user is None
        if user is None:
            user = await users.create_user(
                session,
                email=account.email,
                password=DEMO_PASSWORD,
                full_name=account.full_name,
                role=account.role,
                timezone=account.timezone,
                locale=account.locale,
            )
        seeded.append((user, created))
    accounts = {user.email: user for user, _ in seeded}
    services = await seed_catalogue(session, accounts)
    await seed_bookings(session, accounts, services)
    return seeded


def _is_staff(user: User) -> bool:
    """Still an active staff member (someone may have changed the demo account since)."""
    return user.role == Role.staff.value and user.is_active and user.deleted_at is None


async def seed_catalogue(session: AsyncSession, accounts: dict[str, User]) -> dict[str, Service]:
    """The demo services (by name) and each demo staff member's profile and weekly hours."""
    admin = accounts["admin@example.com"]
    for email, hours in DEMO_HOURS.items():
        staff = accounts[email]
        if not _is_staff(staff) or await session.get(StaffProfile, staff.id) is not None:
            continue
        week = Schedule(timezone=hours.timezone, intervals=hours.intervals)
        await schedules.replace_schedule(session, staff, staff.id, week)
        profile = await session.get(StaffProfile, staff.id)
        assert profile is not None
        profile.bio = hours.bio
    existing = {
        s.name: s
        for s in await session.scalars(select(Service).where(Service.name.in_([d.name for d in DEMO_SERVICES])))
    }
    services: dict[str, Service] = {}
    for demo in DEMO_SERVICES:
        if demo.name in existing:
            services[demo.name] = existing[demo.name]
            continue
        staff_ids = [accounts[email].id for email in demo.staff if _is_staff(accounts[email])]
        data = {name: getattr(demo, name) for name in DemoService.__dataclass_fields__ if name != "staff"}
        services[demo.name] = await catalogue.create_service(session, admin, data | {"staff_ids": staff_ids})
    return services


@dataclass(frozen=True)
class DemoBooking:
    staff: str
    service: str
    days_ahead: int  # the first free slot from this many days on
    notes: str | None = None
    rrule: str | None = None


DEMO_BOOKINGS = (
    DemoBooking("alice.staff@example.com", "Haircut", 2, "Just a trim; keep the length, please."),
    DemoBooking("boris.staff@example.com", "Deep-tissue massage", 3, "Lower back and shoulders."),  # pending
    DemoBooking("nora.staff@example.com", "Consultation", 4),
    DemoBooking("alice.staff@example.com", "Consultation", 8, "Colour planning", "FREQ=WEEKLY;COUNT=4"),
)


async def seed_bookings(session: AsyncSession, accounts: dict[str, User], services: dict[str, Service]) -> None:
    """Demo appointments between `user@example.com` and the demo staff: added with the booking work,
    through the booking service so they obey the same rules (and stay idempotent)."""
    client = accounts["user@example.com"]
    if not client.is_active or not client.is_verified or client.deleted_at is not None:
        return
    if await session.scalar(select(Appointment.id).where(Appointment.client_id == client.id).limit(1)):
        return  # booked before: leave the calendar as people have changed it since
    for demo in DEMO_BOOKINGS:
        staff, service = accounts[demo.staff], services.get(demo.service)
        if service is None or not service.is_active or not _is_staff(staff):
            continue
        start = datetime.combine(utcnow().date() + timedelta(days=demo.days_ahead), time(), tzinfo=UTC)
        slots = await availability.find_slots(session, service.id, start, start + timedelta(days=7), staff.id)
        if not slots:
            continue
        recurrence = Recurrence(rrule=demo.rrule) if demo.rrule else None
        data = AppointmentCreate(
            service_id=service.id,
            staff_id=staff.id,
            starts_at=slots[0].starts_at,
            notes=demo.notes,
            recurrence=recurrence,
        )
        try:
            async with session.begin_nested():
                await booking.create(session, client, data)
        except AppError:  # e.g. a week of the series falls on a day off someone added: skip that booking
            continue
