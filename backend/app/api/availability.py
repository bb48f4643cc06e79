"""Free slots of a service, public."""

from typing import Annotated

from fastapi import APIRouter, Depends, Query, Response

from app.api.deps import RateLimitIP
from app.api.problems import problem_responses
from app.config import get_settings
from app.errors import NotFound, RateLimited
from app.schemas.availability import Availability, AvailabilityQuery
from app.services import rate_limit
from app.services.scheduling import availability
from app.services.scheduling.availability import InvalidWindow, WindowTooLarge

router = APIRouter(prefix="/availability", tags=["availability"])


async def throttled(client_ip: RateLimitIP) -> None:
    """Per client IP (trusted-proxy aware; an IPv6 /64 counts as one): 429 `rate_limited` beyond it."""
    await rate_limit.hit(get_settings().availability_requests_per_ip, "availability", "ip", client_ip)


@router.get(
    "",
    operation_id="availability-list",
    response_model=Availability,
    summary="Free slots",
    responses=problem_responses(NotFound, InvalidWindow, WindowTooLarge, RateLimited),
    dependencies=[Depends(throttled)],
)
async def find_slots(query: Annotated[AvailabilityQuery, Query()]) -> Response:
    """Free start times of an active service in `[start, end)` (at most 62 days), for one staff
    member or everyone offering it, by time (then staff id). Times are UTC with `Z`; the answer
    also echoes the window as understood.

    `start`/`end` are date-times with an offset, or plain dates with `tz`: `start=2026-03-08&
    end=2026-03-15&tz=America/New_York` is that week between local midnights, DST included (`end`
    is exclusive). With `tz` each slot also carries `starts_at_local`/`ends_at_local` in that zone
    (ISO 8601 with the offset of that instant), ready to group by local day and display.

    Hours are the staff member's wall-clock hours in their own zone: 09:00 stays 09:00 across a
    clock change; a time the clocks skip is never offered; a time they repeat (fall back) is offered
    once, at its first occurrence. Errors: 404 unknown or inactive service, or a `staff_id` who does
    not offer it; 422 `validation_error` (naive date-time, plain date without `tz`, unknown `tz`),
    `invalid_window` (end not after start), `window_too_large`; 429 `rate_limited` (with
    `Retry-After`) beyond `AVAILABILITY_REQUESTS_PER_IP` requests per client IP (default 120 a minute).
    """
    body = await availability.availability_text(
        query.service_id, query.start_at, query.end_at, staff_id=query.staff_id, zone=query.zone
    )
    return Response(body, media_type="application/json")
