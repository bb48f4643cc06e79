"""Two API processes: a logout made through one closes, at once, the socket its session holds on the other."""

import asyncio
import json
import time

import httpx
from websockets.asyncio.client import connect
from websockets.exceptions import ConnectionClosed

from tests.e2e import test_ws_fanout
from tests.e2e.test_ws_fanout import listen
from tests.factories import create_user, start_session

two_apis = test_ws_fanout.two_apis  # the module's fixture, used here too

BOUND_SECONDS = 15  # generous: the heartbeat re-check (25 s) must not be what closes it
SESSION_ENDED = 4001


async def _close_code(socket_) -> tuple[int | None, float]:
    started = time.perf_counter()
    try:
        while True:
            message = json.loads(await asyncio.wait_for(socket_.recv(), BOUND_SECONDS))
            assert message["type"] == "heartbeat", message
    except ConnectionClosed as closed:
        return (closed.rcvd.code if closed.rcvd else None), time.perf_counter() - started


async def test_a_logout_through_one_process_closes_the_socket_held_by_the_other(two_apis, session):
    a, b = two_apis
    user = await create_user(session)
    pair = await start_session(user)
    other_login = await start_session(user)
    socket_ = await listen(b, user)  # a session of its own: not the one logged out
    same_session = await connect(f"ws://{b}/api/v1/ws")
    await same_session.send(json.dumps({"token": pair.access_token}))
    assert json.loads(await asyncio.wait_for(same_session.recv(), 10))["type"] == "ready"

    async with httpx.AsyncClient(timeout=10) as http:
        started = time.perf_counter()
        answer = await http.post(
            f"http://{a}/api/v1/auth/logout", headers={"Authorization": f"Bearer {pair.access_token}"}
        )
        assert answer.status_code == 204, answer.text
        code, waited = await _close_code(same_session)
        print(
            f"socket on B closed {time.perf_counter() - started:.3f}s after the logout on A was sent"
            f" ({waited:.3f}s after its 204)"
        )
        assert code == SESSION_ENDED

        # Another session's socket stays; logout-all through A closes it too.
        await socket_.send("ping")
        assert json.loads(await asyncio.wait_for(socket_.recv(), 10)) == {"type": "pong"}
        everywhere = await http.post(
            f"http://{a}/api/v1/auth/logout-all", headers={"Authorization": f"Bearer {other_login.access_token}"}
        )
        assert everywhere.status_code == 204, everywhere.text
        code, waited = await _close_code(socket_)
        print(f"after logout-all: closed {waited:.3f}s after the 204")
        assert code == SESSION_ENDED
