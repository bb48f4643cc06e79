"""Users: never the password hash or anything of the second factor; every change through the users service."""

import uuid
from typing import Any

from sqladmin import ModelView
from sqladmin.filters import BooleanFilter, StaticValuesFilter
from starlette.requests import Request
from wtforms import BooleanField, EmailField, Form, PasswordField, SelectField, StringField

from app.admin.calls import as_admin, parse
from app.models import Role, User
from app.schemas.user import UserAdminUpdate, UserCreate
from app.services.accounts import users

ROLES = [(role.value, role.value) for role in Role]
LOCALES = [("en", "en"), ("ru", "ru")]


class UserCreateForm(Form):
    email = EmailField("Email")
    password = PasswordField("Password")
    full_name = StringField("Full name")
    role = SelectField("Role", choices=ROLES, default=Role.user.value)
    timezone = StringField("Time zone", default="UTC")
    locale = SelectField("Locale", choices=LOCALES, default="en")
    is_verified = BooleanField("Email verified", default=True)


class UserEditForm(Form):
    full_name = StringField("Full name")
    phone = StringField("Phone")
    timezone = StringField("Time zone")
    locale = SelectField("Locale", choices=LOCALES)
    role = SelectField("Role", choices=ROLES)
    is_active = BooleanField("Active")
    cancel_future = BooleanField("Cancel their future appointments (when demoting or deactivating staff)")


class UserAdmin(ModelView, model=User):
    name, name_plural, icon = "User", "Users", "fa-solid fa-user"
    column_list = [User.email, User.full_name, User.role, User.is_active, User.email_verified_at, User.created_at]
    column_details_list = [
        User.id,
        User.email,
        User.full_name,
        User.phone,
        User.timezone,
        User.locale,
        User.role,
        User.is_active,
        User.email_verified_at,
        User.created_at,
        User.updated_at,
        User.deleted_at,
    ]
    column_searchable_list = [User.email, User.full_name]
    column_filters = [StaticValuesFilter(User.role, ROLES, title="Role"), BooleanFilter(User.is_active, title="Active")]
    column_default_sort = [(User.created_at, True)]
    form_create_rules = ["email", "password", "full_name", "role", "timezone", "locale", "is_verified"]
    form_edit_rules = ["full_name", "phone", "timezone", "locale", "role", "is_active", "cancel_future"]
    can_export = False

    async def scaffold_form(self, rules: list[str] | None = None) -> type[Form]:
        return UserCreateForm if rules == self.form_create_rules else UserEditForm

    async def insert_model(self, request: Request, data: dict[str, Any]) -> User:
        body = parse(UserCreate, data)

        async def work(session, actor):
            fields = body.model_dump(exclude={"is_verified"})
            return await users.create_user(session, verified=body.is_verified, actor=actor, **fields)

        return await as_admin(request, work)

    async def update_model(self, request: Request, pk: str, data: dict[str, Any]) -> User:
        changes = parse(UserAdminUpdate, data).model_dump(exclude_unset=True)
        changes["is_active"] = bool(data.get("is_active"))  # an unticked box is not sent at all
        changes.setdefault("phone", None)  # an emptied field clears the phone

        async def work(session, actor):
            user = await users.get_user(session, uuid.UUID(pk))
            return await users.admin_update(
                session, user, changes, actor=actor, cancel_future=bool(data.get("cancel_future"))
            )

        return await as_admin(request, work)

    async def delete_model(self, request: Request, pk: Any) -> None:
        async def work(session, actor):
            await users.deactivate(session, await users.get_user(session, uuid.UUID(str(pk))), actor=actor)

        await as_admin(request, work)
