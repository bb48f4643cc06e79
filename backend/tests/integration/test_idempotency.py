"""`app.services.booking.idempotency`: one execution per (user, key, request), answers stored only after commit."""

import asyncio
import json
import uuid

import pytest

from app.database import unit_of_work
from app.errors import IdempotencyKeyInProgress, IdempotencyKeyReused
from app.redis import get_redis
from app.services.booking import idempotency

FINGERPRINT = idempotency.fingerprint("POST", "/api/v1/appointments", b'{"a": 1}')


async def stored(user_id: uuid.UUID, key: str) -> dict | None:
    raw = await get_redis().get(idempotency.redis_key(user_id, key))
    return json.loads(raw) if raw else None


async def eventually_gone(user_id: uuid.UUID, key: str) -> bool:
    for _ in range(100):
        if await stored(user_id, key) is None:
            return True
        await asyncio.sleep(0.01)
    return False


def counting(body: dict, calls: list[int]):
    async def operation() -> dict:
        calls.append(1)
        return body

    return operation


async def run_once(user_id, key, operation, print_=FINGERPRINT) -> idempotency.Answer:
    async with unit_of_work() as session:
        return await idempotency.run(
            session, user_id=user_id, key=key, request_fingerprint=print_, status=201, operation=operation
        )


class TestFingerprint:
    def test_json_key_order_and_spacing_do_not_matter(self):
        assert idempotency.fingerprint("POST", "/x", b'{"a": 1, "b": [1, 2]}') == idempotency.fingerprint(
            "POST", "/x", b'{"b":[1,2],"a":1}'
        )

    def test_method_path_and_body_do(self):
        prints = {
            idempotency.fingerprint("POST", "/x", b'{"a": 1}'),
            idempotency.fingerprint("PATCH", "/x", b'{"a": 1}'),
            idempotency.fingerprint("POST", "/y", b'{"a": 1}'),
            idempotency.fingerprint("POST", "/x", b'{"a": 2}'),
            idempotency.fingerprint("POST", "/x", b"not json"),
            idempotency.fingerprint("POST", "/x", b""),
        }
        assert len(prints) == 6


class TestRun:
    async def test_without_a_key_it_just_runs(self, app):
        calls: list[int] = []

        answers = [await run_once(uuid.uuid4(), None, counting({"n": 1}, calls)) for _ in range(2)]

        assert calls == [1, 1] and not any(a.replayed for a in answers)

    async def test_the_answer_is_stored_only_after_the_commit(self, app):
        user_id, calls = uuid.uuid4(), []
        async with unit_of_work() as session:
            await idempotency.run(
                session,
                user_id=user_id,
                key="k",
                request_fingerprint=FINGERPRINT,
                status=201,
                operation=counting({"id": "a"}, calls),
            )
            assert (await stored(user_id, "k"))["state"] == "pending"

        answer = await stored(user_id, "k")
        assert answer == {"fingerprint": FINGERPRINT, "state": "done", "status": 201, "body": {"id": "a"}}
        assert 0 < await get_redis().ttl(idempotency.redis_key(user_id, "k")) <= idempotency.ANSWER_TTL_SECONDS

    async def test_a_replay_does_nothing_again(self, app):
        user_id, calls = uuid.uuid4(), []

        first = await run_once(user_id, "k", counting({"id": "a"}, calls))
        second = await run_once(user_id, "k", counting({"id": "b"}, calls))

        assert calls == [1]
        assert (second.status, second.body, second.replayed) == (201, {"id": "a"}, True) and not first.replayed

    async def test_another_request_with_the_key_is_refused(self, app):
        user_id = uuid.uuid4()
        await run_once(user_id, "k", counting({}, []))

        with pytest.raises(IdempotencyKeyReused):
            await run_once(user_id, "k", counting({}, []), print_=idempotency.fingerprint("POST", "/other", b""))

    async def test_a_failed_operation_releases_the_key(self, app):
        user_id = uuid.uuid4()

        async def failing() -> dict:
            raise RuntimeError("boom")

        with pytest.raises(RuntimeError):
            await run_once(user_id, "k", failing)

        assert await stored(user_id, "k") is None
        calls: list[int] = []
        assert not (await run_once(user_id, "k", counting({}, calls))).replayed and calls == [1]

    async def test_a_rollback_after_the_work_releases_the_key(self, app):
        user_id = uuid.uuid4()

        with pytest.raises(LookupError):
            async with unit_of_work() as session:
                await idempotency.run(
                    session,
                    user_id=user_id,
                    key="k",
                    request_fingerprint=FINGERPRINT,
                    status=201,
                    operation=counting({}, []),
                )
                raise LookupError("the commit did not happen")

        assert await eventually_gone(user_id, "k")

    async def test_a_concurrent_duplicate_waits_for_the_first_answer(self, app):
        user_id, calls, release = uuid.uuid4(), [], asyncio.Event()

        async def slow() -> dict:
            calls.append(1)
            await release.wait()
            return {"id": "first"}

        first = asyncio.create_task(run_once(user_id, "k", slow))
        await asyncio.sleep(0.05)
        second = asyncio.create_task(run_once(user_id, "k", counting({"id": "second"}, calls)))
        await asyncio.sleep(0.2)
        assert not second.done()
        release.set()

        assert (await first).body == (await second).body == {"id": "first"}
        assert (await second).replayed and calls == [1]

    async def test_a_duplicate_gives_up_waiting_with_409(self, app, monkeypatch):
        monkeypatch.setattr(idempotency, "WAIT_SECONDS", 0.2)
        user_id, release = uuid.uuid4(), asyncio.Event()

        async def slow() -> dict:
            await release.wait()
            return {}

        first = asyncio.create_task(run_once(user_id, "k", slow))
        await asyncio.sleep(0.05)
        with pytest.raises(IdempotencyKeyInProgress):
            await run_once(user_id, "k", counting({}, []))
        release.set()
        await first

    async def test_a_different_request_is_refused_even_while_the_first_runs(self, app):
        user_id, release = uuid.uuid4(), asyncio.Event()

        async def slow() -> dict:
            await release.wait()
            return {}

        first = asyncio.create_task(run_once(user_id, "k", slow))
        await asyncio.sleep(0.05)
        with pytest.raises(IdempotencyKeyReused):
            await run_once(user_id, "k", counting({}, []), print_=idempotency.fingerprint("POST", "/other", b""))
        release.set()
        await first
