"""Recurring series: cancel a whole series, or from one occurrence on."""

import uuid

from fastapi import APIRouter

from app.api.deps import CurrentUser, DbSession
from app.api.idempotent import IdempotentChange
from app.api.problems import problem_responses
from app.errors import CancellationWindowClosed, InvalidTransition, NotFound
from app.schemas.appointment import AppointmentOut, SeriesCancelRequest, SeriesOut
from app.services.booking import series

router = APIRouter(prefix="/appointment-series", tags=["appointment-series"])


@router.post(
    "/{series_id}/cancel",
    operation_id="appointment-series-cancel",
    response_model=SeriesOut,
    summary="Cancel a recurring series",
    responses=problem_responses(NotFound, CancellationWindowClosed, InvalidTransition),
)
async def cancel(
    series_id: uuid.UUID,
    user: CurrentUser,
    session: DbSession,
    idem: IdempotentChange,
    body: SeriesCancelRequest | None = None,
):
    """Cancel the series' live occurrences starting at or after `from` (default: now); answers those cancelled."""
    body = body or SeriesCancelRequest()

    def serialize(result: tuple) -> dict:
        found, cancelled = result
        items = [AppointmentOut.model_validate(a) for a in cancelled]
        return SeriesOut(series_id=found.id, appointments=items).model_dump(mode="json")

    return await idem.respond(200, lambda: series.cancel(session, user, series_id, body.from_, body.reason), serialize)
