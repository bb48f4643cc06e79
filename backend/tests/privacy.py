"""Look for a person's traces in every column of every table, whatever tables exist by then."""

from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncSession

# Calendar files fold long lines (CRLF + space), which could split a name; JSON text shows the
# fold as the characters `\r\n `. Both forms are removed before looking.
_UNFOLD = r"replace(replace({expr}, E'\r\n ', ''), '\r\n ', '')"


async def traces_of(session: AsyncSession, *needles: str) -> list[str]:
    """`table.column: needle` for every column (any type, cast to text) holding a needle, ignoring case."""
    columns = await session.execute(
        text(
            "SELECT table_name, column_name, data_type FROM information_schema.columns "
            "WHERE table_schema = current_schema() ORDER BY table_name, ordinal_position"
        )
    )
    hits = []
    for table, column, data_type in columns.all():
        expr = f"encode(\"{column}\", 'escape')" if data_type == "bytea" else f'"{column}"::text'
        haystack = _UNFOLD.format(expr=expr)
        for needle in needles:
            found = await session.scalar(
                text(f'SELECT count(*) FROM "{table}" WHERE strpos(lower({haystack}), lower(:needle)) > 0'),
                {"needle": needle},
            )
            if found:
                hits.append(f"{table}.{column}: {needle}")
    await session.commit()
    return hits


async def column_count(session: AsyncSession) -> int:
    return await session.scalar(
        text("SELECT count(*) FROM information_schema.columns WHERE table_schema = current_schema()")
    )


async def redis_traces_of(*needles: str) -> list[str]:
    """`key: needle` for every Redis key whose name or value (string, hash, list, set) holds a needle."""
    from redis.asyncio import Redis

    from app.config import get_settings

    redis = Redis.from_url(get_settings().redis_url)  # raw bytes: arq's jobs are pickles, not text
    readers = {b"string": redis.get, b"hash": redis.hgetall, b"list": lambda k: redis.lrange(k, 0, -1)}
    readers |= {b"set": redis.smembers, b"zset": lambda k: redis.zrange(k, 0, -1)}
    hits = []
    try:
        async for key in redis.scan_iter(count=1000):
            kind = await redis.type(key)
            value = await readers[kind](key) if kind in readers else None
            parts = [key, *_flat(value)]
            haystack = b" ".join(parts).decode("utf-8", "replace").lower()
            hits += [f"{key!r}: {needle}" for needle in needles if needle.lower() in haystack]
    finally:
        await redis.aclose()
    return hits


def _flat(value: object) -> list[bytes]:
    if value is None:
        return []
    if isinstance(value, bytes):
        return [value]
    if isinstance(value, dict):
        return [part for pair in value.items() for part in pair]
    return list(value)  # a list or a set of bytes
