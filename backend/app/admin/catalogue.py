"""Services, weekly hours, date overrides and time off: edits through the catalogue and schedules
services (calendar locks, overlap checks, `service_has_bookings`, audit, cache versions)."""

import uuid
from typing import Any

from sqladmin import ModelView
from sqladmin.filters import BooleanFilter
from starlette.requests import Request
from wtforms import BooleanField, DecimalField, Form, IntegerField, SelectField, StringField, TextAreaField
from wtforms.validators import Optional

from app.admin.calls import Refused, as_admin, parse
from app.models import DateOverride, Service, TimeOff, WeeklyInterval
from app.models.service import CLIENT_LIMIT_FIELDS
from app.schemas.service import ServiceCreate, ServiceUpdate
from app.schemas.staff import OverrideIn, Schedule, TimeOffIn
from app.services.booking import cancellation
from app.services.scheduling import catalogue, schedules

WEEKDAYS = [(str(i), name) for i, name in enumerate(["Mon", "Tue", "Wed", "Thu", "Fri", "Sat", "Sun"])]


class ServiceForm(Form):
    name = StringField("Name")
    description = TextAreaField("Description")
    duration_minutes = IntegerField("Duration (minutes)")
    buffer_before_minutes = IntegerField("Buffer before (minutes)", default=0)
    buffer_after_minutes = IntegerField("Buffer after (minutes)", default=0)
    price = DecimalField("Price", places=2, default=0)
    currency = StringField("Currency", default="EUR")
    requires_confirmation = BooleanField("Requires confirmation")
    min_notice_minutes = IntegerField("Minimum notice (minutes)", default=60)
    max_advance_days = IntegerField("Bookable up to (days ahead)", default=90)
    capacity = IntegerField("Clients per session (above 1: a group session)", default=1)
    is_active = BooleanField("Active", default=True)
    # Booking limits (blank: none).
    max_bookings_per_client_day = IntegerField("Bookings per client a day", validators=[Optional()])
    max_bookings_per_client_week = IntegerField("Bookings per client a week", validators=[Optional()])
    max_bookings_per_client_month = IntegerField("Bookings per client a month", validators=[Optional()])
    min_gap_minutes = IntegerField("Least gap between a client's bookings (minutes)", validators=[Optional()])
    cancel_future = BooleanField("When deactivating: cancel the future appointments that depend on it")


def _service_fields(data: dict[str, Any]) -> dict[str, Any]:
    fields = {k: v for k, v in data.items() if k != "cancel_future"}
    fields["requires_confirmation"] = bool(data.get("requires_confirmation"))
    fields["is_active"] = bool(data.get("is_active"))
    if fields.get("price") is not None:
        fields["price"] = str(fields["price"])
    return fields


class ServiceAdmin(ModelView, model=Service):
    name, name_plural, icon = "Service", "Services", "fa-solid fa-briefcase"
    column_list = [
        Service.name,
        Service.duration_minutes,
        Service.capacity,
        Service.price,
        Service.currency,
        Service.is_active,
    ]
    column_details_exclude_list = [Service.staff, Service.resources]
    column_searchable_list = [Service.name]
    column_filters = [BooleanFilter(Service.is_active, title="Active")]
    column_default_sort = [(Service.name, False)]
    form = ServiceForm
    can_export = False

    async def insert_model(self, request: Request, data: dict[str, Any]) -> Service:
        body = parse(ServiceCreate, _service_fields(data))
        return await as_admin(
            request, lambda session, actor: catalogue.create_service(session, actor, body.model_dump())
        )

    async def update_model(self, request: Request, pk: str, data: dict[str, Any]) -> Service:
        changes = parse(ServiceUpdate, _service_fields(data)).model_dump(exclude_unset=True)
        changes |= {field: None for field in CLIENT_LIMIT_FIELDS if data.get(field) in ("", None)}  # blank: none
        cancel_future = bool(data.get("cancel_future"))

        async def work(session, actor):
            service_id = uuid.UUID(pk)
            await cancellation.release_service(session, actor, service_id, changes, cancel_future=cancel_future)
            return await catalogue.update_service(session, actor, service_id, changes)

        return await as_admin(request, work)

    async def delete_model(self, request: Request, pk: Any) -> None:
        async def work(session, actor):
            service_id = uuid.UUID(str(pk))
            await cancellation.release_service(session, actor, service_id, {"is_active": False}, cancel_future=False)
            await catalogue.deactivate_service(session, actor, service_id)

        await as_admin(request, work)


class IntervalForm(Form):
    staff_id = StringField("Staff member (id)")
    weekday = SelectField("Weekday", choices=WEEKDAYS)
    start = StringField("Start (HH:MM, their time zone)")
    end = StringField("End (HH:MM)")


class WeeklyIntervalAdmin(ModelView, model=WeeklyInterval):
    """One row per interval; adding or removing one replaces that staff member's week through the
    schedules service (overlaps refused as the API refuses them)."""

    name, name_plural, icon = "Weekly hours", "Staff schedules", "fa-solid fa-calendar-week"
    column_list = [WeeklyInterval.staff_id, WeeklyInterval.weekday, WeeklyInterval.start_time, WeeklyInterval.end_time]
    column_searchable_list = []
    column_default_sort = [(WeeklyInterval.staff_id, False), (WeeklyInterval.weekday, False)]
    form = IntervalForm
    can_edit = False
    can_export = False

    async def _replace(self, request: Request, staff_id: uuid.UUID, change) -> Any:
        async def work(session, actor):
            week = await schedules.get_schedule(session, actor, staff_id)
            body = Schedule.model_validate({"timezone": week["timezone"], "intervals": change(week["intervals"])})
            await schedules.replace_schedule(session, actor, staff_id, body)

        return await as_admin(request, work)

    async def insert_model(self, request: Request, data: dict[str, Any]) -> Any:
        staff_id = _uuid(data.get("staff_id"))
        new = {"weekday": int(data["weekday"]), "start": data.get("start"), "end": data.get("end")}
        await self._replace(request, staff_id, lambda intervals: [*intervals, new])
        return WeeklyInterval(staff_id=staff_id, weekday=new["weekday"])

    async def delete_model(self, request: Request, pk: Any) -> None:
        row = await self.get_object_for_delete(str(pk))
        if row is None:
            return
        key = (row.weekday, row.start_time.strftime("%H:%M"), row.end_time.strftime("%H:%M"))
        await self._replace(
            request,
            row.staff_id,
            lambda intervals: [i for i in intervals if (i["weekday"], i["start"], i["end"]) != key],
        )


def _uuid(value: Any) -> uuid.UUID:
    try:
        return uuid.UUID(str(value).strip())
    except ValueError:
        raise Refused("validation_error", "staff_id: not a UUID") from None


class OverrideForm(Form):
    staff_id = StringField("Staff member (id)")
    date = StringField("Local date (YYYY-MM-DD)")
    intervals = StringField("Hours, e.g. 09:00-12:00, 14:00-16:00 (empty: closed that day)")


class DateOverrideAdmin(ModelView, model=DateOverride):
    name, name_plural, icon = "Override", "Overrides", "fa-solid fa-calendar-day"
    column_list = [DateOverride.staff_id, DateOverride.date, DateOverride.intervals]
    column_default_sort = [(DateOverride.date, True)]
    form = OverrideForm
    can_edit = False
    can_export = False

    async def insert_model(self, request: Request, data: dict[str, Any]) -> Any:
        staff_id = _uuid(data.get("staff_id"))
        spans = [part.strip() for part in (data.get("intervals") or "").split(",") if part.strip()]
        intervals = [
            dict(zip(("start", "end"), (p.strip() for p in span.split("-", 1)), strict=False)) for span in spans
        ]

        async def work(session, actor):
            body = OverrideIn.model_validate({"date": data.get("date"), "intervals": intervals})
            row, _, _ = await schedules.set_override(session, actor, staff_id, body)
            return row

        return await as_admin(request, work)

    async def delete_model(self, request: Request, pk: Any) -> None:
        row = await self.get_object_for_delete(str(pk))
        if row is not None:
            await as_admin(
                request, lambda session, actor: schedules.delete_override(session, actor, row.staff_id, row.id)
            )


class TimeOffForm(Form):
    staff_id = StringField("Staff member (id)")
    starts_at = StringField("Starts (ISO 8601 with offset)")
    ends_at = StringField("Ends (ISO 8601 with offset)")
    reason = StringField("Reason")


class TimeOffAdmin(ModelView, model=TimeOff):
    name, name_plural, icon = "Time off", "Time off", "fa-solid fa-umbrella-beach"
    column_list = [TimeOff.staff_id, TimeOff.starts_at, TimeOff.ends_at, TimeOff.reason]
    column_default_sort = [(TimeOff.starts_at, True)]
    form = TimeOffForm
    can_edit = False
    can_export = False

    async def insert_model(self, request: Request, data: dict[str, Any]) -> Any:
        staff_id = _uuid(data.get("staff_id"))

        async def work(session, actor):
            row, _ = await schedules.create_time_off(session, actor, staff_id, parse(TimeOffIn, data))
            return row

        return await as_admin(request, work)

    async def delete_model(self, request: Request, pk: Any) -> None:
        row = await self.get_object_for_delete(str(pk))
        if row is not None:
            await as_admin(
                request, lambda session, actor: schedules.delete_time_off(session, actor, row.staff_id, row.id)
            )
