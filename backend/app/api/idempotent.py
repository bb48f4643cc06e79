"""The `Idempotency-Key` dependency of appointment writes: run the change once, replay its answer."""

import json
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Annotated, Any

from fastapi import Depends, Header, Request
from fastapi.responses import JSONResponse

from app.api.deps import CurrentUser, DbSession
from app.api.problem_docs import documented
from app.api.problems import PROBLEM_MEDIA_TYPE, problem_response
from app.errors import AppError, IdempotencyKeyInProgress, IdempotencyKeyReused
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
            error_body=_problem_body,
        )
        return self.render(answer)

    async def respond_fused(self, change: Callable[..., Awaitable[idempotency.Answer]]) -> JSONResponse:
        """For a change that handles the key itself (`change(key=, fingerprint=, error_body=)` answers)."""
        return self.render(await change(key=self.key, fingerprint=self.fingerprint, error_body=_problem_body))

    @staticmethod
    def render(answer: idempotency.Answer) -> JSONResponse:
        headers = {**answer.headers, **({REPLAY_HEADER: "true"} if answer.replayed else {})}
        media_type = PROBLEM_MEDIA_TYPE if answer.status >= 400 else "application/json"
        return JSONResponse(answer.body, status_code=answer.status, headers=headers, media_type=media_type)


def _problem_body(exc: AppError) -> Any:
    """The problem document the error handler would send, to be stored and replayed."""
    return json.loads(problem_response(exc.status, exc.code, exc.title, exc.detail, **exc.extra).body)


KeyHeader = Annotated[
    str | None,
    Header(
        alias="Idempotency-Key",
        min_length=1,
        max_length=255,
        description="Send the same key again (same body) to get the first answer instead of a second change",
    ),
]


@documented(IdempotencyKeyReused, IdempotencyKeyInProgress, success_headers=(REPLAY_HEADER,))
async def idempotent(
    request: Request,
    user: CurrentUser,
    session: DbSession,
    key: KeyHeader = None,
) -> Idempotent:
    body = await request.body()
    return Idempotent(session, user, key, idempotency.fingerprint(request.method, request.url.path, body))


IdempotentChange = Annotated[Idempotent, Depends(idempotent)]
