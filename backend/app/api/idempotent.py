"""The `Idempotency-Key` dependency of appointment writes: run the change once, replay its answer."""

from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Annotated, Any

from fastapi import Depends, Header, Request
from fastapi.responses import JSONResponse

from app.api.deps import CurrentUser, DbSession
from app.api.problem_docs import documented
from app.errors import IdempotencyKeyInProgress, IdempotencyKeyReused
from app.models import User
from app.schemas.appointment import to_json
from app.services.booking import idempotency

REPLAY_HEADER = "Idempotent-Replayed"


@dataclass(frozen=True)
class Idempotent:
    """The request's `Idempotency-Key` context: run the change once, replay its answer afterwards."""

    session: Any
    user: User
    key: str | None
    fingerprint: str

    async def respond(
        self, status_code: int, change: Callable[[], Awaitable[Any]], serialize: Callable[[Any], Any] = to_json
    ) -> JSONResponse:
        async def operation() -> Any:
            return serialize(await change())

        answer = await idempotency.run(
            self.session,
            user_id=self.user.id,
            key=self.key,
            request_fingerprint=self.fingerprint,
            status=status_code,
            operation=operation,
        )
        headers = {REPLAY_HEADER: "true"} if answer.replayed else None
        return JSONResponse(answer.body, status_code=answer.status, headers=headers)


@documented(IdempotencyKeyReused, IdempotencyKeyInProgress, success_headers=(REPLAY_HEADER,))
async def idempotent(
    request: Request,
    user: CurrentUser,
    session: DbSession,
    key: Annotated[
        str | None,
        Header(
            alias="Idempotency-Key",
            min_length=1,
            max_length=255,
            description="Send the same key again (same body) to get the first answer instead of a second change",
        ),
    ] = None,
) -> Idempotent:
    body = await request.body()
    return Idempotent(session, user, key, idempotency.fingerprint(request.method, request.url.path, body))


IdempotentChange = Annotated[Idempotent, Depends(idempotent)]
