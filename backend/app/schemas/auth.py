from pydantic import BaseModel, ConfigDict, EmailStr, Field

from app.schemas.common import FullName, Password, StrictModel, TimeZoneName
from app.schemas.user import Locale


class RegisterIn(StrictModel):
    email: EmailStr
    password: Password
    full_name: FullName
    timezone: TimeZoneName = "UTC"
    locale: Locale = "en"

    model_config = {
        "json_schema_extra": {
            "examples": [
                {
                    "email": "ada@example.com",
                    "password": "correct horse battery staple",
                    "full_name": "Ada Lovelace",
                    "timezone": "Europe/London",
                    "locale": "en",
                }
            ]
        }
    }


class TokenIn(StrictModel):
    token: str = Field(min_length=1, max_length=256)

    model_config = ConfigDict(json_schema_extra={"examples": [{"token": "the-token-from-the-email-link"}]})


class EmailIn(StrictModel):
    email: EmailStr

    model_config = ConfigDict(json_schema_extra={"examples": [{"email": "ada@example.com"}]})


class RefreshIn(StrictModel):
    refresh_token: str = Field(min_length=1, max_length=256)

    model_config = ConfigDict(json_schema_extra={"examples": [{"refresh_token": "the-refresh-token-from-sign-in"}]})


class LogoutIn(StrictModel):
    refresh_token: str | None = Field(default=None, max_length=256)

    model_config = ConfigDict(json_schema_extra={"examples": [{"refresh_token": "the-refresh-token-from-sign-in"}, {}]})


class PasswordResetConfirm(StrictModel):
    token: str = Field(min_length=1, max_length=256)
    new_password: Password

    model_config = ConfigDict(
        json_schema_extra={
            "examples": [{"token": "the-token-from-the-email-link", "new_password": "correct horse battery staple"}]
        }
    )


class TokenPairOut(BaseModel):
    access_token: str
    refresh_token: str
    token_type: str = "bearer"
    expires_in: int = Field(description="Seconds until the access token expires")
