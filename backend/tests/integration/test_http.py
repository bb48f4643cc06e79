"""Cross-cutting HTTP behaviour: problem details, size and media-type limits, headers, CORS, health, OpenAPI."""

import json
import re
import secrets

import pytest
from httpx import ASGITransport, AsyncClient
from redis.asyncio import Redis
from sqlalchemy.ext.asyncio import create_async_engine

import app.database
import app.redis
from app.config import Settings, get_settings
from app.logging import setup_logging
from app.main import create_app
from app.models import Role
from tests.assertions import PROBLEM, assert_problem, assert_unauthorized
from tests.factories import create_user, start_session, unique_email

REGISTER = "/api/v1/auth/register"
RESET = "/api/v1/auth/password-reset"
ME = "/api/v1/users/me"
FRONTEND = "http://localhost:5173"
SECURITY_HEADERS = {
    "x-content-type-options": "nosniff",
    "x-frame-options": "DENY",
    "referrer-policy": "strict-origin-when-cross-origin",
}


def assert_security_headers(response) -> None:
    for name, value in SECURITY_HEADERS.items():
        assert response.headers[name] == value, name
    assert "default-src" in response.headers["content-security-policy"]
    assert re.fullmatch(r"[A-Za-z0-9._-]{1,128}", response.headers["x-request-id"])


def registration(**changes) -> dict:
    return {"email": unique_email(), "password": "a long unusual passphrase", "full_name": "Ada", **changes}


class TestProblemDetails:
    async def test_401(self, client):
        response = await client.get(ME)
        assert_unauthorized(response)
        assert_problem(response, 401, "not_authenticated")

    async def test_403(self, client, session):
        pair = await start_session(await create_user(session, role=Role.staff))
        assert_problem(await client.get("/api/v1/users", headers=pair.headers), 403, "forbidden")

    async def test_404_unknown_path(self, client):
        assert_problem(await client.get("/api/v1/no-such-thing"), 404, "not_found")

    async def test_405(self, client):
        response = await client.put(ME, json={})
        assert_problem(response, 405, "method_not_allowed")
        assert set(response.headers["allow"].replace(" ", "").split(",")) == {"GET", "PATCH", "DELETE"}

    async def test_422_lists_every_error_with_its_field(self, client):
        response = await client.post(REGISTER, json={"email": "not-an-email", "password": "short"})
        body = assert_problem(response, 422, "validation_error")
        assert {tuple(e["loc"]) for e in body["errors"]} == {
            ("body", "email"),
            ("body", "password"),
            ("body", "full_name"),
        }
        assert all(isinstance(e["msg"], str) and e["msg"] and e["type"] for e in body["errors"])

    async def test_422_for_malformed_json(self, client):
        response = await client.post(REGISTER, content=b'{"email": ', headers={"Content-Type": "application/json"})
        body = assert_problem(response, 422, "validation_error")
        assert body["errors"][0]["type"] == "json_invalid"

    async def test_500_carries_no_internals(self, session):
        fresh = create_app()

        async def explode() -> None:
            raise RuntimeError("SELECT hashed_password FROM users -- secret detail")

        fresh.add_api_route("/explode", explode, operation_id="test-explode")
        async with AsyncClient(transport=ASGITransport(app=fresh), base_url="http://testserver") as http:
            response = await http.get("/explode", headers={"X-Request-ID": "trace-me-500"})

        body = assert_problem(response, 500, "internal_error")
        assert set(body) == {"type", "title", "status", "detail", "code"}
        for secret in ("Traceback", "RuntimeError", "SELECT", "secret", "explode", ".py"):
            assert secret not in response.text
        assert_security_headers(response)
        assert response.headers["x-request-id"] == "trace-me-500"


class TestBodySize:
    async def test_declared_body_over_1_mib_is_413(self, client):
        response = await client.post(
            REGISTER, content=b"x" * (1024 * 1024 + 1), headers={"Content-Type": "application/json"}
        )
        assert_problem(response, 413, "payload_too_large")
        assert_security_headers(response)

    async def test_streamed_body_over_1_mib_is_413(self, client):
        async def chunks():
            for _ in range(17):
                yield b"x" * 65536  # 1 MiB + 64 KiB, with no Content-Length

        response = await client.post(REGISTER, content=chunks(), headers={"Content-Type": "application/json"})

        assert "content-length" not in response.request.headers
        assert_problem(response, 413, "payload_too_large")

    async def test_body_of_exactly_1_mib_is_read(self, client):
        body = registration(full_name="")
        padding = 1024 * 1024 - len(json.dumps(body).encode())
        payload = json.dumps({**body, "full_name": "n" * padding}).encode()
        assert len(payload) == get_settings().max_body_bytes

        response = await client.post(REGISTER, content=payload, headers={"Content-Type": "application/json"})

        body = assert_problem(response, 422, "validation_error")  # read and judged: the name is too long
        assert body["errors"][0]["loc"] == ["body", "full_name"]


class TestMediaType:
    @pytest.mark.parametrize(
        "content_type",
        ["text/plain", "application/xml", "application/x-www-form-urlencoded", "multipart/form-data; boundary=x"],
    )
    async def test_json_endpoint_refuses_other_media_types(self, client, session, content_type):
        payload = registration()
        response = await client.post(REGISTER, content=json.dumps(payload), headers={"Content-Type": content_type})
        assert_problem(response, 415, "unsupported_media_type")
        assert_security_headers(response)

    async def test_body_without_content_type(self, client):
        response = await client.post(REGISTER, content=json.dumps(registration()).encode())
        assert "content-type" not in response.request.headers
        assert_problem(response, 415, "unsupported_media_type")

    async def test_xml_body(self, client):
        response = await client.post(
            REGISTER,
            content=b"<user><email>a@example.org</email></user>",
            headers={"Content-Type": "application/xml"},
        )
        assert_problem(response, 415, "unsupported_media_type")

    @pytest.mark.parametrize("content_type", ["application/json; charset=utf-8", "application/merge-patch+json"])
    async def test_json_variants_are_accepted(self, client, content_type):
        response = await client.post(
            REGISTER, content=json.dumps(registration()), headers={"Content-Type": content_type}
        )
        assert response.status_code == 202

    async def test_empty_body_is_judged_by_validation(self, client):
        response = await client.post(REGISTER)
        assert_problem(response, 422, "validation_error")

    async def test_bodyless_routes_ignore_the_content_type(self, client, session):
        pair = await start_session(await create_user(session))
        response = await client.post(
            "/api/v1/auth/logout", headers={**pair.headers, "Content-Type": "text/plain"}, content=b""
        )
        assert response.status_code == 204


class TestSecurityHeaders:
    @pytest.mark.parametrize("path", ["/health", "/api/v1/users/me", "/api/v1/missing"])
    async def test_on_every_answer(self, client, path):
        response = await client.get(path)
        assert_security_headers(response)
        assert response.headers["content-security-policy"].startswith("default-src 'none'")
        assert "strict-transport-security" not in response.headers  # not outside production

    @pytest.mark.parametrize("path", ["/docs", "/redoc"])
    async def test_docs_load_their_assets_from_the_app(self, client, path):
        response = await client.get(path)
        assert response.status_code == 200
        csp = response.headers["content-security-policy"]
        assert "http" not in csp, csp  # no third-party host, only 'self' (and data:/blob:)
        assert response.headers["x-frame-options"] == "DENY"
        assets = re.findall(r'(?:src|href)="([^"]+)"', response.text)
        assert assets and all(url.startswith("/") for url in assets), assets
        for url in assets:
            asset = await client.get(url)
            assert asset.status_code == 200, url
            assert len(asset.content) > 1000, url

    async def test_hsts_in_production(self, service_urls):
        settings = Settings(environment="production", secret_key=secrets.token_urlsafe(32))
        try:
            production = create_app(settings)
            async with AsyncClient(transport=ASGITransport(app=production), base_url="https://api.example") as http:
                response = await http.get("/health")
        finally:
            setup_logging(get_settings())  # production logs JSON lines; the rest of the run should not
        assert response.headers["strict-transport-security"].startswith("max-age=")
        assert_security_headers(response)


class TestCORS:
    async def test_configured_origin_is_allowed(self, client):
        response = await client.get("/health", headers={"Origin": FRONTEND})
        assert response.headers["access-control-allow-origin"] == FRONTEND
        assert "x-request-id" in response.headers["access-control-expose-headers"].lower()

    async def test_preflight_for_configured_origin(self, client):
        response = await client.options(
            "/api/v1/auth/login",
            headers={
                "Origin": FRONTEND,
                "Access-Control-Request-Method": "POST",
                "Access-Control-Request-Headers": "authorization, content-type",
            },
        )
        assert response.status_code == 200
        assert response.headers["access-control-allow-origin"] == FRONTEND
        assert "POST" in response.headers["access-control-allow-methods"]

    async def test_other_origin_is_refused(self, client):
        simple = await client.get("/health", headers={"Origin": "https://evil.example"})
        preflight = await client.options(
            "/api/v1/auth/login",
            headers={"Origin": "https://evil.example", "Access-Control-Request-Method": "POST"},
        )
        assert "access-control-allow-origin" not in simple.headers
        assert preflight.status_code == 400
        assert "access-control-allow-origin" not in preflight.headers


class TestRequestId:
    async def test_a_valid_incoming_id_is_echoed(self, client):
        response = await client.get("/health", headers={"X-Request-ID": "abc-123_DEF.9"})
        assert response.headers["x-request-id"] == "abc-123_DEF.9"

    async def test_generated_when_missing(self, client):
        first = (await client.get("/health")).headers["x-request-id"]
        second = (await client.get("/health")).headers["x-request-id"]
        assert re.fullmatch(r"[0-9a-f]{32}", first) and first != second

    @pytest.mark.parametrize("incoming", ["has spaces in it", "x" * 129, "new\\nline", "<script>"])
    async def test_an_unsafe_incoming_id_is_replaced(self, client, incoming):
        response = await client.get("/health", headers={"X-Request-ID": incoming})
        assert re.fullmatch(r"[0-9a-f]{32}", response.headers["x-request-id"])

    async def test_on_problem_answers_too(self, client):
        response = await client.get(ME, headers={"X-Request-ID": "problem-id"})
        assert response.status_code == 401 and response.headers["x-request-id"] == "problem-id"


class TestClientAddress:
    """Per-IP limits use the peer address; `X-Forwarded-For` counts only through configured proxies."""

    async def test_forwarded_for_from_an_untrusted_peer_is_ignored(self, client):
        for n in range(10):
            headers = {"X-Forwarded-For": f"198.51.100.{n}"}
            assert (await client.post(RESET, json={"email": unique_email()}, headers=headers)).status_code == 202

        response = await client.post(RESET, json={"email": unique_email()}, headers={"X-Forwarded-For": "192.0.2.1"})

        assert_problem(response, 429, "rate_limited")
        assert int(response.headers["retry-after"]) > 0

    async def test_forwarded_for_through_a_trusted_proxy_names_the_client(self, client, monkeypatch):
        monkeypatch.setattr(get_settings(), "trusted_proxies", ["203.0.113.0/24"])
        for _ in range(10):  # one client behind two of our proxies
            headers = {"X-Forwarded-For": "198.51.100.1, 203.0.113.50"}
            assert (await client.post(RESET, json={"email": unique_email()}, headers=headers)).status_code == 202

        same_client = await client.post(
            RESET, json={"email": unique_email()}, headers={"X-Forwarded-For": "198.51.100.1"}
        )
        other_client = await client.post(
            RESET, json={"email": unique_email()}, headers={"X-Forwarded-For": "198.51.100.2"}
        )

        assert_problem(same_client, 429, "rate_limited")
        assert other_client.status_code == 202


class TestMetrics:
    """Request series by route template (prometheus-fastapi-instrumentator's names), scraped at /metrics."""

    @staticmethod
    async def _count(client, series: str) -> float:
        text = (await client.get("/metrics")).text
        match = re.search(rf"^{re.escape(series)} (\S+)$", text, re.MULTILINE)
        return float(match.group(1)) if match else 0.0

    async def test_a_request_counts_under_its_route_template(self, client, session):
        pair = await start_session(await create_user(session))
        series = 'http_requests_total{handler="/api/v1/users/me",method="GET",status="2xx"}'
        duration = 'http_request_duration_seconds_count{handler="/api/v1/users/me",method="GET"}'
        before, before_duration = await self._count(client, series), await self._count(client, duration)

        assert (await client.get(ME, headers=pair.headers)).status_code == 200

        assert await self._count(client, series) == before + 1
        assert await self._count(client, duration) == before_duration + 1

    async def test_templates_hold_when_the_first_request_was_to_the_admin_panel(self, service_urls, session):
        """The mounted admin app sets `scope["app"]` to itself: the table of templates, built on a
        process's first request, must still be the API's (it was the panel's, for good)."""
        from app.main import create_app

        pair = await start_session(await create_user(session))
        series = 'http_requests_total{handler="/api/v1/users/me",method="GET",status="2xx"}'
        async with AsyncClient(transport=ASGITransport(app=create_app()), base_url="http://testserver") as fresh:
            assert (await fresh.get("/admin/login")).status_code == 200  # the process's first request
            before = await self._count(fresh, series)

            assert (await fresh.get(ME, headers=pair.headers)).status_code == 200

            assert await self._count(fresh, series) == before + 1

    async def test_path_parameters_stay_in_the_template(self, client):
        series = 'http_requests_total{handler="/api/v1/appointments/{appointment_id}",method="GET",status="4xx"}'
        before = await self._count(client, series)

        await client.get("/api/v1/appointments/0b7c4cbb-4b9a-4a4f-9d5e-6b7c9a1d2e3f")

        assert await self._count(client, series) == before + 1

    async def test_an_unmatched_path_counts_as_none(self, client):
        series = 'http_requests_total{handler="none",method="GET",status="4xx"}'
        before = await self._count(client, series)

        await client.get("/no/such/path")

        assert await self._count(client, series) == before + 1

    async def test_probes_and_scrapes_are_not_counted(self, client):
        await client.get("/health")
        text = (await client.get("/metrics")).text
        assert 'handler="/health' not in text
        assert 'handler="/metrics"' not in text


class TestHealth:
    @pytest.mark.parametrize(
        ("path", "body"),
        [
            ("/health", {"status": "ok"}),
            ("/health/db", {"status": "ok", "database": "up"}),
            ("/health/redis", {"status": "ok", "redis": "up"}),
        ],
    )
    async def test_up(self, client, path, body):
        response = await client.get(path)
        assert response.status_code == 200
        assert response.json() == body

    async def test_redis_down_is_503(self, client, monkeypatch):
        dead = Redis.from_url("redis://127.0.0.1:1/0", socket_connect_timeout=0.5, socket_timeout=0.5)
        monkeypatch.setattr(app.redis, "_client", dead)
        try:
            response = await client.get("/health/redis")
        finally:
            await dead.aclose()
        assert response.status_code == 503
        assert response.json()["status"] == "unavailable"

    async def test_database_down_is_503(self, client, monkeypatch):
        dead = create_async_engine("postgresql+asyncpg://nobody@127.0.0.1:1/none", connect_args={"timeout": 0.5})
        monkeypatch.setattr(app.database, "_engine", dead)
        try:
            response = await client.get("/health/db")
        finally:
            await dead.dispose()
        assert response.status_code == 503
        assert response.json()["database"] == "down"


class TestOpenAPI:
    @pytest.fixture
    async def schema(self, client) -> dict:
        response = await client.get("/openapi.json")
        assert response.status_code == 200
        return response.json()

    async def test_readable_unique_operation_ids(self, schema):
        operations = [op for path in schema["paths"].values() for op in path.values()]
        ids = [op["operationId"] for op in operations]
        assert len(ids) == len(set(ids))
        assert all(re.fullmatch(r"[a-z]+(-[a-z0-9]+)*", op_id) for op_id in ids), ids
        assert {"auth-login", "auth-register", "auth-refresh", "users-get-me", "health"} <= set(ids)

    async def test_every_operation_has_a_tag_and_a_summary(self, schema):
        for path, methods in schema["paths"].items():
            for method, op in methods.items():
                assert op.get("tags") and op.get("summary"), f"{method} {path}"

    async def test_problem_schema_documents_errors(self, schema):
        problem = schema["components"]["schemas"]["Problem"]
        assert set(problem["required"]) == {"type", "title", "status", "detail", "code"}
        login = schema["paths"]["/api/v1/auth/login"]["post"]
        for status in ("400", "403", "422", "429"):
            content = login["responses"][status]["content"]
            assert list(content) == [PROBLEM]

    async def test_login_is_an_oauth2_password_form(self, schema):
        login = schema["paths"]["/api/v1/auth/login"]["post"]
        assert "application/x-www-form-urlencoded" in login["requestBody"]["content"]
        flows = schema["components"]["securitySchemes"]["OAuth2PasswordBearer"]["flows"]
        assert flows["password"]["tokenUrl"] == "/api/v1/auth/login"

    async def test_request_bodies_carry_examples(self, schema):
        register = schema["components"]["schemas"]["RegisterIn"]
        assert register["examples"][0]["email"]
