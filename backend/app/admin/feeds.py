"""Calendar feeds: whose, since when, last fetched; rotating one (a leaked URL) stops its old URL."""

import uuid

from markupsafe import Markup
from sqladmin import ModelView, expose
from sqlalchemy.ext.asyncio import AsyncSession
from starlette.requests import Request
from starlette.responses import RedirectResponse, Response

from app.admin.calls import Refused, as_admin
from app.errors import NotFound
from app.models import CalendarFeed, User
from app.services.integrations import feeds


class CalendarFeedAdmin(ModelView, model=CalendarFeed):
    name, name_plural, icon = "Calendar feed", "Calendar feeds", "fa-solid fa-calendar-days"
    can_create = can_edit = can_delete = can_export = False
    column_list = [CalendarFeed.user_id, CalendarFeed.created_at, CalendarFeed.rotated_at, CalendarFeed.last_fetched_at]
    # The version is half of what makes the URL; the digest is of no use to anyone here.
    column_details_exclude_list = [CalendarFeed.version, CalendarFeed.content_digest]
    column_labels = {
        CalendarFeed.user_id: "User id",
        CalendarFeed.created_at: "Created",
        CalendarFeed.rotated_at: "Rotated",
        CalendarFeed.last_fetched_at: "Last fetched",
        CalendarFeed.content_changed_at: "Content changed",
    }
    column_formatters = column_formatters_detail = {CalendarFeed.user_id: lambda m, a: _user_link(m.user_id)}
    column_default_sort = [(CalendarFeed.created_at, True)]
    details_template = "admin/feed_details.html"

    @expose("/rotate/{pk}", methods=["POST"])
    async def rotate(self, request: Request) -> Response:
        """Give the feed a new URL: whoever holds the old one (a leaked link) reads nothing more."""
        pk = uuid.UUID(request.path_params["pk"])
        details = request.url_for("admin:details", identity=self.identity, pk=str(pk))
        try:
            await as_admin(request, lambda session, actor: _rotate(session, actor, pk))
        except Refused as refused:
            return RedirectResponse(details.include_query_params(error=str(refused)), status_code=303)
        return RedirectResponse(details.include_query_params(done="rotate"), status_code=303)


def _user_link(user_id: uuid.UUID) -> Markup:
    return Markup('<a href="/admin/user/details/{0}">{0}</a>').format(user_id)


async def _rotate(session: AsyncSession, actor: User, user_id: uuid.UUID) -> CalendarFeed:
    user = await session.get(User, user_id)
    if user is None or await feeds.find(session, user_id) is None:
        raise NotFound("No such calendar feed")
    return await feeds.rotate(session, user, actor=actor)
