"""One appointment, booked in four statements: the hot path of `POST /appointments` (series take
`booking.create`).

The same rules and guarantees as `booking.create` + `idempotency.run`, in fewer round trips and
without the ORM, on the request session's own asyncpg connection and transaction:

1. claim the `Idempotency-Key` (when one is sent; `idempotency.claim_or_replay`);
2. the staff member's calendar lock, shared (`calendar_lock`), in the same statement; unless the
   booking is not a plain slot (a seat, a resource, a limit: `paths`), which `booking.create` books;
3. one read, in a snapshot taken after the lock: the caller, the client, the service, whether the
   staff member offers it (and their zone), and their calendar (`one_calendar_sql`: what
   `load_calendars` reads);
4. the checks (verified, active, may book for that client, horizon, offered) in Python, then one
   statement inserting the appointment with its reminders, audit entry, the two emails' outbox rows,
   one webhook outbox row per endpoint subscribed to `appointment.created`, and the key's answer.
   The appointment row is `ON CONFLICT DO NOTHING`: a clash at the exclusion
   constraint inserts nothing at all (every other insert selects from it), so the refusal needs no
   SAVEPOINT and is stored as the key's answer like any other 4xx.

After the commit, one Redis round trip (when arq, events and the cache share a Redis) hands the
outbox rows to arq, publishes the WebSocket events and bumps the availability days.
"""

import asyncio
import json
import uuid
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from functools import partial
from typing import Any
from zoneinfo import ZoneInfo

import asyncpg
from loguru import logger
from redis.exceptions import RedisError
from sqlalchemy.ext.asyncio import AsyncSession

from app.database import after_commit, driver_connection, raw_execute, raw_fetchrow
from app.errors import AppError, EmailNotVerified, Forbidden, InactiveUser, NotFound, SlotNotOffered, SlotUnavailable
from app.metrics import BOOKING_REFUSALS
from app.models import OPEN_ENTRY_STATUSES, Appointment, OfferStatus, Role, Service, User, WaitlistStatus, service_staff
from app.redis import get_pubsub_redis, get_redis
from app.schemas.appointment import to_json
from app.schemas.common import iso_z
from app.services import audit
from app.services.booking import appointments, booking, idempotency, paths, waitlist_holds
from app.services.booking.idempotency import Answer, TryLock
from app.services.integrations import webhooks
from app.services.messaging import events, notifications, outbox, reminders
from app.services.scheduling import availability
from app.services.scheduling import availability_cache as cache
from app.services.scheduling.availability_queries import calendar_from_row, one_calendar_sql
from app.services.scheduling.calendar_lock import CALENDAR_LOCK_CLASS, calendar_lock_key
from app.utils.time import utcnow

CREATED = 201
_LOCK = "SELECT pg_advisory_xact_lock_shared($1, $2)"
# The calendar lock unless the booking (service $3, staff member $4) takes the full path: then true, and no lock.
_LOCK_UNLESS_FULL = (
    f"SELECT CASE WHEN {paths.full_path_sql('$3', '$4')} THEN true"
    " ELSE (SELECT false FROM pg_advisory_xact_lock_shared($1, $2)) END"
)

_CALENDAR_COLUMNS, _CALENDAR_JOINS = one_calendar_sql(
    staff="$4", first_day="$7::date", last_day="$8::date", lo="window_.lo", hi="window_.hi"
)
_USER = "{t}.full_name AS {t}_name, {t}.email AS {t}_email, {t}.locale AS {t}_locale, {t}.timezone AS {t}_timezone"
# $1 actor, $2 client, $3 service, $4 staff, $5/$6 the day around the start, $7/$8 the dates of overrides.
_READ = f"""
WITH service AS (
    SELECT id, name, duration_minutes, buffer_before_minutes, buffer_after_minutes, requires_confirmation,
           min_notice_minutes, max_advance_days
    FROM services WHERE id = $3 AND is_active
), window_ AS (
    SELECT $5::timestamptz - margin AS lo, $6::timestamptz + margin AS hi
    FROM (SELECT make_interval(mins => duration_minutes + buffer_before_minutes + buffer_after_minutes) AS margin
          FROM service) AS m
), staff AS (
    SELECT u.id, u.full_name, u.email, u.locale, u.timezone, coalesce(p.timezone, u.timezone) AS zone
    FROM users AS u
    JOIN {service_staff.name} AS o ON o.staff_id = u.id AND o.service_id = $3
    LEFT JOIN staff_profiles AS p ON p.user_id = u.id
    WHERE u.id = $4 AND u.role = '{Role.staff.value}' AND u.is_active AND u.deleted_at IS NULL
)
SELECT now() AS now, actor.role, actor.is_active AND actor.deleted_at IS NULL AS actor_live,
       client.id AS client_id, client.is_active AND client.deleted_at IS NULL AS client_live,
       {_USER.format(t="client")},
       service.id AS service_id, service.name AS service_name, service.duration_minutes,
       service.buffer_before_minutes, service.buffer_after_minutes, service.requires_confirmation,
       service.min_notice_minutes, service.max_advance_days,
       staff.id AS staff_id, staff.zone, {_USER.format(t="staff")},
       {_CALENDAR_COLUMNS}
FROM users AS actor
LEFT JOIN users AS client ON client.id = $2
LEFT JOIN service ON true
LEFT JOIN staff ON true
LEFT JOIN window_ ON true
{_CALENDAR_JOINS}
WHERE actor.id = $1
"""

_CREATED_EVENT = "appointment.created"
_OPEN_ENTRIES = ", ".join(f"'{status.value}'" for status in OPEN_ENTRY_STATUSES)
# Everything the booking writes, or (a clash at the exclusion constraint) nothing. The webhook rows
# (`webhooks.emit`'s, one per endpoint subscribed to appointment.created) come from the same statement,
# and so does leaving the service's waitlist (`waitlist_holds.close_for_bookings`: the client's open
# entries become `booked`, their holds are released).
_INSERT = f"""
WITH appointment AS (
    INSERT INTO appointments (id, client_id, staff_id, service_id, starts_at, ends_at, blocked_from, blocked_until,
                              status, notes, sequence, created_at, updated_at)
    VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, 0, $11, $11)
    ON CONFLICT DO NOTHING
    RETURNING id
), reminder AS (
    INSERT INTO reminders (appointment_id, offset_minutes, due_at)
    SELECT appointment.id, due.minutes, due.at
    FROM appointment, unnest($12::int[], $13::timestamptz[]) AS due(minutes, at)
), audit AS (
    INSERT INTO audit_log (actor_id, action, entity_type, entity_id, after)
    SELECT $14, 'appointment.create', 'appointment', appointment.id::text, $15::jsonb FROM appointment
), email AS (
    INSERT INTO outbox (kind, payload, attempts)
    SELECT 'email', message.payload, 0
    FROM appointment, jsonb_array_elements($16::jsonb) WITH ORDINALITY AS message(payload, n)
    ORDER BY message.n
    RETURNING id
), webhook AS (
    INSERT INTO outbox (kind, payload, attempts)
    SELECT '{webhooks.KIND}', jsonb_build_object(
               'endpoint_id', e.id::text,
               'webhook_id', 'msg_' || replace(gen_random_uuid()::text, '-', ''),
               'type', '{_CREATED_EVENT}',
               'people', jsonb_build_array($2::text, $3::text),
               'body', jsonb_build_object('type', '{_CREATED_EVENT}', 'timestamp', $19::text, 'data', $17::jsonb)), 0
    FROM appointment, webhook_endpoints AS e
    WHERE e.is_active AND '{_CREATED_EVENT}' = ANY(e.event_types)
    ORDER BY e.id
    RETURNING id
), waiting AS (
    UPDATE waitlist_entries SET status = '{WaitlistStatus.booked.value}', updated_at = now()
    WHERE client_id = $2 AND service_id = $4 AND status IN ({_OPEN_ENTRIES}) AND EXISTS (SELECT FROM appointment)
    RETURNING id
), released AS (
    UPDATE waitlist_offers SET status = '{OfferStatus.withdrawn.value}', updated_at = now()
    WHERE entry_id IN (SELECT id FROM waiting) AND status = '{OfferStatus.offered.value}'
    RETURNING staff_id, blocked_from, blocked_until
), answer AS (
    UPDATE idempotency_keys SET status = 'done', response_status = {CREATED}, response_body = $17::json
    WHERE user_id = $14 AND key = $18 AND EXISTS (SELECT FROM appointment)
)
SELECT EXISTS (SELECT FROM appointment) AS booked,
       ARRAY(SELECT id FROM email UNION ALL SELECT id FROM webhook ORDER BY id) AS outbox_ids,
       ARRAY(SELECT ARRAY[staff_id::text, blocked_from::text, blocked_until::text] FROM released) AS released
"""


async def book(
    session: AsyncSession,
    actor: User,
    data: Any,
    *,
    key: str | None,
    fingerprint: str,
    error_body: Callable[[AppError], Any],
) -> Answer:
    """Book `data` (an `AppointmentCreate` without recurrence) once per (caller, key, request);
    `booking.create` books it instead when it is not a plain slot (`paths`)."""

    async def full_path() -> Any:
        return to_json(await booking.create(session, actor, data))

    lock = (CALENDAR_LOCK_CLASS, calendar_lock_key(data.staff_id))
    if key is None:
        if paths.always_full_path() or not actor.is_verified:
            return Answer(CREATED, await full_path())
        connection = await driver_connection(session)
        routed = await raw_fetchrow(connection, _LOCK_UNLESS_FULL, *lock, data.service_id, data.staff_id)
        if routed is not None and routed[0]:
            return Answer(CREATED, await full_path())
        locked = True
    else:
        try_lock = None if paths.always_full_path() else TryLock(*lock, data.service_id, data.staff_id)
        replay, got = await idempotency.claim_or_replay(session, actor.id, key, fingerprint, try_lock=try_lock)
        if replay is not None:
            return replay
        if try_lock is None or got is None:
            return await idempotency.run_claimed(session, actor.id, key, CREATED, full_path, error_body)
        locked = got
    try:
        return await _book(session, actor, data, key, None if locked else lock)
    except AppError as exc:
        BOOKING_REFUSALS.labels(exc.code).inc()  # as `booking.create` counts them (a replay returned above)
        if key is None or not idempotency.storable(exc):
            raise
        answer = Answer(exc.status, error_body(exc), headers=exc.headers)  # nothing was written: nothing to undo
        await idempotency.finish(session, actor.id, key, answer)
        return answer


async def _book(session: AsyncSession, actor: User, data: Any, key: str | None, lock: tuple[int, int] | None) -> Answer:
    """`lock`: the calendar lock still to take (None: the claim took it already)."""
    if not actor.is_verified:
        raise EmailNotVerified("Verify your email address before booking")
    connection = await driver_connection(session)
    if lock is not None:
        await raw_execute(connection, _LOCK, *lock)
    starts_at = data.starts_at.astimezone(UTC)
    lo, hi = starts_at - timedelta(days=1), starts_at + timedelta(days=1)
    client_id = data.client_id or actor.id
    row = await raw_fetchrow(
        connection,
        _READ,
        actor.id,
        client_id,
        data.service_id,
        data.staff_id,
        lo,
        hi,
        (lo - timedelta(days=2)).date(),
        (hi + timedelta(days=2)).date(),
    )
    service, client, staff = _checked(row, actor, client_id, data.staff_id)
    appointments.ensure_within_horizon(service, starts_at)
    calendar = calendar_from_row(staff.id, row["zone"], row)
    if not availability.offers(calendar, availability.rules_for(service), starts_at, utcnow()):
        await appointments.ensure_offered(session, service, staff.id, [starts_at], staff={staff.id: row["zone"]})
    appointment = appointments.new_appointment(service, client, staff.id, starts_at, notes=data.notes)
    appointment.created_at = appointment.updated_at = row["now"]
    return await _insert(session, connection, actor, appointment, service, client, staff, row["zone"], key)


def _checked(row: asyncpg.Record | None, actor: User, client_id: uuid.UUID, staff_id: uuid.UUID):
    """The read's refusals, in `booking.create`'s order; else the service, client and staff member."""
    if row is None or not row["actor_live"]:
        raise InactiveUser()
    if client_id != actor.id:
        if row["role"] != Role.admin and not (row["role"] == Role.staff and staff_id == actor.id):
            raise Forbidden("Only admins, and staff in their own calendar, may book for someone else")
        if row["client_id"] is None or not row["client_live"]:
            raise NotFound("No such client")
    if row["service_id"] is None:
        raise NotFound("No such service")
    if row["staff_id"] is None:
        raise SlotNotOffered("This staff member does not provide this service")
    service = Service(
        id=row["service_id"],
        name=row["service_name"],
        duration_minutes=row["duration_minutes"],
        buffer_before_minutes=row["buffer_before_minutes"],
        buffer_after_minutes=row["buffer_after_minutes"],
        requires_confirmation=row["requires_confirmation"],
        min_notice_minutes=row["min_notice_minutes"],
        max_advance_days=row["max_advance_days"],
    )
    return service, _party(client_id, row, "client"), _party(staff_id, row, "staff")


def _party(user_id: uuid.UUID, row: asyncpg.Record, prefix: str) -> User:
    """A detached `User` carrying what the emails need (never added to the session)."""
    return User(
        id=user_id,
        full_name=row[f"{prefix}_name"],
        email=row[f"{prefix}_email"],
        locale=row[f"{prefix}_locale"],
        timezone=row[f"{prefix}_timezone"],
        deleted_at=None,
    )


async def _insert(
    session: AsyncSession,
    connection: asyncpg.Connection,
    actor: User,
    appointment: Appointment,
    service: Service,
    client: User,
    staff: User,
    zone: str,
    key: str | None,
) -> Answer:
    body = to_json(appointment)
    due = reminders.due_times(appointment.starts_at, utcnow())
    emails = notifications.payloads(notifications.BOOKED, [appointment], service, client, staff, method="REQUEST")
    row = await raw_fetchrow(
        connection,
        _INSERT,
        appointment.id,
        appointment.client_id,
        appointment.staff_id,
        appointment.service_id,
        appointment.starts_at,
        appointment.ends_at,
        appointment.blocked_from,
        appointment.blocked_until,
        appointment.status,
        appointment.notes,
        appointment.created_at,
        list(due),
        list(due.values()),
        actor.id,
        json.dumps(audit.snapshot(appointment)),
        json.dumps(emails),
        json.dumps(body),
        key,
        iso_z(appointment.created_at),
    )
    assert row is not None
    if not row["booked"]:
        raise SlotUnavailable(conflicts=[iso_z(appointment.starts_at)])
    if row["released"]:  # the client's holds for this service, released: their slots pass on
        waitlist_holds.freed(session, [(uuid.UUID(staff), *_instants(a, b)) for staff, a, b in row["released"]])
    appointments.count_transition(session, appointments.NEW, appointment.status)
    message = events.encode("appointment.created", body)
    dates = cache.touched_dates([(appointment.blocked_from, appointment.blocked_until)], ZoneInfo(zone))
    after_commit(
        session,
        partial(
            hand_over,
            list(row["outbox_ids"]),
            [(user_id, message) for user_id in dict.fromkeys([appointment.client_id, appointment.staff_id])],
            {appointment.staff_id: dates},
        ),
    )
    return Answer(CREATED, body)


def _instants(*values: str) -> tuple[datetime, ...]:
    """timestamptz text as PostgreSQL writes it (`2026-12-03 09:00:00+00`)."""
    return tuple(datetime.fromisoformat(value) for value in values)


async def hand_over(
    outbox_ids: list[int], messages: list[tuple[uuid.UUID, str]], bumps: dict[uuid.UUID, set[Any] | None]
) -> None:
    """After the commit: the rows to arq, the events to the sockets, the days' versions bumped — one
    pipeline per Redis involved (one in all by default), sent side by side.

    Best effort like every after-commit action: the outbox relay delivers rows that never reached
    arq, and cached days expire on their own (`CACHE_SECONDS`)."""
    app_redis, pubsub = get_redis(), get_pubsub_redis()
    queue = app_redis if outbox.queue_redis_is_app_redis() else await outbox.get_arq_pool()
    pipes: dict[int, Any] = {}

    def pipe_of(client: Any) -> Any:
        if id(client) not in pipes:
            pipes[id(client)] = client.pipeline(transaction=False)
        return pipes[id(client)]

    if outbox_ids:
        outbox.enqueue_on(pipe_of(queue), outbox_ids)
    events.publish_on(pipe_of(pubsub), messages)
    cache.bump_on(pipe_of(app_redis), bumps)
    sends = [pipe.execute() for pipe in pipes.values()]
    results = [await _outcome(sends[0])] if len(sends) == 1 else await asyncio.gather(*sends, return_exceptions=True)
    for result in results:
        if isinstance(result, RedisError | OSError):
            logger.warning("after-commit hand-over of a booking failed: {}", result)
        elif isinstance(result, BaseException):
            raise result


async def _outcome(send: Any) -> Any:
    try:
        return await send
    except Exception as exc:
        return exc
