import uuid
from typing import Annotated, Literal

from pydantic import BaseModel, ConfigDict, EmailStr, Field

from app.models import Role
from app.schemas.common import FullName, Page, Password, StrictModel, TimeZoneName, UtcDatetime
from app.schemas.inputs import Flag, Omittable

Locale = Literal["en", "ru"]
Phone = Annotated[str, Field(max_length=32, pattern=r"^\+?[0-9 ()-]{3,32}$", examples=["+49 30 1234567"])]


class UserOut(BaseModel):
    model_config = ConfigDict(from_attributes=True)

    id: uuid.UUID
    email: str
    full_name: str
    phone: str | None
    timezone: str
    locale: str
    role: Role
    is_active: bool
    is_verified: bool
    created_at: UtcDatetime


class UserPage(Page[UserOut]):
    pass


class UserUpdateMe(StrictModel):
    """Only these fields; `role`, `email` and `is_active` are refused with 422."""

    full_name: Omittable[FullName] = None
    phone: Phone | None = Field(default=None, description="`null` removes the phone number")
    timezone: Omittable[TimeZoneName] = None
    locale: Omittable[Locale] = None

    model_config = ConfigDict(
        json_schema_extra={"examples": [{"full_name": "Ada King", "timezone": "Europe/London", "locale": "en"}]}
    )


class PasswordChange(StrictModel):
    current_password: str = Field(max_length=128)
    new_password: Password

    model_config = ConfigDict(
        json_schema_extra={
            "examples": [{"current_password": "my old passphrase", "new_password": "correct horse battery staple"}]
        }
    )


class EmailChange(StrictModel):
    new_email: EmailStr
    password: str = Field(max_length=128, description="The current password")

    model_config = ConfigDict(
        json_schema_extra={"examples": [{"new_email": "new.address@example.com", "password": "my passphrase"}]}
    )


class UserCreate(StrictModel):
    email: EmailStr
    password: Password
    full_name: FullName
    role: Role = Role.user
    timezone: TimeZoneName = "UTC"
    locale: Locale = "en"
    phone: Phone | None = None
    is_verified: Flag = True

    model_config = ConfigDict(
        json_schema_extra={
            "examples": [
                {
                    "email": "grace@example.com",
                    "password": "correct horse battery staple",
                    "full_name": "Grace Hopper",
                    "role": "staff",
                    "timezone": "America/New_York",
                }
            ]
        }
    )


class UserAdminUpdate(UserUpdateMe):
    role: Omittable[Role] = None
    is_active: Omittable[Flag] = None

    model_config = ConfigDict(json_schema_extra={"examples": [{"role": "staff"}, {"is_active": False}]})
