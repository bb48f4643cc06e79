"""Resources and their closures: edits through the resources service (resource locks,
`resource_in_use`, audit), as the API makes them."""

import uuid
from typing import Any

from sqladmin import ModelView
from sqladmin.filters import BooleanFilter
from starlette.requests import Request
from wtforms import BooleanField, Form, StringField, TextAreaField

from app.admin.calls import Refused, as_admin, parse
from app.models import Resource, ResourceClosure
from app.schemas.resource import ClosureIn, ResourceCreate, ResourceUpdate
from app.services.scheduling import resources


class ResourceForm(Form):
    name = StringField("Name")
    description = TextAreaField("Description")
    is_active = BooleanField("Active", default=True)


def _fields(data: dict[str, Any]) -> dict[str, Any]:
    return {**data, "is_active": bool(data.get("is_active"))}


class ResourceAdmin(ModelView, model=Resource):
    name, name_plural, icon = "Resource", "Resources", "fa-solid fa-door-open"
    column_list = [Resource.name, Resource.is_active, Resource.updated_at]
    column_searchable_list = [Resource.name]
    column_filters = [BooleanFilter(Resource.is_active, title="Active")]
    column_default_sort = [(Resource.name, False)]
    form = ResourceForm
    can_export = False

    async def insert_model(self, request: Request, data: dict[str, Any]) -> Resource:
        body = parse(ResourceCreate, _fields(data))
        return await as_admin(
            request, lambda session, actor: resources.create_resource(session, actor, body.model_dump())
        )

    async def update_model(self, request: Request, pk: str, data: dict[str, Any]) -> Resource:
        changes = parse(ResourceUpdate, _fields(data)).model_dump(exclude_unset=True)
        return await as_admin(
            request, lambda session, actor: resources.update_resource(session, actor, uuid.UUID(pk), changes)
        )

    async def delete_model(self, request: Request, pk: Any) -> None:
        await as_admin(request, lambda session, actor: resources.delete_resource(session, actor, uuid.UUID(str(pk))))


class ClosureForm(Form):
    resource_id = StringField("Resource (id)")
    starts_at = StringField("Starts (ISO 8601 with offset)")
    ends_at = StringField("Ends (ISO 8601 with offset)")
    reason = StringField("Reason")


class ResourceClosureAdmin(ModelView, model=ResourceClosure):
    name, name_plural, icon = "Closure", "Resource closures", "fa-solid fa-ban"
    column_list = [
        ResourceClosure.resource_id,
        ResourceClosure.starts_at,
        ResourceClosure.ends_at,
        ResourceClosure.reason,
    ]
    column_default_sort = [(ResourceClosure.starts_at, True)]
    form = ClosureForm
    can_edit = False
    can_export = False

    async def insert_model(self, request: Request, data: dict[str, Any]) -> Any:
        try:
            resource_id = uuid.UUID(str(data.get("resource_id")).strip())
        except ValueError:
            raise Refused("validation_error", "resource_id: not a UUID") from None

        async def work(session, actor):
            closure, _ = await resources.create_closure(session, actor, resource_id, parse(ClosureIn, data))
            return closure

        return await as_admin(request, work)

    async def delete_model(self, request: Request, pk: Any) -> None:
        row = await self.get_object_for_delete(str(pk))
        if row is not None:
            await as_admin(
                request, lambda session, actor: resources.delete_closure(session, actor, row.resource_id, row.id)
            )
