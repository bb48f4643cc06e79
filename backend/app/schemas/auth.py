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


class TotpSetupOut(BaseModel):
    secret: str = Field(description="Base32; type it into an authenticator app, or show `otpauth_uri` as a QR code")
    otpauth_uri: str


class TotpCodeIn(StrictModel):
    code: str = Field(min_length=6, max_length=6, pattern=r"^[0-9]{6}$", description="The app's current code")

    model_config = ConfigDict(json_schema_extra={"examples": [{"code": "123456"}]})


class TotpEnabledOut(BaseModel):
    recovery_codes: list[str] = Field(description="Shown this once; each signs in once in place of a code")


class TotpDisableIn(StrictModel):
    password: str = Field(min_length=1, max_length=1024)
    code: str = Field(min_length=6, max_length=64, description="A current code or an unused recovery code")

    model_config = ConfigDict(
        json_schema_extra={"examples": [{"password": "correct horse battery staple", "code": "123456"}]}
    )
