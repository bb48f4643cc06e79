"""Read-only records: the audit log and the outbox (a failed email can be sent again)."""

from sqladmin import ModelView, expose
from starlette.requests import Request
from starlette.responses import RedirectResponse, Response

from app.admin.calls import Refused, as_admin
from app.models import AuditEntry, OutboxMessage
from app.services.messaging import outbox


class ReadOnly(ModelView):
    can_create = can_edit = can_delete = can_export = False


class AuditAdmin(ReadOnly, model=AuditEntry):
    name, name_plural, icon = "Audit entry", "Audit log", "fa-solid fa-clipboard-list"
    column_list = [
        AuditEntry.created_at,
        AuditEntry.actor_id,
        AuditEntry.action,
        AuditEntry.entity_type,
        AuditEntry.entity_id,
    ]
    column_searchable_list = [AuditEntry.action, AuditEntry.entity_id]
    column_default_sort = [(AuditEntry.created_at, True)]


class OutboxAdmin(ReadOnly, model=OutboxMessage):
    name, name_plural, icon = "Outbox message", "Outbox", "fa-solid fa-envelope"
    column_list = [
        OutboxMessage.id,
        OutboxMessage.kind,
        OutboxMessage.created_at,
        OutboxMessage.attempts,
        OutboxMessage.sent_at,
        OutboxMessage.failed_at,
    ]
    column_details_exclude_list = [OutboxMessage.claimed_by]
    # Links in emails not yet sent are working credentials (sign-in, reset): shown blanked.
    column_formatters_detail = {OutboxMessage.payload: lambda m, a: outbox.redacted(m.payload)}
    column_default_sort = [(OutboxMessage.id, True)]
    details_template = "admin/outbox_details.html"

    @expose("/retry/{pk}", methods=["POST"])
    async def retry(self, request: Request) -> Response:
        """Send a given-up email again: its attempts start over and the worker's relay takes it."""
        pk = int(request.path_params["pk"])
        details = request.url_for("admin:details", identity=self.identity, pk=str(pk))
        try:
            await as_admin(request, lambda session, actor: outbox.retry_failed(session, actor, pk))
        except Refused as refused:
            return RedirectResponse(details.include_query_params(error=str(refused)), status_code=303)
        return RedirectResponse(details.include_query_params(done="retry"), status_code=303)
