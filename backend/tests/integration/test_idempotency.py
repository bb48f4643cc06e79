"""`app.services.booking.idempotency`: one execution per (user, key, request), the answer kept in
PostgreSQL in the change's own transaction."""

import asyncio
from datetime import timedelta

import pytest
from sqlalchemy import func, select, update

from app.database import after_commit, unit_of_work
from app.errors import IdempotencyKeyInProgress, IdempotencyKeyReused, NotFound, RateLimited
from app.models import IdempotencyKey, User
from app.services import retention
from app.services.booking import idempotency
from tests.factories import create_user, unique_email

FINGERPRINT = idempotency.fingerprint("POST", "/api/v1/appointments", b'{"a": 1}')


@pytest.fixture
async def user_id(session):
    return (await create_user(session)).id


async def stored(session, user_id, key: str) -> IdempotencyKey | None:
    session.expire_all()
    return await session.get(IdempotencyKey, (user_id, key))


def counting(body: dict, calls: list[int]):
    async def operation() -> dict:
        calls.append(1)
        return body

    return operation


def problem(exc) -> dict:
    return {"code": exc.code, "detail": exc.detail}


async def run_once(user_id, key, operation, print_=FINGERPRINT, error_body=problem) -> idempotency.Answer:
    async with unit_of_work() as session:
        return await idempotency.run(
            session,
            user_id=user_id,
            key=key,
            request_fingerprint=print_,
            status=201,
            operation=operation,
            error_body=error_body,
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
    async def test_without_a_key_it_just_runs(self, app, user_id):
        calls: list[int] = []

        answers = [await run_once(user_id, None, counting({"n": 1}, calls)) for _ in range(2)]

        assert calls == [1, 1] and not any(a.replayed for a in answers)

    async def test_the_answer_is_stored_in_the_same_transaction(self, app, session, user_id):
        async with unit_of_work() as work:
            await idempotency.run(
                work,
                user_id=user_id,
                key="k",
                request_fingerprint=FINGERPRINT,
                status=201,
                operation=counting({"id": "a"}, []),
            )
            assert await stored(session, user_id, "k") is None  # not committed yet: invisible to others
            mine = await work.get(IdempotencyKey, (user_id, "k"))
            assert (mine.status, mine.response_status, mine.response_body) == ("done", 201, {"id": "a"})

        row = await stored(session, user_id, "k")
        assert (row.fingerprint, row.status, row.response_status, row.response_body) == (
            FINGERPRINT,
            "done",
            201,
            {"id": "a"},
        )

    async def test_a_replay_does_nothing_again(self, app, user_id):
        calls: list[int] = []

        first = await run_once(user_id, "k", counting({"id": "a"}, calls))
        second = await run_once(user_id, "k", counting({"id": "b"}, calls))

        assert calls == [1]
        assert (second.status, second.body, second.replayed) == (201, {"id": "a"}, True) and not first.replayed

    async def test_another_request_with_the_key_is_refused(self, app, user_id):
        await run_once(user_id, "k", counting({}, []))

        with pytest.raises(IdempotencyKeyReused):
            await run_once(user_id, "k", counting({}, []), print_=idempotency.fingerprint("POST", "/other", b""))

    async def test_a_4xx_from_the_change_is_the_stored_answer(self, app, session, user_id):
        calls: list[int] = []

        async def refused() -> dict:
            calls.append(1)
            raise NotFound("no such thing")

        first = await run_once(user_id, "k", refused)
        again = await run_once(user_id, "k", counting({"id": "late"}, calls))

        assert (first.status, first.body, first.replayed) == (
            404,
            {"code": "not_found", "detail": "no such thing"},
            False,
        )
        assert (again.status, again.body, again.replayed) == (404, first.body, True) and calls == [1]

    async def test_what_a_refused_change_wrote_is_undone(self, app, session, user_id):
        ran: list[str] = []

        async def side_effect() -> None:
            ran.append("after commit")

        async def writes_then_fails() -> dict:
            work.add(User(email=unique_email(), hashed_password="x", full_name="Ghost", role="user"))
            await work.flush()
            after_commit(work, side_effect)
            raise NotFound()

        async with unit_of_work() as work:
            answer = await idempotency.run(
                work,
                user_id=user_id,
                key="k",
                request_fingerprint=FINGERPRINT,
                status=201,
                operation=writes_then_fails,
                error_body=problem,
            )

        assert answer.status == 404 and ran == []
        assert await session.scalar(select(func.count()).select_from(IdempotencyKey)) == 1
        assert await session.scalar(select(func.count()).select_from(User)) == 1  # only the fixture's

    @pytest.mark.parametrize("error", [RuntimeError("boom"), RateLimited(3)])
    async def test_5xx_and_429_are_not_stored_and_free_the_key(self, app, session, user_id, error):
        async def failing() -> dict:
            raise error

        with pytest.raises(type(error)):
            await run_once(user_id, "k", failing)

        assert await stored(session, user_id, "k") is None
        calls: list[int] = []
        assert not (await run_once(user_id, "k", counting({}, calls))).replayed and calls == [1]

    async def test_without_error_body_errors_propagate_and_free_the_key(self, app, session, user_id):
        async def refused() -> dict:
            raise NotFound()

        with pytest.raises(NotFound):
            await run_once(user_id, "k", refused, error_body=None)

        assert await stored(session, user_id, "k") is None

    async def test_a_rollback_after_the_work_frees_the_key(self, app, session, user_id):
        with pytest.raises(LookupError):
            async with unit_of_work() as work:
                await idempotency.run(
                    work,
                    user_id=user_id,
                    key="k",
                    request_fingerprint=FINGERPRINT,
                    status=201,
                    operation=counting({}, []),
                )
                raise LookupError("the commit did not happen")

        assert await stored(session, user_id, "k") is None

    async def test_concurrent_duplicates_wait_for_the_first_answer(self, app, user_id):
        calls, release = [], asyncio.Event()

        async def slow() -> dict:
            calls.append(1)
            await release.wait()
            return {"id": "first"}

        first = asyncio.create_task(run_once(user_id, "k", slow))
        await asyncio.sleep(0.05)
        others = [asyncio.create_task(run_once(user_id, "k", counting({"id": "other"}, calls))) for _ in range(8)]
        await asyncio.sleep(0.3)
        assert not any(task.done() for task in others)  # blocked on the first one's key row
        release.set()

        answers = [await first, *await asyncio.gather(*others)]
        assert {str(a.body) for a in answers} == {"{'id': 'first'}"} and calls == [1]
        assert [a.replayed for a in answers] == [False] + [True] * 8

    async def test_a_duplicate_after_a_rolled_back_first_does_the_work(self, app, user_id):
        release = asyncio.Event()

        async def slow_failure() -> dict:
            await release.wait()
            raise RuntimeError("boom")

        first = asyncio.create_task(run_once(user_id, "k", slow_failure))
        await asyncio.sleep(0.05)
        second = asyncio.create_task(run_once(user_id, "k", counting({"id": "second"}, [])))
        await asyncio.sleep(0.1)
        release.set()

        with pytest.raises(RuntimeError):
            await first
        answer = await second
        assert (answer.body, answer.replayed) == ({"id": "second"}, False)

    async def test_a_duplicate_gives_up_waiting_with_409(self, app, user_id, monkeypatch):
        monkeypatch.setattr(idempotency, "WAIT_SECONDS", 0.2)
        release = asyncio.Event()

        async def slow() -> dict:
            await release.wait()
            return {}

        first = asyncio.create_task(run_once(user_id, "k", slow))
        await asyncio.sleep(0.05)
        with pytest.raises(IdempotencyKeyInProgress):
            await run_once(user_id, "k", counting({}, []))
        release.set()
        await first

    async def test_a_different_request_waits_then_is_refused(self, app, user_id):
        release = asyncio.Event()

        async def slow() -> dict:
            await release.wait()
            return {}

        first = asyncio.create_task(run_once(user_id, "k", slow))
        await asyncio.sleep(0.05)
        other = asyncio.create_task(
            run_once(user_id, "k", counting({}, []), print_=idempotency.fingerprint("POST", "/other", b""))
        )
        await asyncio.sleep(0.1)
        release.set()
        await first
        with pytest.raises(IdempotencyKeyReused):
            await other


class TestExpiry:
    async def age(self, session, hours: float) -> None:
        await session.execute(update(IdempotencyKey).values(created_at=func.now() - timedelta(hours=hours)))
        await session.commit()

    async def test_the_worker_purges_keys_older_than_a_day_in_batches(self, app, session, user_id):
        for n in range(5):
            await run_once(user_id, f"old-{n}", counting({}, []))
        await self.age(session, 25)
        await run_once(user_id, "fresh", counting({}, []))

        assert await retention.purge(retention.IDEMPOTENCY_KEYS, batch=2) == 5

        keys = await session.scalars(select(IdempotencyKey.key))
        assert list(keys) == ["fresh"]
        assert await retention.purge_expired_idempotency_keys({}) == 0

    async def test_after_the_purge_the_key_runs_afresh(self, app, session, user_id):
        calls: list[int] = []
        await run_once(user_id, "k", counting({"id": "a"}, calls))
        await self.age(session, 25)
        await retention.purge(retention.IDEMPOTENCY_KEYS)

        answer = await run_once(user_id, "k", counting({"id": "b"}, calls), print_="another request")

        assert (answer.body, answer.replayed, calls) == ({"id": "b"}, False, [1, 1])

    async def test_an_expired_key_not_yet_purged_counts_as_absent(self, app, session, user_id):
        calls: list[int] = []
        await run_once(user_id, "k", counting({"id": "a"}, calls))
        await self.age(session, 24.1)

        answer = await run_once(user_id, "k", counting({"id": "b"}, calls), print_="another request")

        assert (answer.body, answer.replayed, calls) == ({"id": "b"}, False, [1, 1])
        assert (await stored(session, user_id, "k")).fingerprint == "another request"

    async def test_a_key_within_the_day_still_replays(self, app, session, user_id):
        await run_once(user_id, "k", counting({"id": "a"}, []))
        await self.age(session, 23.9)
        await retention.purge(retention.IDEMPOTENCY_KEYS)

        assert (await run_once(user_id, "k", counting({"id": "b"}, []))).body == {"id": "a"}
