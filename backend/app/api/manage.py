"""Manage links: the emailed page where a client views, cancels or reschedules without signing in.

The token in the path is the credential (never a bearer token: these routes read no
`Authorization`, and no other route accepts the token). Every answer is `Cache-Control: no-store`.
"""

from typing import Annotated

from fastapi import APIRouter, Depends, Path, Query, Request, Response
from fastapi.responses import JSONResponse

from app.api.deps import DbSession, RateLimitIP
from app.api.idempotent import REPLAY_HEADER, Idempotent, KeyHeader
from app.api.problem_docs import documented
from app.api.problems import problem_responses
from app.config import get_settings
from app.errors import (
    AppointmentChanged,
    CancellationWindowClosed,
    IdempotencyKeyInProgress,
    IdempotencyKeyReused,
    InactiveUser,
    InvalidTransition,
    NotFound,
    RateLimited,
    SlotNotOffered,
    SlotUnavailable,
)
from app.schemas.appointment import AppointmentOut
from app.schemas.availability import Availability
from app.schemas.manage import ManageAvailabilityQuery, ManageCancel, ManagedAppointment, ManageReschedule
from app.services import rate_limit
from app.services.booking import idempotency, manage_links
from app.services.booking.limits import LIMIT_ERRORS
from app.services.booking.manage_links import (
    ActionNotInLink,
    AppointmentClosed,
    Link,
    ManageLinkExpired,
    ManageLinkInvalid,
)
from app.services.scheduling.availability import InvalidWindow, WindowTooLarge
from app.services.scheduling.resources import ResourceUnavailable

NO_STORE = {"Cache-Control": "no-store"}
ManageToken = Annotated[
    str, Path(min_length=1, max_length=1024, description="The `token` query parameter of the emailed page link")
]


async def throttled(token: ManageToken, client_ip: RateLimitIP) -> None:
    """Per client IP, then per link: 429 `rate_limited` beyond `MANAGE_REQUESTS_PER_IP` / `_PER_TOKEN`."""
    settings = get_settings()
    await rate_limit.hit(settings.manage_requests_per_ip, "manage", "ip", client_ip)
    await rate_limit.hit(settings.manage_requests_per_token, "manage", "token", token)


router = APIRouter(prefix="/manage", tags=["manage"], dependencies=[Depends(throttled)])


@documented(ManageLinkInvalid, RateLimited)
async def get_link(token: ManageToken, session: DbSession) -> Link:
    return await manage_links.open_link(session, token)


OpenLink = Annotated[Link, Depends(get_link)]


@documented(IdempotencyKeyReused, IdempotencyKeyInProgress, success_headers=(REPLAY_HEADER,))
async def link_idempotent(request: Request, link: OpenLink, session: DbSession, key: KeyHeader = None) -> Idempotent:
    """`Idempotency-Key` as on the signed-in routes, for the link's client; the request is fingerprinted
    by the appointment, not the token, so the links of two emails are one request."""
    body = await request.body()
    path = request.url.path.replace(link.token, str(link.claims.appointment_id))
    return Idempotent(session, link.client, key, idempotency.fingerprint(request.method, path, body))


LinkIdempotent = Annotated[Idempotent, Depends(link_idempotent)]
OPEN_ERRORS = (ManageLinkExpired, AppointmentClosed, ActionNotInLink)
CHANGE_ERRORS = (*OPEN_ERRORS, CancellationWindowClosed, InvalidTransition, InactiveUser)


@router.get(
    "/{token}",
    operation_id="manage-get",
    response_model=ManagedAppointment,
    summary="Open a manage link",
    responses=problem_responses(*OPEN_ERRORS),
)
async def get(link: OpenLink, session: DbSession, response: Response) -> ManagedAppointment:
    """The appointment behind an emailed link, its service, staff member and zones, and whether the
    link lets the client cancel or reschedule it now (and if not, why: the code the action would answer)."""
    response.headers.update(NO_STORE)
    return await manage_links.view(session, link)


@router.post(
    "/{token}/cancel",
    operation_id="manage-cancel",
    response_model=AppointmentOut,
    summary="Cancel through a manage link",
    responses=problem_responses(*CHANGE_ERRORS, AppointmentChanged),
)
async def cancel(
    link: OpenLink, session: DbSession, idem: LinkIdempotent, body: ManageCancel | None = None
) -> JSONResponse:
    """Cancel as the client would signed in: until the cut-off before the start. The link then stops working."""
    reason = body.reason if body else None
    answer = await idem.respond(200, lambda: manage_links.cancel(session, link, reason))
    answer.headers.update(NO_STORE)
    return answer


@router.post(
    "/{token}/reschedule",
    operation_id="manage-reschedule",
    response_model=AppointmentOut,
    summary="Reschedule through a manage link",
    responses=problem_responses(
        *CHANGE_ERRORS, SlotUnavailable, ResourceUnavailable, SlotNotOffered, AppointmentChanged, *LIMIT_ERRORS
    ),
)
async def reschedule(link: OpenLink, session: DbSession, idem: LinkIdempotent, body: ManageReschedule) -> JSONResponse:
    """Move to `starts_at` as the client would signed in: a time `availability` offers, outside the cut-off."""
    answer = await idem.respond(200, lambda: manage_links.reschedule(session, link, body.starts_at, body.sequence))
    answer.headers.update(NO_STORE)
    return answer


@router.get(
    "/{token}/availability",
    operation_id="manage-availability",
    response_model=Availability,
    summary="Free slots to reschedule to",
    responses=problem_responses(*OPEN_ERRORS, NotFound, InvalidWindow, WindowTooLarge),
)
async def availability(
    link: OpenLink, session: DbSession, query: Annotated[ManageAvailabilityQuery, Query()]
) -> Response:
    """`GET /availability` for the appointment's service and staff member, with its own slot free and
    nothing inside the cut-off: exactly the starts `reschedule` accepts (same parameters, same shape)."""
    body = await manage_links.free_slots(session, link, query)
    return Response(body, media_type="application/json", headers=NO_STORE)
