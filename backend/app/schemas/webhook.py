"""Webhook endpoints and their deliveries, as admins manage and see them (`/api/v1/webhooks`)."""

import uuid
from typing import Annotated, Literal

from pydantic import AfterValidator, BaseModel, ConfigDict, Field, StringConstraints

from app.models import WEBHOOK_EVENT_TYPES
from app.schemas.common import Page, StrictModel, UtcDatetime
from app.schemas.inputs import Flag, Omittable

EventType = Literal[WEBHOOK_EVENT_TYPES]  # type: ignore[valid-type]
WebhookUrl = Annotated[
    str,
    StringConstraints(strip_whitespace=True, min_length=1, max_length=2048),
    Field(description="http(s); must resolve to a public address when sent", examples=["https://example.com/hooks"]),
]
Description = Annotated[str, StringConstraints(max_length=500)]


def _distinct(values: list[str]) -> list[str]:
    return list(dict.fromkeys(values))


EventTypes = Annotated[
    list[EventType],
    Field(min_length=1, max_length=len(WEBHOOK_EVENT_TYPES), description="The events sent to this endpoint"),
    AfterValidator(_distinct),
]
_EXAMPLE = {
    "url": "https://example.com/hooks/c3po",
    "event_types": ["appointment.created", "appointment.cancelled"],
    "is_active": True,
    "description": "CRM sync",
}


class WebhookCreate(StrictModel):
    url: WebhookUrl
    event_types: EventTypes
    is_active: Flag = True
    description: Description = ""

    model_config = ConfigDict(json_schema_extra={"examples": [_EXAMPLE]})


class WebhookUpdate(StrictModel):
    """Only the fields sent change; turning an endpoint back on clears why it was disabled."""

    url: Omittable[WebhookUrl] = None
    event_types: Omittable[EventTypes] = None
    is_active: Omittable[Flag] = None
    description: Omittable[Description] = None

    model_config = ConfigDict(json_schema_extra={"examples": [{"is_active": True}]})


class WebhookOut(BaseModel):
    model_config = ConfigDict(from_attributes=True)

    id: uuid.UUID
    url: str
    event_types: list[str]
    is_active: bool
    description: str
    disabled_reason: str | None = Field(description="Why c3po turned it off (410, failing too long); null otherwise")
    failing_since: UtcDatetime | None = Field(description="Every attempt since then failed; null after a success")
    previous_secret_until: UtcDatetime | None = Field(description="The rotated-out secret signs too until then")
    created_at: UtcDatetime
    updated_at: UtcDatetime


class WebhookSecret(BaseModel):
    secret: str = Field(
        description="`whsec_` + base64; shown only now. Verify with any Standard Webhooks library",
        examples=["whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw"],
    )
    previous_secret_until: UtcDatetime | None = Field(description="Until then the old secret signs as well")


class WebhookCreated(WebhookOut):
    secret: str = Field(description="`whsec_` + base64; shown only in this answer (and at rotation)")


class WebhookPage(Page[WebhookOut]):
    pass


class WebhookDeliveryOut(BaseModel):
    """One event sent to one endpoint: its attempts so far and what the last one got."""

    id: int
    event_type: str = Field(examples=["appointment.created"])
    webhook_id: str = Field(description="The `webhook-id` header: the same on every attempt and redelivery")
    status: Literal["pending", "delivered", "failed"]
    attempts: int = Field(description="HTTP attempts made")
    last_status_code: int | None = Field(description="null: no HTTP answer (refused, timed out, no connection)")
    last_latency_ms: int | None
    last_error: str | None
    last_response_body: str | None = Field(description="The start of the receiver's last answer")
    next_attempt_at: UtcDatetime | None = Field(description="When the next retry is due; null once delivered or failed")
    created_at: UtcDatetime
    delivered_at: UtcDatetime | None
    failed_at: UtcDatetime | None


class WebhookDeliveryPage(Page[WebhookDeliveryOut]):
    pass
