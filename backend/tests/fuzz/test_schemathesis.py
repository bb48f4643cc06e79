"""schemathesis (v4) over every operation in `/openapi.json`, as anonymous, user, staff and admin.

The API runs as a real uvicorn process on the test database; the callers are real accounts whose
tokens come from `/api/v1/auth/login`. Every operation in the schema is tested, so a new endpoint
is covered as soon as it is routed. A call that ends its session (logout, logout-all, a password
change, erasing one's account) gets a token of its own, and erasure an account of its own, so the
caller's token keeps working for every other call.

`SCHEMATHESIS_EXAMPLES` (default 25) sets the examples per operation and caller; a release runs
`SCHEMATHESIS_EXAMPLES=500 SCHEMATHESIS_COVERAGE=1` (backend/README.md).
"""

import os
from collections.abc import AsyncIterator
from dataclasses import dataclass, field

import httpx
import pytest
import schemathesis
from schemathesis.checks import not_a_server_error
from schemathesis.specs.openapi.checks import (
    content_type_conformance,
    ignored_auth,
    negative_data_rejection,
    response_headers_conformance,
    response_schema_conformance,
    status_code_conformance,
)

from app.database import get_sessionmaker
from app.models import Role
from tests.apiserver import api_process
from tests.factories import LOGIN_URL, PASSWORD, create_user, unique_email
from tests.scheduling import create_service, create_staff
from tests.state import empty_state

EXAMPLES = int(os.environ.get("SCHEMATHESIS_EXAMPLES", "25"))
# The coverage phase (every boundary and type of every parameter, well past EXAMPLES cases per
# operation) triples the run: on for a release (`SCHEMATHESIS_COVERAGE=1`), off in the CI profile.
COVERAGE_PHASE = os.environ.get("SCHEMATHESIS_COVERAGE", "0") == "1"
CHECKS = [
    not_a_server_error,
    status_code_conformance,
    content_type_conformance,
    response_schema_conformance,
    response_headers_conformance,
    negative_data_rejection,
    ignored_auth,
]
CALLERS = ["anonymous", "user", "staff", "admin"]
# Logout ends only the session it is called with: a fresh sign-in of the caller is enough. The
# others end every session of the account (or the account): they get a throwaway account of the
# caller's role, so the caller's own token keeps working for the rest of the run.
SESSION_ENDING = {("POST", "/api/v1/auth/logout")}
ACCOUNT_ENDING = {
    ("POST", "/api/v1/auth/logout-all"),
    ("POST", "/api/v1/users/me/password"),
    ("DELETE", "/api/v1/users/me"),
}
# Per-IP and per-email limits would turn the fresh sign-ins into 429s; the limits have tests of their own.
UNLIMITED = "1000000/minute"
# Sign-ins and new accounts hash a password at nice 19 (app/utils/security.py): on a busy machine one
# can take several seconds, past httpx's default 5 s. A bound still.
HASHING_TIMEOUT = 60
SETTINGS = {
    "LOGIN_ATTEMPTS_PER_IP": UNLIMITED,
    "LOGIN_FAILURES_PER_EMAIL": UNLIMITED,
    "SENSITIVE_REQUESTS_PER_IP": UNLIMITED,
    "SENSITIVE_REQUESTS_PER_EMAIL": UNLIMITED,
    "LOG_LEVEL": "WARNING",
}
CONFIG = schemathesis.Config.from_dict(
    {
        "generation": {"max-examples": EXAMPLES, "mode": "all", "database": "none"},
        "phases": {
            "examples": {"enabled": True},
            "coverage": {"enabled": COVERAGE_PHASE},
            "fuzzing": {"enabled": True},
            "stateful": {"enabled": False},
        },
        "suppress-health-check": ["all"],
    }
)


@dataclass
class Caller:
    """Who calls: their role, their token, and how to sign in again for a session-ending call."""

    name: str
    base_url: str = ""
    email: str | None = None
    token: str | None = None
    admin_token: str | None = None
    fresh_tokens: list[str] = field(default_factory=list)

    def login(self, email: str) -> str:
        response = httpx.post(
            f"{self.base_url}{LOGIN_URL}", data={"username": email, "password": PASSWORD}, timeout=HASHING_TIMEOUT
        )
        assert response.status_code == 200, response.text
        return response.json()["access_token"]

    def token_for(self, method: str, path: str) -> str | None:
        if self.token is None:
            return None
        if (method, path) in SESSION_ENDING:
            token = self.login(self.email)
        elif (method, path) in ACCOUNT_ENDING:
            token = self.login(self._throwaway_account())
        else:
            return self.token
        self.fresh_tokens.append(token)
        return token

    def _throwaway_account(self) -> str:
        email = unique_email()
        body = {"email": email, "password": PASSWORD, "full_name": "Throwaway", "role": self.name}
        headers = {"Authorization": f"Bearer {self.admin_token}"}
        response = httpx.post(f"{self.base_url}/api/v1/users", json=body, headers=headers, timeout=HASHING_TIMEOUT)
        assert response.status_code == 201, response.text
        return email


CURRENT = Caller("anonymous")


@pytest.fixture(scope="module")
def api_url(service_urls, tmp_path_factory):
    with api_process(tmp_path_factory.mktemp("schemathesis") / "api.log", **SETTINGS) as base_url:
        yield base_url


@pytest.fixture(autouse=True)
def _clean_state():
    """Instead of the per-test cleanup: the accounts live for the module (`callers` cleans up after it)."""
    yield


@pytest.fixture(scope="module")
async def callers(api_url) -> AsyncIterator[dict[str, str]]:
    """One account per role, and a bookable service, so lists and lookups have something to answer."""
    async with get_sessionmaker()() as session:
        admin = await create_user(session, role=Role.admin)
        user = await create_user(session)
        staff = await create_staff(session)
        await create_service(session, [staff])
        emails = {"user": user.email, "staff": staff.email, "admin": admin.email}
    yield emails
    await empty_state()


@pytest.fixture(scope="module")
def tokens(api_url, callers) -> dict[str, str]:
    return {role: Caller(role, base_url=api_url).login(email) for role, email in callers.items()}


def _openapi() -> dict:
    """The document the app serves at /openapi.json (built from the routes; no server needed to collect)."""
    from app.main import create_app

    return create_app().openapi()


schema = schemathesis.openapi.from_dict(_openapi(), config=CONFIG)


@pytest.fixture
def as_caller(api_url, callers, tokens, caller) -> Caller:
    global CURRENT
    CURRENT = Caller(caller, api_url, callers.get(caller), tokens.get(caller), tokens["admin"])
    return CURRENT


@schema.auth(refresh_interval=None, retry_on=[])
class CallerAuth:
    def get(self, case, context) -> str | None:
        return CURRENT.token_for(case.operation.method.upper(), case.operation.path)

    def set(self, case, data, context) -> None:
        case.headers = {**(case.headers or {}), "Authorization": f"Bearer {data}"}


# One xdist group per caller: four workers can share the run, each with an API process of its own.
@pytest.mark.parametrize("caller", [pytest.param(c, marks=pytest.mark.xdist_group(f"fuzz-{c}")) for c in CALLERS])
@schema.parametrize()
def test_every_operation_conforms(case, caller, as_caller):
    case.call_and_validate(base_url=as_caller.base_url, checks=CHECKS)
