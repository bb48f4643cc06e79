"""How a panel form changes anything: the same service function the API calls, in one transaction,
as the signed-in admin (re-read in that transaction); a refusal is shown with the API's code."""

import uuid
from collections.abc import Awaitable, Callable
from typing import Any

from pydantic import BaseModel, ValidationError
from sqlalchemy.ext.asyncio import AsyncSession
from starlette.requests import Request

from app.database import unit_of_work
from app.errors import AppError
from app.models import User


class Refused(Exception):
    """What the panel shows above the form: `code: detail`, as the API would answer."""

    def __init__(self, code: str, detail: str) -> None:
        super().__init__(f"{code}: {detail}")
        self.code, self.detail = code, detail


def admin_id(request: Request) -> uuid.UUID:
    return request.state.admin_id


async def as_admin[T](request: Request, work: Callable[[AsyncSession, User], Awaitable[T]]) -> T:
    try:
        async with unit_of_work() as session:
            actor = await session.get(User, admin_id(request))
            assert actor is not None  # the guard has just checked them
            return await work(session, actor)
    except AppError as exc:
        raise Refused(exc.code, exc.detail) from None
    except ValidationError as exc:
        raise _invalid(exc) from None


def _invalid(exc: ValidationError) -> Refused:
    errors = "; ".join(f"{'.'.join(map(str, e['loc'])) or 'body'}: {e['msg']}" for e in exc.errors())
    return Refused("validation_error", errors)


def parse[M: BaseModel](schema: type[M], data: dict[str, Any]) -> M:
    """The API's request schema over the form's fields (empty fields left out, unknown ones dropped)."""
    fields = {k: v for k, v in data.items() if k in schema.model_fields and v not in ("", None)}
    try:
        return schema.model_validate(fields)
    except ValidationError as exc:
        raise _invalid(exc) from None
