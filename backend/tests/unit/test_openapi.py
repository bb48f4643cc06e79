"""The OpenAPI document is what generated clients are built from: its shape is part of the contract."""

import json
import re

import pytest
from fastapi import APIRouter
from openapi_spec_validator import validate

from app.api.openapi import api_routes
from app.errors import AppError
from app.main import create_app

# Every operation of the API. A new route adds its line; a changed id renames a client method: don't.
OPERATIONS = [
    ("DELETE", "/api/v1/resources/{resource_id}", "resources-delete"),
    ("DELETE", "/api/v1/resources/{resource_id}/closures/{closure_id}", "resources-delete-closure"),
    ("DELETE", "/api/v1/services/{service_id}", "services-deactivate"),
    ("DELETE", "/api/v1/staff/{staff_id}/calendars/{calendar_id}", "staff-delete-calendar"),
    ("DELETE", "/api/v1/staff/{staff_id}/overrides/{override_id}", "staff-delete-override"),
    ("DELETE", "/api/v1/staff/{staff_id}/time-off/{time_off_id}", "staff-delete-time-off"),
    ("DELETE", "/api/v1/users/me", "users-delete-me"),
    ("DELETE", "/api/v1/users/{user_id}", "users-deactivate"),
    ("DELETE", "/api/v1/waitlist/{entry_id}", "waitlist-leave"),
    ("DELETE", "/api/v1/webhooks/{webhook_id}", "webhooks-delete"),
    ("GET", "/api/v1/appointments", "appointments-list"),
    ("GET", "/api/v1/appointments/{appointment_id}", "appointments-get"),
    ("GET", "/api/v1/appointments/{appointment_id}.ics", "appointments-get-ics"),
    ("GET", "/api/v1/appointments/{appointment_id}/attendees", "appointments-attendees"),
    ("GET", "/api/v1/audit-log", "audit-list"),
    ("GET", "/api/v1/availability", "availability-list"),
    ("GET", "/api/v1/manage/{token}", "manage-get"),
    ("GET", "/api/v1/manage/{token}/availability", "manage-availability"),
    ("GET", "/api/v1/calendar-feeds/{token}.ics", "calendar-feeds-get"),
    ("GET", "/api/v1/resources", "resources-list"),
    ("GET", "/api/v1/resources/{resource_id}", "resources-get"),
    ("GET", "/api/v1/resources/{resource_id}/closures", "resources-list-closures"),
    ("GET", "/api/v1/services", "services-list"),
    ("GET", "/api/v1/services/{service_id}", "services-get"),
    ("GET", "/api/v1/staff", "staff-list"),
    ("GET", "/api/v1/staff/{staff_id}", "staff-get"),
    ("GET", "/api/v1/staff/{staff_id}/calendars", "staff-list-calendars"),
    ("GET", "/api/v1/staff/{staff_id}/calendars/{calendar_id}", "staff-get-calendar"),
    ("GET", "/api/v1/staff/{staff_id}/overrides", "staff-list-overrides"),
    ("GET", "/api/v1/staff/{staff_id}/schedule", "staff-get-schedule"),
    ("GET", "/api/v1/staff/{staff_id}/time-off", "staff-list-time-off"),
    ("GET", "/api/v1/users", "users-list"),
    ("GET", "/api/v1/users/me", "users-get-me"),
    ("GET", "/api/v1/users/me/calendar-feed", "calendar-feeds-get-mine"),
    ("GET", "/api/v1/users/me/export", "users-export-me"),
    ("GET", "/api/v1/users/{user_id}", "users-get"),
    ("GET", "/api/v1/waitlist", "waitlist-list"),
    ("GET", "/api/v1/waitlist/offers/{offer_id}", "waitlist-get-offer"),
    ("GET", "/api/v1/webhooks", "webhooks-list"),
    ("GET", "/api/v1/webhooks/{webhook_id}", "webhooks-get"),
    ("GET", "/api/v1/webhooks/{webhook_id}/deliveries", "webhooks-deliveries"),
    ("GET", "/health", "health"),
    ("GET", "/health/db", "health-db"),
    ("GET", "/health/redis", "health-redis"),
    ("PATCH", "/api/v1/appointments/{appointment_id}", "appointments-update"),
    ("PATCH", "/api/v1/resources/{resource_id}", "resources-update"),
    ("PATCH", "/api/v1/services/{service_id}", "services-update"),
    ("PATCH", "/api/v1/staff/{staff_id}/calendars/{calendar_id}", "staff-update-calendar"),
    ("PATCH", "/api/v1/users/me", "users-update-me"),
    ("PATCH", "/api/v1/users/{user_id}", "users-update"),
    ("PATCH", "/api/v1/webhooks/{webhook_id}", "webhooks-update"),
    ("POST", "/api/v1/appointment-series/{series_id}/cancel", "appointment-series-cancel"),
    ("POST", "/api/v1/appointments", "appointments-create"),
    ("POST", "/api/v1/appointments/{appointment_id}/cancel", "appointments-cancel"),
    ("POST", "/api/v1/appointments/{appointment_id}/complete", "appointments-complete"),
    ("POST", "/api/v1/appointments/{appointment_id}/confirm", "appointments-confirm"),
    ("POST", "/api/v1/appointments/{appointment_id}/no-show", "appointments-no-show"),
    ("POST", "/api/v1/auth/email-change/confirm", "auth-confirm-email-change"),
    ("POST", "/api/v1/auth/login", "auth-login"),
    ("POST", "/api/v1/auth/logout", "auth-logout"),
    ("POST", "/api/v1/auth/logout-all", "auth-logout-all"),
    ("POST", "/api/v1/auth/password-reset", "auth-password-reset"),
    ("POST", "/api/v1/auth/password-reset/confirm", "auth-password-reset-confirm"),
    ("POST", "/api/v1/auth/refresh", "auth-refresh"),
    ("POST", "/api/v1/auth/register", "auth-register"),
    ("POST", "/api/v1/auth/totp/disable", "auth-totp-disable"),
    ("POST", "/api/v1/auth/totp/enable", "auth-totp-enable"),
    ("POST", "/api/v1/auth/totp/setup", "auth-totp-setup"),
    ("POST", "/api/v1/auth/verify-email", "auth-verify-email"),
    ("POST", "/api/v1/auth/verify-email/resend", "auth-resend-verification"),
    ("POST", "/api/v1/manage/{token}/cancel", "manage-cancel"),
    ("POST", "/api/v1/manage/{token}/reschedule", "manage-reschedule"),
    ("POST", "/api/v1/resources", "resources-create"),
    ("POST", "/api/v1/resources/{resource_id}/closures", "resources-create-closure"),
    ("POST", "/api/v1/services", "services-create"),
    ("POST", "/api/v1/staff/{staff_id}/calendars", "staff-connect-calendar"),
    ("POST", "/api/v1/staff/{staff_id}/calendars/{calendar_id}/sync", "staff-sync-calendar"),
    ("POST", "/api/v1/staff/{staff_id}/overrides", "staff-set-override"),
    ("POST", "/api/v1/staff/{staff_id}/time-off", "staff-create-time-off"),
    ("POST", "/api/v1/users", "users-create"),
    ("POST", "/api/v1/users/me/calendar-feed/rotate", "calendar-feeds-rotate-mine"),
    ("POST", "/api/v1/users/me/email", "users-change-email"),
    ("POST", "/api/v1/users/me/password", "users-change-password"),
    ("POST", "/api/v1/waitlist", "waitlist-join"),
    ("POST", "/api/v1/waitlist/offers/{offer_id}/claim", "waitlist-claim-offer"),
    ("POST", "/api/v1/waitlist/offers/{offer_id}/decline", "waitlist-decline-offer"),
    ("POST", "/api/v1/webhooks", "webhooks-create"),
    ("POST", "/api/v1/webhooks/{webhook_id}/deliveries/{delivery_id}/redeliver", "webhooks-redeliver"),
    ("POST", "/api/v1/webhooks/{webhook_id}/rotate-secret", "webhooks-rotate-secret"),
    ("PUT", "/api/v1/staff/{staff_id}/schedule", "staff-replace-schedule"),
    ("GET", "/api/v1/staff/{staff_id}/limits", "staff-get-limits"),
    ("PUT", "/api/v1/staff/{staff_id}/limits", "staff-replace-limits"),
]
PUBLIC = {
    "auth-register",
    "auth-login",
    "auth-refresh",
    "auth-verify-email",
    "auth-confirm-email-change",
    "auth-resend-verification",
    "auth-password-reset",
    "auth-password-reset-confirm",
    "availability-list",
    "manage-get",
    "manage-cancel",
    "manage-reschedule",
    "manage-availability",
    "calendar-feeds-get",
    "staff-list",
    "staff-get",
    "health",
    "health-db",
    "health-redis",
}
OPTIONAL_TOKEN = {"services-list", "services-get"}  # public; an admin's token shows deactivated services
IDEMPOTENT = {
    "appointments-create",
    "appointments-update",
    "appointments-cancel",
    "appointments-confirm",
    "appointments-complete",
    "appointments-no-show",
    "appointment-series-cancel",
    "manage-cancel",
    "manage-reschedule",
    "waitlist-claim-offer",
}
PROBLEM = "application/problem+json"


@pytest.fixture(scope="module")
def document() -> dict:
    return json.loads(json.dumps(create_app().openapi()))


def operations(document):
    for path, methods in document["paths"].items():
        for method, operation in methods.items():
            yield method.upper(), path, operation


def resolve(document, ref: str) -> dict:
    node = document
    for part in ref.removeprefix("#/").split("/"):
        node = node[part]
    return node


def problem_codes(document, response) -> set[str]:
    schema = response["content"][PROBLEM]["schema"]
    refs = [item["$ref"] for item in schema.get("oneOf", [schema])]
    return {code for ref in refs for code in resolve(document, ref)["properties"]["code"]["enum"]}


def test_operation_ids_are_explicit_and_stable(document):
    assert sorted((m, p, op["operationId"]) for m, p, op in operations(document)) == sorted(OPERATIONS)


def test_a_route_without_an_operation_id_is_refused_at_startup():
    app = create_app()
    router = APIRouter()

    @router.get("/unnamed")
    async def unnamed() -> None: ...

    app.include_router(router)
    with pytest.raises(RuntimeError, match="no explicit operation_id"):
        api_routes(app)


def test_valid_openapi(document):
    validate(document)


def test_problems_have_one_media_type_and_a_schema_per_status(document):
    for method, path, operation in operations(document):
        for status, response in operation["responses"].items():
            assert re.fullmatch(r"[1-5][0-9][0-9]", status), f"{method} {path} {status}"  # no default, no 4XX
            if int(status) >= 400 and not path.startswith("/health"):
                assert list(response["content"]) == [PROBLEM], f"{method} {path} {status}"
                assert problem_codes(document, response), f"{method} {path} {status}"


def test_listed_codes_are_the_error_classes(document):
    known = {(cls.status, cls.code) for cls in [AppError, *_subclasses(AppError)]}
    for _, _, operation in operations(document):
        for status, response in operation["responses"].items():
            if PROBLEM in response.get("content", {}):
                for code in problem_codes(document, response):
                    assert (int(status), code) in known, (status, code)


def _subclasses(cls):
    for sub in cls.__subclasses__():
        yield sub
        yield from _subclasses(sub)


def test_codes_per_operation(document):
    paths = document["paths"]
    create = paths["/api/v1/appointments"]["post"]["responses"]
    assert {"slot_unavailable", "idempotency_key_in_progress"} <= problem_codes(document, create["409"])
    assert "email_taken" not in problem_codes(document, create["409"])
    assert {"not_authenticated", "invalid_token"} == problem_codes(document, create["401"])
    login = paths["/api/v1/auth/login"]["post"]["responses"]
    assert problem_codes(document, login["400"]) == {"invalid_credentials", "totp_required", "totp_invalid"}
    assert problem_codes(document, login["403"]) == {"email_not_verified", "inactive_user"}
    assert "validation_error" in problem_codes(document, login["422"])
    assert "429" in login and "401" not in login


def test_problem_extras_are_documented(document):
    schemas = document["components"]["schemas"]
    conflicts = schemas["SlotUnavailableProblem"]
    assert "conflicts" in conflicts["required"]
    assert conflicts["properties"]["conflicts"]["items"]["format"] == "date-time"
    assert "occurrences" in schemas["SlotNotOfferedProblem"]["properties"]
    assert "occurrences" not in schemas["SlotNotOfferedProblem"]["required"]
    assert schemas["ValidationErrorProblem"]["properties"]["errors"]["items"] == {
        "$ref": "#/components/schemas/ValidationIssue"
    }
    assert {"error", "error_description"} <= set(schemas["InvalidCredentialsProblem"]["required"])
    assert "staff_ids" in schemas["UnknownStaffProblem"]["required"]


def test_every_datetime_has_its_format(document):
    for name, schema in document["components"]["schemas"].items():
        for member, definition in schema.get("properties", {}).items():
            if member.endswith(("_at", "_at_local")):
                assert "date-time" in json.dumps(definition), f"{name}.{member}"


def test_security_follows_the_dependencies(document):
    for method, path, operation in operations(document):
        op_id = operation["operationId"]
        if op_id in PUBLIC:
            expected = []
        elif op_id in OPTIONAL_TOKEN:
            expected = [{}, {"OAuth2PasswordBearer": []}]
        else:
            expected = [{"OAuth2PasswordBearer": []}]
        assert operation["security"] == expected, f"{method} {path}"


def test_response_headers(document):
    for method, path, operation in operations(document):
        for status, response in operation["responses"].items():
            headers = response["headers"]
            assert "X-Request-ID" in headers, f"{method} {path} {status}"
            if status in ("429", "503") and not path.startswith("/health"):
                assert "Retry-After" in headers, f"{method} {path} {status}"
            if status == "401":
                assert "WWW-Authenticate" in headers
            if status.startswith("2"):
                replayed = "Idempotent-Replayed" in headers
                assert replayed == (operation["operationId"] in IDEMPOTENT), f"{method} {path}"
    for path in ("/api/v1/auth/login", "/api/v1/auth/refresh"):
        assert "Cache-Control" in document["paths"][path]["post"]["responses"]["200"]["headers"]
    assert document["components"]["headers"]["X-Request-ID"]["required"] is True


def test_request_defaults_are_optional_and_response_defaults_required(document):
    schemas = document["components"]["schemas"]
    register = schemas["RegisterIn"]
    assert set(register["required"]) == {"email", "password", "full_name"}
    assert "default" not in json.dumps(register["properties"])
    assert "Default" in register["properties"]["timezone"]["description"]
    assert "token_type" in schemas["TokenPairOut"]["required"]


def test_typed_health_bodies(document):
    for path, member in (("/health/db", "database"), ("/health/redis", "redis")):
        responses = document["paths"][path]["get"]["responses"]
        for status in ("200", "503"):
            schema = resolve(document, responses[status]["content"]["application/json"]["schema"]["$ref"])
            assert {"status", member} <= set(schema["required"])


def test_request_bodies_carry_examples(document):
    for method, path, operation in operations(document):
        body = operation.get("requestBody", {}).get("content", {})
        for media in body.values():
            ref = media["schema"].get("$ref") or media["schema"]["anyOf"][0]["$ref"]  # optional bodies: anyOf null
            schema = resolve(document, ref)
            if "login" not in path:
                assert schema.get("examples"), f"{method} {path}"


def test_availability_parameters_keep_their_order_and_the_manage_picker_shares_the_window(document):
    """Both queries build on `WindowQuery`; the public one's parameters stay in their published order."""
    names = {
        path: [parameter["name"] for parameter in document["paths"][path]["get"]["parameters"]]
        for path in ("/api/v1/availability", "/api/v1/manage/{token}/availability")
    }
    assert names["/api/v1/availability"] == ["service_id", "start", "end", "staff_id", "tz"]
    assert names["/api/v1/manage/{token}/availability"] == ["token", "start", "end", "tz"]
    public, manage = (
        {p["name"]: p for p in document["paths"][path]["get"]["parameters"] if p["name"] in ("start", "end", "tz")}
        for path in names
    )
    assert public == manage
