"""Calendar feeds: each user's secret `.ics` URL, which calendar apps subscribe to (`webcal://`).

The token is `base64url(user id ‖ version ‖ HMAC-SHA256(SECRET_KEY, user id ‖ version)[:24])`:
nothing secret is stored, so the URL can be shown again at any time; a token is checked against
`SECRET_KEY` and every key of `PREVIOUS_SECRET_KEYS` (feeds survive a key rotation while the old
key is listed), and a forged one is refused before any query. `version` is random and replaced
on rotation, so the old URL stops at once (and a feed deleted and made again never revives one).

A feed holds the user's appointments as client and as staff member from 30 days back to the
furthest booking horizon a service may have, with the UID, SEQUENCE and STATUS of the emailed
invites; a cancelled one stays as STATUS:CANCELLED for FEED_CANCELLED_KEEP_DAYS after its
cancellation, so subscribed apps remove it. Its ETag is a digest of the content; Last-Modified
moves only when that digest does.
"""

import hashlib
import hmac
import re
import secrets
import uuid
from dataclasses import dataclass, replace
from datetime import datetime, timedelta
from email.utils import parsedate_to_datetime

from sqlalchemy import case, func, or_, select, update
from sqlalchemy.dialects.postgresql import insert
from sqlalchemy.ext.asyncio import AsyncSession
from sqlalchemy.orm import aliased

from app.config import get_settings
from app.errors import NotFound, RateLimited
from app.metrics import FEED_REQUESTS
from app.models import Appointment, AppointmentStatus, CalendarFeed, Resource, Service, User
from app.services import audit, rate_limit
from app.services.booking.series import MAX_HORIZON
from app.services.messaging.notifications import calendar_event
from app.utils import b64url
from app.utils.ics import CalendarEvent, build_feed
from app.utils.keys import keyring
from app.utils.time import utcnow

FEED_NAME = "c3po appointments"
PAST = timedelta(days=30)
_PURPOSE = b"calendar feed"
_PAYLOAD_BYTES = 16 + 4  # user id, version
_MAC_BYTES = 24
TOKEN_LENGTH = 59  # unpadded base64url of 44 bytes
_TOKEN = re.compile(r"[A-Za-z0-9_-]{59}")
_MAX_VERSION = 2**31  # an int column


class FeedNotFound(NotFound):
    """Unknown, rotated or malformed, or its user is deactivated or erased: never said which."""

    code, title = "calendar_feed_not_found", "No calendar feed at this address"


def _payload(user_id: uuid.UUID, version: int) -> bytes:
    return user_id.bytes + version.to_bytes(4, "big")


def token_for(feed: CalendarFeed) -> str:
    payload = _payload(feed.user_id, feed.version)
    mac = keyring().current.mac(_PURPOSE, payload)[:_MAC_BYTES]
    return b64url.encode(payload + mac)


def parse_token(token: str) -> tuple[uuid.UUID, int] | None:
    """The (user id, version) a token was made for, if one of our keys made it."""
    raw = b64url.decode(token) if _TOKEN.fullmatch(token) else None
    if raw is None:
        return None
    payload, mac = raw[:_PAYLOAD_BYTES], raw[_PAYLOAD_BYTES:]
    keys = keyring()
    if not any(
        hmac.compare_digest(mac, key.mac(_PURPOSE, payload)[:_MAC_BYTES]) for key in (keys.current, *keys.previous)
    ):
        return None
    return uuid.UUID(bytes=payload[:16]), int.from_bytes(payload[16:], "big")


def feed_urls(feed: CalendarFeed) -> tuple[str, str]:
    """The feed's https URL and the same as `webcal://` (which opens the subscribe dialog)."""
    url = f"{get_settings().public_api_url.rstrip('/')}/api/v1/calendar-feeds/{token_for(feed)}.ics"
    return url, re.sub(r"^https?://", "webcal://", url)


def _new_version(old: int | None = None) -> int:
    while (version := secrets.randbelow(_MAX_VERSION)) == old:
        continue
    return version


async def get_or_create(session: AsyncSession, user: User, *, lock: bool = False) -> CalendarFeed:
    """The user's feed, made on first use (two concurrent first uses make one); `lock` holds its row
    until the transaction ends, so concurrent rotations apply one after the other (the last one's URL
    is the one that works)."""
    statement = insert(CalendarFeed).values(user_id=user.id, version=_new_version())
    await session.execute(statement.on_conflict_do_nothing(index_elements=[CalendarFeed.user_id]))
    query = select(CalendarFeed).where(CalendarFeed.user_id == user.id)
    feed = await session.scalar((query.with_for_update() if lock else query).execution_options(populate_existing=True))
    assert feed is not None
    return feed


async def rotate(session: AsyncSession, user: User, *, actor: User) -> CalendarFeed:
    """A new URL for the user's feed; the old one answers 404 from now on."""
    feed = await get_or_create(session, user, lock=True)
    old = feed.version
    feed.version, feed.rotated_at = _new_version(old), utcnow()
    await session.flush()
    await audit.record(session, actor_id=actor.id, action="calendar_feed.rotate", entity_type="user", entity_id=user.id)
    return feed


async def find(session: AsyncSession, user_id: uuid.UUID) -> CalendarFeed | None:
    return await session.get(CalendarFeed, user_id)


@dataclass(frozen=True)
class FeedFile:
    content: str | None  # None: the caller's copy is current (304)
    etag: str
    last_modified: datetime


async def fetch(
    session: AsyncSession, token: str, *, if_none_match: str | None, if_modified_since: str | None
) -> FeedFile:
    """The feed at `token`, or None as content when the caller's validators still match; counted by outcome."""
    try:
        found = await _fetch(session, token, if_none_match, if_modified_since)
    except (FeedNotFound, RateLimited) as refused:
        FEED_REQUESTS.labels(str(refused.status)).inc()
        raise
    FEED_REQUESTS.labels("304" if found.content is None else "200").inc()
    return found


async def _fetch(
    session: AsyncSession, token: str, if_none_match: str | None, if_modified_since: str | None
) -> FeedFile:
    parsed = parse_token(token)
    if parsed is None:
        raise FeedNotFound()
    user_id, version = parsed
    await rate_limit.hit(get_settings().feed_requests_per_token, "calendar-feed", "token", token)
    user = await session.scalar(
        select(User)
        .join(CalendarFeed, CalendarFeed.user_id == User.id)
        .where(User.id == user_id, CalendarFeed.version == version, User.is_active, User.deleted_at.is_(None))
    )
    if user is None:
        raise FeedNotFound()
    content = build_feed(
        await _events(session, user), name=FEED_NAME, refresh_minutes=get_settings().feed_refresh_minutes
    )
    digest = hashlib.sha256(content.encode()).hexdigest()[:32]
    changed_at = await _record_fetch(session, user_id, digest)
    etag = f'"{digest}"'
    fresh = _not_modified(etag, changed_at, if_none_match, if_modified_since)
    return FeedFile(None if fresh else content, etag, changed_at)


async def _events(session: AsyncSession, viewer: User) -> list[CalendarEvent]:
    client, staff = aliased(User), aliased(User)
    now = utcnow()
    cancelled_since = now - timedelta(days=get_settings().feed_cancelled_keep_days)
    rows = await session.execute(
        select(Appointment, Service, client, staff, Resource.name)
        .join(Service, Service.id == Appointment.service_id)
        .outerjoin(Resource, Resource.id == Appointment.resource_id)
        .join(client, client.id == Appointment.client_id)
        .join(staff, staff.id == Appointment.staff_id)
        .where(
            or_(Appointment.client_id == viewer.id, Appointment.staff_id == viewer.id),
            Appointment.starts_at >= now - PAST,
            Appointment.starts_at <= now + MAX_HORIZON,
            # A cancellation is an appointment's last change: `updated_at` is when it was cancelled.
            or_(Appointment.status != AppointmentStatus.cancelled, Appointment.updated_at >= cancelled_since),
        )
        .order_by(Appointment.starts_at, Appointment.id)
    )
    return [_feed_event(calendar_event(*row, viewer=viewer), row[0]) for row in rows]


def _feed_event(event: CalendarEvent, appointment: Appointment) -> CalendarEvent:
    """A published event names no attendee (RFC 5546 PUBLISH) and is stamped with its last change,
    so an unchanged feed is byte for byte the same and its ETag holds."""
    return replace(event, stamp=appointment.updated_at, attendee_email=None, attendee_name=None)


async def _record_fetch(session: AsyncSession, user_id: uuid.UUID, digest: str) -> datetime:
    """Note the fetch; when the content differs from the last one served, move Last-Modified on, by
    at least a second (HTTP dates have whole seconds: two changes in one second would share one)."""
    changed = CalendarFeed.content_digest.is_distinct_from(digest)
    later = func.greatest(func.date_trunc("second", func.now()), CalendarFeed.content_changed_at + timedelta(seconds=1))
    statement = (
        update(CalendarFeed)
        .where(CalendarFeed.user_id == user_id)
        .values(
            content_changed_at=case((changed, func.date_trunc("second", later)), else_=CalendarFeed.content_changed_at),
            content_digest=digest,
            last_fetched_at=func.now(),
        )
        .returning(CalendarFeed.content_changed_at)
    )
    return (await session.execute(statement.execution_options(synchronize_session=False))).scalar_one()


def _not_modified(etag: str, changed_at: datetime, if_none_match: str | None, if_modified_since: str | None) -> bool:
    """RFC 9110 §13.2.2: If-None-Match decides when sent (weak comparison); else If-Modified-Since."""
    if if_none_match is not None:
        tags = {tag.strip().removeprefix("W/") for tag in if_none_match.split(",")}
        return "*" in tags or etag in tags
    if if_modified_since is not None:
        try:
            since = parsedate_to_datetime(if_modified_since)
        except (TypeError, ValueError):
            return False  # an invalid date is ignored
        return since.tzinfo is not None and changed_at <= since
    return False
