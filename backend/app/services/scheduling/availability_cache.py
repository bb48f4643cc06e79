"""The availability cache: free starts per staff member, local day and service rules, by version.

Redis keeps one hash per staff member, `availability:{staff}` (one key: cluster-safe, one round trip):
- `v`: the staff version, bumped by anything that can move every day (weekly hours, zone);
- `d:{date}`: that local date's version (in the staff member's zone), bumped by every booking,
  time off or override that touches the date (a booking's blocked range includes its buffers);
- `s:{rules}:{date}`: that day's free starts for one set of rules (duration, buffers, step),
  as `{tag}|{computed at}|{start},{start},...`, where the tag is the versions it was computed under.

A day's slots can be blocked by a booking or time off on a neighbouring day (through the service's
duration and buffers), so an entry's tag holds the staff version and the versions of every date
within `reach_days` of it. An entry counts only while its tag matches the current versions and it
is younger than `CACHE_SECONDS` (the fallback should a bump ever be lost). Minimum notice and
maximum advance depend on the clock, not the data: they are applied when reading, so entries hold
whole days and any window reuses them.

Never stale: versions are read *before* the data is loaded (READ COMMITTED: each query sees what was
committed when it began), every change bumps once its transaction has committed, so an entry built
from data older than a change is filed under a tag that no longer matches.
"""

import hashlib
import time as clock
import uuid
from collections.abc import Iterable, Mapping, Sequence
from datetime import UTC, date, datetime, time, timedelta
from zoneinfo import ZoneInfo

from loguru import logger
from redis.asyncio.client import Pipeline
from redis.asyncio.cluster import ClusterPipeline
from redis.exceptions import RedisError

from app.redis import get_redis
from app.services.scheduling.availability_engine import ServiceRules
from app.utils.time import fixed_offset, local_bound_to_utc, timestamp

CACHE_SECONDS = 30
HASH_SECONDS = 24 * 3600  # versions outlive every entry filed under them
_DAY = timedelta(days=1)
_SECOND = timedelta(seconds=1)
_EPOCH_ORDINAL = date(1970, 1, 1).toordinal()
_SHORTEST_DAY = timedelta(hours=23)  # a local day is at least this long (a clock change takes an hour)
Versions = dict[str, str]


def hash_key(staff_id: uuid.UUID) -> str:
    return f"availability:{staff_id}"


def rules_id(rules: ServiceRules) -> str:
    """What a day's free starts depend on besides the calendar (notice and advance are applied later)."""
    material = f"{rules.duration}|{rules.buffer_before}|{rules.buffer_after}|{rules.step}"
    return hashlib.sha256(material.encode()).hexdigest()[:12]


def reach_days(rules: ServiceRules) -> int:
    """How many dates away a booking or time off can still block a slot of these rules."""
    return (rules.duration + rules.buffer_before + rules.buffer_after) // _SHORTEST_DAY + 1


def day_bounds(day: date, zone: ZoneInfo) -> tuple[int, int]:
    """[local midnight, next local midnight) of `day`, in epoch seconds."""
    return local_midnight(day, zone), local_midnight(day + _DAY, zone)


def local_midnight(day: date, zone: ZoneInfo) -> int:
    """The first instant of a local date, in epoch seconds (the end of the gap if the clocks skip midnight)."""
    offset = fixed_offset(day, zone)
    if offset is None:  # the clocks change that day: the general (slower) rule
        return timestamp(local_bound_to_utc(day, time(0), zone))
    return (day.toordinal() - _EPOCH_ORDINAL) * 86400 - offset // _SECOND


def dates_between(first: date, last: date) -> list[date]:
    return [first + timedelta(days=n) for n in range((last - first).days + 1)]


def touched_dates(ranges: Iterable[tuple[datetime, datetime]], zone: ZoneInfo) -> set[date]:
    """Every local date that the ranges [start, end) overlap in `zone`."""
    dates: set[date] = set()
    for start, end in ranges:
        last = max(start, end - timedelta(microseconds=1))
        dates.update(dates_between(start.astimezone(zone).date(), last.astimezone(zone).date()))
    return dates


# --- reading and writing -------------------------------------------------------------------------


class _Fields(dict[date, str]):
    """Hash field names by date, each built once (staff members of one zone share their dates)."""

    def __init__(self, prefix: str) -> None:
        super().__init__()
        self.prefix = prefix

    def __missing__(self, day: date) -> str:
        name = self[day] = f"{self.prefix}{day}"
        return name


async def read_versions(wanted: Mapping[uuid.UUID, Sequence[date]]) -> dict[uuid.UUID, list[str]] | None:
    """Per staff member: the staff version, then these dates' versions ("0" if never bumped);
    None when Redis is down."""
    fields = _Fields("d:")
    try:
        async with get_redis().pipeline(transaction=False) as pipe:
            for staff_id, dates in wanted.items():
                pipe.hmget(hash_key(staff_id), ["v", *map(fields.__getitem__, dates)])
            replies = await pipe.execute()
    except (RedisError, OSError):
        return None
    return {staff_id: [value or "0" for value in reply] for staff_id, reply in zip(wanted, replies, strict=True)}


def tags(versions: list[str], days: Sequence[date], reach: int, zone: str) -> dict[date, str]:
    """Each day's tag, from `read_versions` for the dates from `reach` before the first day to
    `reach` after the last: the zone its dates are read in (an account's zone may change without a
    schedule change), the staff version and the versions of the dates around that day."""
    staff, around = f"{zone}:{versions[0]}", versions[1:]
    return {day: staff + ":" + ".".join(around[n : n + 2 * reach + 1]) for n, day in enumerate(days)}


async def read_days(
    wanted: Mapping[uuid.UUID, Sequence[date]], rules: str, tags: Mapping[uuid.UUID, Mapping[date, str]]
) -> dict[uuid.UUID, dict[date, list[int]]]:
    """The cached free starts of these days that are still valid (tag matches, young enough)."""
    try:
        async with get_redis().pipeline(transaction=False) as pipe:
            fields = _Fields(f"s:{rules}:")
            for staff_id, dates in wanted.items():
                pipe.hmget(hash_key(staff_id), list(map(fields.__getitem__, dates)))
            replies = await pipe.execute()
    except (RedisError, OSError):
        return {}
    oldest = clock.time() - CACHE_SECONDS
    found: dict[uuid.UUID, dict[date, list[int]]] = {}
    for (staff_id, dates), reply in zip(wanted.items(), replies, strict=True):
        days = found[staff_id] = {}
        for day, raw in zip(dates, reply, strict=True):
            if raw is None:
                continue
            entry_tag, computed_at, starts = raw.split("|", 2)
            if entry_tag == tags[staff_id][day] and float(computed_at) > oldest:
                days[day] = [int(s) for s in starts.split(",")] if starts else []
    return found


async def write_days(
    computed: Mapping[uuid.UUID, Mapping[date, list[int]]], rules: str, tags: Mapping[uuid.UUID, Mapping[date, str]]
) -> None:
    """File each computed day under the tag read before its data was loaded; prune past days."""
    now = f"{clock.time():.3f}"
    today = datetime.now(UTC).date()
    fields = _Fields(f"s:{rules}:")
    stale = [fields[today - timedelta(days=n)] for n in range(2, 10)]
    try:
        async with get_redis().pipeline(transaction=False) as pipe:
            for staff_id, days in computed.items():
                if not days:
                    continue
                name = hash_key(staff_id)
                pipe.hdel(name, *stale)
                staff_tags = tags[staff_id]
                entries = {
                    fields[day]: f"{staff_tags[day]}|{now}|{','.join(map(str, starts))}" for day, starts in days.items()
                }
                pipe.hset(name, mapping=entries)
                pipe.expire(name, HASH_SECONDS)
            await pipe.execute()
    except (RedisError, OSError):
        logger.warning("could not cache availability days")


# --- invalidation --------------------------------------------------------------------------------


async def bump(staff_dates: Mapping[uuid.UUID, set[date] | None]) -> None:
    """Bump these dates' versions (None: the staff version, which every day's entries depend on)."""
    try:
        async with get_redis().pipeline(transaction=False) as pipe:
            bump_on(pipe, staff_dates)
            await pipe.execute()
    except (RedisError, OSError):
        logger.warning("could not bump availability versions for {}", list(staff_dates))


def bump_on(pipe: Pipeline | ClusterPipeline, staff_dates: Mapping[uuid.UUID, set[date] | None]) -> None:
    """`bump`'s commands, added to a pipeline of `get_redis()` that the caller sends."""
    for staff_id, dates in staff_dates.items():
        name = hash_key(staff_id)
        if dates is None:
            pipe.hincrby(name, "v", 1)
        else:
            for day in sorted(dates):
                pipe.hincrby(name, f"d:{day}", 1)
        pipe.expire(name, HASH_SECONDS)


async def staff_version(staff_id: uuid.UUID) -> str | None:
    """The staff version (None before the first whole bump)."""
    return await get_redis().hget(hash_key(staff_id), "v")
