"""No manage-link token in any log line: a real API (`python -m app serve`) and worker in production
mode; a client books, the worker mails the link, and the link is used to view, list free slots,
reschedule and cancel (and once more in the query string, and once altered). Every line of both
logs is searched for the token; the access lines show it masked."""

import json
from datetime import timedelta

import httpx

from app.redis import close_redis
from tests.e2e.conftest import Stack
from tests.e2e.test_log_redaction import FRONTEND, mailed_token, start_api
from tests.factories import LOGIN_URL, PASSWORD, create_user
from tests.scheduling import URL, booking_body, create_service, create_staff, days_ahead, local

MANAGE = "/api/v1/manage"


async def test_manage_link_tokens_never_reach_the_logs(stack: Stack, session, tmp_path):
    staff = await create_staff(session)
    service = await create_service(session, [staff])
    client = await create_user(session)
    env = {**stack.env, "ENVIRONMENT": "production", "FRONTEND_URL": FRONTEND, "LOG_LEVEL": "INFO"}
    stack.env = env
    worker = stack.start_worker()
    api_log = tmp_path / "api.log"
    api, base = start_api(stack, api_log, env)
    day = days_ahead(6)
    try:
        async with httpx.AsyncClient(base_url=base, timeout=30) as http:
            signed_in = await http.post(LOGIN_URL, data={"username": client.email, "password": PASSWORD})
            headers = {"Authorization": f"Bearer {signed_in.json()['access_token']}"}
            seen = len(stack.smtp.messages)
            booked = await http.post(URL, json=booking_body(service, staff, local(day, 10)), headers=headers)
            assert booked.status_code == 201, booked.text
            link, token = await mailed_token(stack, client.email, seen)
            assert link.startswith(f"{FRONTEND}/appointments/{booked.json()['id']}?token=")

            assert (await http.get(f"{MANAGE}/{token}")).status_code == 200
            assert (await http.get(f"{MANAGE}/{token}", params={"token": token})).status_code == 200
            window = {"start": day.isoformat(), "end": (day + timedelta(days=1)).isoformat(), "tz": "Europe/Berlin"}
            assert (await http.get(f"{MANAGE}/{token}/availability", params=window)).status_code == 200
            moved = await http.post(
                f"{MANAGE}/{token}/reschedule",
                json={"starts_at": local(day, 14).isoformat()},
                headers={"Idempotency-Key": "move-1"},
            )
            assert moved.status_code == 200, moved.text
            assert (await http.post(f"{MANAGE}/{token}/cancel", json={"reason": "r"})).status_code == 200
            assert (await http.get(f"{MANAGE}/{token}")).status_code == 410
            altered = token[:-2] + ("AA" if not token.endswith("AA") else "BB")
            assert (await http.get(f"{MANAGE}/{altered}")).status_code == 404
            assert (await http.get("/api/v1/users/me", headers={"Authorization": f"Bearer {token}"})).status_code == 401
            # Booked, rescheduled, cancelled, to both: the worker logged its part before it stops.
            await stack.smtp.wait_for(seen + 6, timeout=60)
    finally:
        api.terminate()
        api.wait(30)
        worker.stop()
        await close_redis()
        print(f"--- api.log\n{api_log.read_text(errors='replace')}")

    lines = api_log.read_text(errors="replace").splitlines() + worker.log().splitlines()
    messages = [json.loads(line)["record"]["message"] for line in lines if line.startswith("{")]
    assert any(f"GET {MANAGE}/[redacted] 200 " in message for message in messages)
    assert any(f"GET {MANAGE}/[redacted]/availability 200 " in message for message in messages)
    assert any(f"POST {MANAGE}/[redacted]/cancel 200 " in message for message in messages)
    assert any(f"GET {MANAGE}/[redacted] 404 " in message for message in messages)
    for line in lines:
        for secret in (token, altered, link):
            assert secret not in line, line
        assert token[:40] not in line and token[-40:] not in line, line
