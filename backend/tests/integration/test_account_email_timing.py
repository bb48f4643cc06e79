"""Taken and new addresses answer alike: same status and body, and (printed, not asserted) similar times."""

import statistics
import time

from app.config import get_settings
from tests.assertions import assert_problem
from tests.factories import PASSWORD, create_user, login, unique_email

AUTH = "/api/v1/auth"
ROUNDS = 6


async def _timed(client, path: str, body: dict) -> tuple[float, int, dict]:
    started = time.perf_counter()
    response = await client.post(f"{AUTH}{path}", json=body)
    return time.perf_counter() - started, response.status_code, response.json()


def _report(label: str, taken: list[float], new: list[float]) -> None:
    print(
        f"{label}: taken median {statistics.median(taken) * 1000:.1f} ms, "
        f"new median {statistics.median(new) * 1000:.1f} ms over {ROUNDS} each"
    )


async def test_register_answers_alike_for_taken_and_new_addresses(client, session, monkeypatch):
    monkeypatch.setattr(get_settings(), "sensitive_requests_per_ip", "1000/minute")
    taken_times, new_times, answers = [], [], set()
    for _ in range(ROUNDS):  # interleaved, so drifting machine load hits both alike
        owner = await create_user(session)
        for email, times in ((owner.email, taken_times), (unique_email(), new_times)):
            elapsed, status, body = await _timed(
                client, "/register", {"email": email, "password": PASSWORD + " x", "full_name": "Ada"}
            )
            times.append(elapsed)
            answers.add((status, tuple(sorted(body.items()))))
    _report("register", taken_times, new_times)
    assert len(answers) == 1 and next(iter(answers))[0] == 202


async def test_password_reset_answers_alike_for_known_and_unknown_addresses(client, session, monkeypatch):
    monkeypatch.setattr(get_settings(), "sensitive_requests_per_ip", "1000/minute")
    known_times, unknown_times, answers = [], [], set()
    for _ in range(ROUNDS):
        owner = await create_user(session)
        for email, times in ((owner.email, known_times), (unique_email(), unknown_times)):
            elapsed, status, body = await _timed(client, "/password-reset", {"email": email})
            times.append(elapsed)
            answers.add((status, tuple(sorted(body.items()))))
    _report("password reset (known as taken)", known_times, unknown_times)
    assert len(answers) == 1 and next(iter(answers))[0] == 202


async def test_register_then_sign_in_at_once_says_the_email_is_not_verified(client):
    email = unique_email()
    registered = await client.post(f"{AUTH}/register", json={"email": email, "password": PASSWORD, "full_name": "A"})
    assert registered.status_code == 202
    assert_problem(await login(client, email), 403, "email_not_verified")
