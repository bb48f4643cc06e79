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
