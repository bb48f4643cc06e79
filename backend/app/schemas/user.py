import uuid
from typing import Literal

from pydantic import BaseModel, ConfigDict, EmailStr, Field

from app.models import Role
from app.schemas.common import FullName, Page, Password, StrictModel, TimeZoneName, UtcDatetime

Locale = Literal["en", "ru"]


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

    full_name: FullName | None = None
    phone: str | None = Field(default=None, max_length=32, pattern=r"^\+?[0-9 ()-]{3,32}$", examples=["+49 30 1234567"])
    timezone: TimeZoneName | None = None
    locale: Locale | None = None

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
    phone: str | None = Field(default=None, max_length=32)
    is_verified: bool = True

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
    role: Role | None = None
    is_active: bool | None = None

    model_config = ConfigDict(json_schema_extra={"examples": [{"role": "staff"}, {"is_active": False}]})
