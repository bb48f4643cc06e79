"""The bounded wait behind the admission limit and the password-hashing limit."""

import asyncio

import pytest

from app.errors import ServerBusy
from app.utils.gate import Gate


async def test_holders_up_to_the_limit_enter_at_once():
    gate = Gate(2, timeout=0.01)
    await gate.acquire()
    await gate.acquire()
    assert gate.in_use == 2
    gate.release()
    gate.release()
    assert gate.in_use == 0


async def test_a_waiter_enters_when_a_holder_leaves():
    gate = Gate(1, timeout=5)
    await gate.acquire()
    waiter = asyncio.create_task(gate.acquire())
    await asyncio.sleep(0)
    assert gate.waiting == 1
    gate.release()
    await asyncio.wait_for(waiter, 1)
    assert (gate.in_use, gate.waiting) == (1, 0)


async def test_a_waiter_gives_up_after_the_timeout():
    gate = Gate(1, timeout=0.05, what="the thing")
    await gate.acquire()
    with pytest.raises(ServerBusy, match="0.05 s for the thing") as busy:
        await gate.acquire()
    assert busy.value.headers == {"Retry-After": "1"}
    assert (gate.in_use, gate.waiting) == (1, 0)


async def test_beyond_max_waiting_the_caller_is_turned_away_without_waiting():
    gate = Gate(1, timeout=30, max_waiting=1)
    await gate.acquire()
    waiter = asyncio.create_task(gate.acquire())
    await asyncio.sleep(0)
    with pytest.raises(ServerBusy, match="Too many"):
        await asyncio.wait_for(gate.acquire(), 1)
    gate.release()
    await asyncio.wait_for(waiter, 1)


async def test_a_cancelled_waiter_does_not_leak_a_slot():
    gate = Gate(1, timeout=30)
    await gate.acquire()
    waiter = asyncio.create_task(gate.acquire())
    await asyncio.sleep(0)
    waiter.cancel()
    with pytest.raises(asyncio.CancelledError):
        await waiter
    gate.release()
    async with gate.held():
        assert (gate.in_use, gate.waiting) == (1, 0)
    assert gate.in_use == 0
