"""Calendar feeds: the secret `.ics` URL calendar apps subscribe to, and the owner's view of it."""

from email.utils import format_datetime
from typing import Annotated

from fastapi import APIRouter, Header, Response

from app.api.deps import CurrentUser, DbSession
from app.api.problems import problem_responses
from app.errors import RateLimited
from app.models import CalendarFeed
from app.schemas.feed import CalendarFeedOut
from app.services.integrations import feeds

router = APIRouter(tags=["calendar-feeds"])

_FEED_HEADERS = {
    "ETag": {"description": "A strong validator: send it back as `If-None-Match`", "schema": {"type": "string"}},
    "Last-Modified": {"description": "When the content last changed (HTTP date)", "schema": {"type": "string"}},
    "Cache-Control": {"description": "`private, no-cache`: revalidate every time", "schema": {"type": "string"}},
}
FEED_ANSWERS = {
    200: {
        "content": {"text/calendar": {"schema": {"type": "string"}}},
        "headers": _FEED_HEADERS
        | {"Content-Disposition": {"description": "`inline; filename=...`", "schema": {"type": "string"}}},
    },
    304: {"description": "Not modified: the copy you hold is current", "headers": _FEED_HEADERS},
}
IfNoneMatch = Annotated[str | None, Header(max_length=1024, description="The `ETag` of the copy you hold")]
IfModifiedSince = Annotated[str | None, Header(max_length=64, description="The `Last-Modified` of your copy")]


@router.get(
    "/calendar-feeds/{token}.ics",
    operation_id="calendar-feeds-get",
    response_class=Response,
    summary="A calendar feed",
    responses=FEED_ANSWERS | problem_responses(feeds.FeedNotFound, RateLimited),
)
async def get_feed(
    token: str,
    session: DbSession,
    if_none_match: IfNoneMatch = None,
    if_modified_since: IfModifiedSince = None,
) -> Response:
    """The appointments of the feed's owner as an RFC 5545 calendar (no sign-in: the URL is the secret),
    for calendar apps to subscribe to; 304 when `If-None-Match` or `If-Modified-Since` still hold."""
    found = await feeds.fetch(session, token, if_none_match=if_none_match, if_modified_since=if_modified_since)
    headers = {
        "ETag": found.etag,
        "Last-Modified": format_datetime(found.last_modified, usegmt=True),
        "Cache-Control": "private, no-cache",
    }
    if found.content is None:
        return Response(status_code=304, headers=headers)
    headers["Content-Disposition"] = 'inline; filename="c3po-appointments.ics"'
    return Response(found.content, media_type="text/calendar; charset=utf-8", headers=headers)


def _out(feed: CalendarFeed) -> CalendarFeedOut:
    url, webcal_url = feeds.feed_urls(feed)
    return CalendarFeedOut(
        url=url,
        webcal_url=webcal_url,
        created_at=feed.created_at,
        rotated_at=feed.rotated_at,
        last_fetched_at=feed.last_fetched_at,
    )


@router.get("/users/me/calendar-feed", operation_id="calendar-feeds-get-mine", summary="My calendar feed URL")
async def get_mine(user: CurrentUser, session: DbSession) -> CalendarFeedOut:
    """My secret feed URL (made on first request; the same URL every time until rotated)."""
    return _out(await feeds.get_or_create(session, user))


@router.post("/users/me/calendar-feed/rotate", operation_id="calendar-feeds-rotate-mine", summary="Replace my feed URL")
async def rotate_mine(user: CurrentUser, session: DbSession) -> CalendarFeedOut:
    """A new secret feed URL; the old one stops working at once (calendars subscribed to it must subscribe again)."""
    return _out(await feeds.rotate(session, user, actor=user))
