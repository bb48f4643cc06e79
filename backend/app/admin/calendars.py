"""External calendar connections with their sync state (read-only; a sync can be asked for).

Credentials never show: the sealed password and the claim are left out, and of the URL only its
host (a calendar app's "secret address" is a credential in itself)."""

import uuid
from urllib.parse import urlsplit

from sqladmin import expose
from starlette.requests import Request
from starlette.responses import RedirectResponse, Response

from app.admin.calls import Refused, as_admin
from app.admin.records import ReadOnly
from app.errors import NotFound
from app.models import CalendarConnection
from app.services.integrations import external_calendars


def _host(model: CalendarConnection, _attribute: object) -> str:
    return urlsplit(model.url).hostname or ""


class CalendarConnectionAdmin(ReadOnly, model=CalendarConnection):
    name, name_plural, icon = "Calendar connection", "Calendar connections", "fa-solid fa-calendar-check"
    column_list = [
        CalendarConnection.staff_id,
        CalendarConnection.kind,
        CalendarConnection.name,
        CalendarConnection.url,
        CalendarConnection.is_active,
        CalendarConnection.last_success_at,
        CalendarConnection.consecutive_failures,
        CalendarConnection.last_error,
        CalendarConnection.block_count,
        CalendarConnection.next_sync_at,
    ]
    column_labels = {
        CalendarConnection.staff_id: "Staff member",
        CalendarConnection.url: "Host",
        CalendarConnection.is_active: "Active",
        CalendarConnection.last_success_at: "Last success",
        CalendarConnection.last_attempt_at: "Last attempt",
        CalendarConnection.consecutive_failures: "Failures in a row",
        CalendarConnection.last_error: "Last error",
        CalendarConnection.block_count: "Busy blocks",
        CalendarConnection.next_sync_at: "Next sync",
    }
    column_details_list = [*column_list, CalendarConnection.last_attempt_at, CalendarConnection.created_at]
    column_formatters = {CalendarConnection.url: _host}
    column_formatters_detail = {CalendarConnection.url: _host}
    column_searchable_list = [CalendarConnection.name]
    column_sortable_list = [CalendarConnection.consecutive_failures, CalendarConnection.last_success_at]
    column_default_sort = [(CalendarConnection.consecutive_failures, True)]
    details_template = "admin/calendar_details.html"

    @expose("/sync/{pk}", methods=["POST"])
    async def sync(self, request: Request) -> Response:
        """Queue a sync now (as `POST /staff/{id}/calendars/{id}/sync`)."""
        pk = request.path_params["pk"]
        details = request.url_for("admin:details", identity=self.identity, pk=pk)

        async def work(session, actor):
            row = await session.get(CalendarConnection, _uuid(pk))
            if row is None:
                raise NotFound("No such calendar connection")
            return await external_calendars.request_sync(session, actor, row.staff_id, row.id)

        try:
            await as_admin(request, work)
        except Refused as refused:
            return RedirectResponse(details.include_query_params(error=str(refused)), status_code=303)
        return RedirectResponse(details.include_query_params(done="sync"), status_code=303)


def _uuid(value: str) -> uuid.UUID:
    try:
        return uuid.UUID(value)
    except ValueError:
        raise NotFound("No such calendar connection") from None
