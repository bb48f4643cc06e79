"""The waitlist: join, list, leave; offers read, claimed (booked) or declined."""

import uuid

from fastapi import APIRouter, status
from fastapi.responses import JSONResponse

from app.api.deps import CurrentUser, DbSession, Limit, Offset
from app.api.idempotent import IdempotentChange
from app.api.problems import problem_responses
from app.errors import (
    AlreadyBooked,
    EmailNotVerified,
    Forbidden,
    InactiveUser,
    NotFound,
    SessionFull,
    SlotNotOffered,
    SlotUnavailable,
)
from app.models import WaitlistOffer
from app.schemas.appointment import AppointmentOut
from app.schemas.waitlist import EntryStatus, WaitlistEntryOut, WaitlistJoin, WaitlistOfferOut, WaitlistPage
from app.services.booking import waitlist
from app.services.booking.waitlist import (
    InvalidWaitlistWindow,
    OfferClosed,
    OfferExpired,
    WaitlistEntryClosed,
    WaitlistFull,
)
from app.services.scheduling.resources import ResourceUnavailable

router = APIRouter(prefix="/waitlist", tags=["waitlist"])


def _offer_out(offer: WaitlistOffer) -> WaitlistOfferOut:
    return WaitlistOfferOut.model_validate(offer).model_copy(update={"status": waitlist.shown_status(offer)})


@router.post(
    "",
    operation_id="waitlist-join",
    status_code=status.HTTP_201_CREATED,
    summary="Join a waitlist",
    responses=problem_responses(
        Forbidden, EmailNotVerified, NotFound, SlotNotOffered, InvalidWaitlistWindow, WaitlistFull
    ),
)
async def join(body: WaitlistJoin, user: CurrentUser, session: DbSession) -> WaitlistEntryOut:
    """Wait for a slot of a service in a window of dates and local times; a freed slot is held for
    the first waiter in order, who is emailed a link to claim it."""
    return WaitlistEntryOut.model_validate(await waitlist.join(session, user, body))


@router.get("", operation_id="waitlist-list", summary="List waitlist entries")
async def list_entries(
    user: CurrentUser,
    session: DbSession,
    status: EntryStatus | None = None,
    service_id: uuid.UUID | None = None,
    staff_id: uuid.UUID | None = None,
    client_id: uuid.UUID | None = None,
    limit: Limit = 50,
    offset: Offset = 0,
) -> WaitlistPage:
    """My entries (staff: also those for their calendar; admins: all), in the queue's order."""
    rows, total = await waitlist.list_entries(
        session,
        user,
        limit=limit,
        offset=offset,
        status=status,
        service_id=service_id,
        staff_id=staff_id,
        client_id=client_id,
    )
    return WaitlistPage(
        items=[WaitlistEntryOut.model_validate(e) for e in rows], total=total, limit=limit, offset=offset
    )


@router.delete(
    "/{entry_id}",
    operation_id="waitlist-leave",
    status_code=status.HTTP_204_NO_CONTENT,
    summary="Leave a waitlist",
    responses=problem_responses(NotFound, WaitlistEntryClosed),
)
async def leave(entry_id: uuid.UUID, user: CurrentUser, session: DbSession) -> None:
    """Stop waiting; a slot held for this entry is released and passes to the next waiter."""
    await waitlist.leave(session, user, entry_id)


@router.get(
    "/offers/{offer_id}",
    operation_id="waitlist-get-offer",
    summary="Get a waitlist offer",
    responses=problem_responses(NotFound),
)
async def get_offer(offer_id: uuid.UUID, user: CurrentUser, session: DbSession) -> WaitlistOfferOut:
    """A slot held for a waiter: its client, its staff member and admins may see it."""
    return _offer_out(await waitlist.get_offer(session, user, offer_id))


@router.post(
    "/offers/{offer_id}/claim",
    operation_id="waitlist-claim-offer",
    status_code=status.HTTP_201_CREATED,
    response_model=AppointmentOut,
    summary="Claim a waitlist offer",
    responses=problem_responses(
        NotFound,
        EmailNotVerified,
        InactiveUser,
        OfferExpired,
        OfferClosed,
        SlotUnavailable,
        SlotNotOffered,
        SessionFull,
        AlreadyBooked,
        ResourceUnavailable,
    ),
)
async def claim(offer_id: uuid.UUID, user: CurrentUser, session: DbSession, idem: IdempotentChange) -> JSONResponse:
    """Book the held slot (the waiter only): 201 with the appointment; 410 once the hold has expired."""
    return await idem.respond(201, lambda: waitlist.claim(session, user, offer_id))


@router.post(
    "/offers/{offer_id}/decline",
    operation_id="waitlist-decline-offer",
    summary="Decline a waitlist offer",
    responses=problem_responses(NotFound, OfferExpired, OfferClosed),
)
async def decline(offer_id: uuid.UUID, user: CurrentUser, session: DbSession) -> WaitlistOfferOut:
    """Give the held slot up (the waiter only): it passes to the next waiter at once."""
    return _offer_out(await waitlist.decline(session, user, offer_id))
