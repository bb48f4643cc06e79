"""The one way lists are paged: a count of the filtered query, and one ordered page of it."""

from typing import Any

from sqlalchemy import Select, func, select
from sqlalchemy.ext.asyncio import AsyncSession


async def paginate(session: AsyncSession, query: Select, *order_by: Any, limit: int, offset: int) -> tuple[list, int]:
    total = await session.scalar(select(func.count()).select_from(query.subquery()))
    rows = await session.scalars(query.order_by(*order_by).limit(limit).offset(offset))
    return list(rows), total or 0
