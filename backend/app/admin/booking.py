"""Appointments: booked, moved, confirmed, cancelled, completed through the booking service (emails,
reminders, audit, the exclusion constraint), never by writing the row."""

import uuid
from typing import Any

from sqladmin import ModelView, expose
from sqladmin.filters import StaticValuesFilter
from starlette.requests import Request
from starlette.responses import RedirectResponse, Response
from wtforms import Form, StringField, TextAreaField

from app.admin.calls import Refused, as_admin, parse
from app.models import Appointment, AppointmentStatus
from app.schemas.appointment import AppointmentCreate, AppointmentUpdate
from app.services.booking import booking

STATUSES = [(status.value, status.value) for status in AppointmentStatus]
TRANSITIONS = {
    "confirm": lambda session, actor, pk, reason: booking.confirm(session, actor, pk),
    "cancel": lambda session, actor, pk, reason: booking.cancel(session, actor, pk, reason or None),
    "complete": lambda session, actor, pk, reason: booking.complete(session, actor, pk),
    "no_show": lambda session, actor, pk, reason: booking.no_show(session, actor, pk),
}


class AppointmentCreateForm(Form):
    client_id = StringField("Client (user id)")
    staff_id = StringField("Staff member (id)")
    service_id = StringField("Service (id)")
    starts_at = StringField("Starts (ISO 8601 with offset)")
    notes = TextAreaField("Notes")


class AppointmentEditForm(Form):
    starts_at = StringField("Starts (ISO 8601 with offset): a new time reschedules")
    notes = TextAreaField("Notes")


class AppointmentAdmin(ModelView, model=Appointment):
    name, name_plural, icon = "Appointment", "Appointments", "fa-solid fa-calendar-check"
    column_list = [
        Appointment.starts_at,
        Appointment.status,
        Appointment.staff_id,
        Appointment.client_id,
        Appointment.service_id,
    ]
    column_details_exclude_list = [Appointment.blocked_from, Appointment.blocked_until]
    column_filters = [StaticValuesFilter(Appointment.status, STATUSES, title="Status")]
    column_sortable_list = [Appointment.starts_at, Appointment.status]
    column_default_sort = [(Appointment.starts_at, True)]
    form_create_rules = ["client_id", "staff_id", "service_id", "starts_at", "notes"]
    form_edit_rules = ["starts_at", "notes"]
    details_template = "admin/appointment_details.html"
    can_delete = False
    can_export = False

    async def scaffold_form(self, rules: list[str] | None = None) -> type[Form]:
        return AppointmentCreateForm if rules == self.form_create_rules else AppointmentEditForm

    async def get_form_data_for_edit(self, obj: Appointment) -> dict[str, Any]:
        return {"starts_at": obj.starts_at.isoformat(), "notes": obj.notes or ""}

    async def insert_model(self, request: Request, data: dict[str, Any]) -> Appointment:
        body = parse(AppointmentCreate, data)
        return await as_admin(request, lambda session, actor: booking.create(session, actor, body))

    async def update_model(self, request: Request, pk: str, data: dict[str, Any]) -> Appointment:
        current = await self.get_object_for_edit(request)
        changes = parse(AppointmentUpdate, data).model_dump(exclude_unset=True)
        if current is not None and changes.get("starts_at") == current.starts_at:
            changes.pop("starts_at")
        if not changes.get("notes") and not (current and current.notes):
            changes.pop("notes", None)
        if not changes:
            return current
        return await as_admin(request, lambda session, actor: booking.update(session, actor, uuid.UUID(pk), changes))

    @expose("/transition/{pk}", methods=["POST"])
    async def transition(self, request: Request) -> Response:
        """The details page's buttons: confirm, cancel (with a reason), complete, no-show."""
        pk = uuid.UUID(request.path_params["pk"])
        form = await request.form()
        step = TRANSITIONS.get(str(form.get("action")))
        details = request.url_for("admin:details", identity=self.identity, pk=str(pk))
        if step is None:
            return RedirectResponse(details.include_query_params(error="unknown action"), status_code=303)
        reason = str(form.get("reason") or "")[:500]
        try:
            await as_admin(request, lambda session, actor: step(session, actor, pk, reason))
        except Refused as refused:
            return RedirectResponse(details.include_query_params(error=str(refused)), status_code=303)
        return RedirectResponse(details.include_query_params(done=str(form.get("action"))), status_code=303)
