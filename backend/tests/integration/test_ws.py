"""WebSocket `/api/v1/ws` through a real uvicorn server in this process: authentication as for HTTP,
events published after commit (never after a rollback) reaching only their user's sockets."""

import asyncio
import json
import os
import socket
import uuid
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta

import pytest
import uvicorn
from redis.asyncio import Redis
from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import ConnectionClosed

from app.api import ws
from app.database import unit_of_work
from app.redis import get_redis
from app.services.accounts import auth
from app.services.messaging import events
from app.utils.security import create_access_token, decode_access_token
from tests.factories import create_user, start_session

TIMEOUT = 5


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@pytest.fixture(scope="module")
async def ws_url(app) -> AsyncIterator[str]:
    port = _free_port()
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, lifespan="off", log_level="warning"))
    task = asyncio.create_task(server.serve())
    while not server.started:
        assert not task.done(), "uvicorn did not start"
        await asyncio.sleep(0.01)
    yield f"ws://127.0.0.1:{port}/api/v1/ws"
    server.should_exit = True
    await task
    await events.close_hub()


async def receive(socket_: ClientConnection) -> dict:
    return json.loads(await asyncio.wait_for(socket_.recv(), TIMEOUT))


async def closed_with(socket_: ClientConnection) -> int:
    """The close code the server sent, reading past anything sent before it."""
    with pytest.raises(ConnectionClosed) as closed:
        while True:
            await asyncio.wait_for(socket_.recv(), TIMEOUT)
    assert closed.value.rcvd is not None, "closed without a close frame"
    return closed.value.rcvd.code


async def open_socket(ws_url: str, token: str) -> ClientConnection:
    """Connected, authenticated by the first message, and subscribed (`ready` received)."""
    socket_ = await connect(ws_url)
    await socket_.send(json.dumps({"token": token}))
    ready = await receive(socket_)
    assert ready["type"] == "ready", ready
    return socket_


async def publish_committed(user_ids: list[uuid.UUID], event_type: str, data: dict) -> None:
    async with unit_of_work() as db:
        events.publish_after_commit(db, user_ids, event_type, data)


@pytest.fixture
async def user(session):
    return await create_user(session)


class TestAuthentication:
    async def test_token_as_first_message(self, ws_url, user):
        token = (await start_session(user)).access_token
        async with await connect(ws_url) as socket_:
            await socket_.send(json.dumps({"token": token}))
            ready = await receive(socket_)
        assert ready["type"] == "ready"
        assert ready["data"]["user_id"] == str(user.id)

    async def test_bare_token_as_first_message(self, ws_url, user):
        token = (await start_session(user)).access_token
        async with await connect(ws_url) as socket_:
            await socket_.send(token)
            assert (await receive(socket_))["data"]["user_id"] == str(user.id)

    async def test_token_in_the_query(self, ws_url, user):
        token = (await start_session(user)).access_token
        async with await connect(f"{ws_url}?token={token}") as socket_:
            assert (await receive(socket_))["data"]["user_id"] == str(user.id)

    async def test_token_in_a_binary_frame(self, ws_url, user):
        token = (await start_session(user)).access_token
        async with await connect(ws_url) as socket_:
            await socket_.send(token.encode())
            assert (await receive(socket_))["data"]["user_id"] == str(user.id)

    @pytest.mark.parametrize("token", ["not-a-token", "", "eyJhbGciOiJIUzI1NiJ9.e30.x"])
    async def test_bad_token_closes_4401(self, ws_url, token):
        async with await connect(ws_url) as socket_:
            await socket_.send(json.dumps({"token": token}))
            assert await closed_with(socket_) == ws.AUTH_FAILED

    async def test_bad_token_in_the_query_closes_4401(self, ws_url):
        async with await connect(f"{ws_url}?token=nope") as socket_:
            assert await closed_with(socket_) == ws.AUTH_FAILED

    async def test_expired_token_closes_4401(self, ws_url, user):
        long_ago = datetime.now(UTC) - timedelta(hours=2)
        token, _ = create_access_token(user.id, user.role, session_id="s", now=long_ago)
        async with await connect(ws_url) as socket_:
            await socket_.send(token)
            assert await closed_with(socket_) == ws.AUTH_FAILED

    async def test_logged_out_token_closes_4401(self, ws_url, user):
        session = await start_session(user)
        await auth.logout(decode_access_token(session.access_token), session.refresh_token)
        async with await connect(ws_url) as socket_:
            await socket_.send(session.access_token)
            assert await closed_with(socket_) == ws.AUTH_FAILED

    async def test_deactivated_user_closes_4401(self, ws_url, session):
        user = await create_user(session, active=False)
        token = (await start_session(user)).access_token
        async with await connect(ws_url) as socket_:
            await socket_.send(token)
            assert await closed_with(socket_) == ws.AUTH_FAILED

    async def test_no_token_in_time_closes_4401(self, ws_url, monkeypatch):
        monkeypatch.setattr(ws, "AUTH_TIMEOUT_SECONDS", 0.2)
        async with await connect(ws_url) as socket_:
            assert await closed_with(socket_) == ws.AUTH_FAILED


class TestEvents:
    async def test_published_on_commit_reaches_every_socket_of_the_user(self, ws_url, user):
        token = (await start_session(user)).access_token
        first, second = await open_socket(ws_url, token), await open_socket(ws_url, token)
        appointment_id = uuid.uuid4()

        await publish_committed([user.id], "appointment.created", {"id": appointment_id, "at": datetime(2030, 1, 1)})

        expected = {"type": "appointment.created", "data": {"id": str(appointment_id), "at": "2030-01-01T00:00:00"}}
        assert await receive(first) == expected
        assert await receive(second) == expected
        await first.close()
        await second.close()

    async def test_rolled_back_event_is_never_sent(self, ws_url, user):
        socket_ = await open_socket(ws_url, (await start_session(user)).access_token)

        with pytest.raises(RuntimeError):
            async with unit_of_work() as db:
                events.publish_after_commit(db, [user.id], "appointment.created", {"n": 1})
                raise RuntimeError("the request failed")
        await publish_committed([user.id], "appointment.updated", {"n": 2})

        # Redis keeps publish order on a channel: had the first been sent, it would arrive first.
        assert await receive(socket_) == {"type": "appointment.updated", "data": {"n": 2}}
        await socket_.close()

    async def test_only_the_addressed_users_receive_it(self, ws_url, session):
        alice, bob, carol = [await create_user(session) for _ in range(3)]
        sockets = {u.id: await open_socket(ws_url, (await start_session(u)).access_token) for u in (alice, bob, carol)}

        await publish_committed([alice.id, bob.id, alice.id], "appointment.cancelled", {"for": "alice+bob"})
        await publish_committed([carol.id], "appointment.created", {"for": "carol"})

        assert (await receive(sockets[alice.id]))["data"] == {"for": "alice+bob"}
        assert (await receive(sockets[bob.id]))["data"] == {"for": "alice+bob"}
        assert (await receive(sockets[carol.id]))["data"] == {"for": "carol"}
        await publish_committed([alice.id], "marker", {})
        assert (await receive(sockets[alice.id]))["type"] == "marker"  # the duplicate id sent nothing twice
        for socket_ in sockets.values():
            await socket_.close()

    async def test_ping_is_answered(self, ws_url, user):
        socket_ = await open_socket(ws_url, (await start_session(user)).access_token)
        await socket_.send("ping")
        assert await receive(socket_) == {"type": "pong"}
        await socket_.send(json.dumps({"type": "ping"}))
        assert await receive(socket_) == {"type": "pong"}
        await socket_.close()


class TestConnectionLifetime:
    async def test_heartbeat_when_quiet(self, ws_url, user, monkeypatch):
        monkeypatch.setattr(ws, "HEARTBEAT_SECONDS", 0.1)
        socket_ = await open_socket(ws_url, (await start_session(user)).access_token)
        assert await receive(socket_) == {"type": "heartbeat"}
        await socket_.close()

    async def test_revoked_session_is_closed_at_the_next_heartbeat(self, ws_url, user, session, monkeypatch):
        monkeypatch.setattr(ws, "HEARTBEAT_SECONDS", 0.1)
        socket_ = await open_socket(ws_url, (await start_session(user)).access_token)

        await auth.revoke_all_sessions(user)
        await session.commit()

        assert await closed_with(socket_) == ws.AUTH_FAILED

    async def test_closed_when_the_token_expires(self, ws_url, user, session):
        issued = datetime.now(UTC) - timedelta(minutes=15) + timedelta(seconds=2)  # 15 min tokens: 2 s left
        user.tokens_valid_after = issued - timedelta(minutes=1)
        await session.commit()
        token, _ = create_access_token(user.id, user.role, session_id="s", now=issued)
        socket_ = await open_socket(ws_url, token)
        assert await closed_with(socket_) == ws.AUTH_FAILED

    async def test_a_fresh_token_keeps_it_open(self, ws_url, user):
        session = await start_session(user)
        socket_ = await open_socket(ws_url, session.access_token)
        fresh = (await start_session(user)).access_token
        await socket_.send(json.dumps({"token": fresh}))
        renewed = await receive(socket_)
        assert renewed["type"] == "authenticated"
        assert renewed["data"]["expires_at"].endswith("Z")
        await socket_.close()

    async def test_a_token_of_another_user_closes_it(self, ws_url, user, session):
        socket_ = await open_socket(ws_url, (await start_session(user)).access_token)
        other = await create_user(session)
        await socket_.send(json.dumps({"token": (await start_session(other)).access_token}))
        assert await closed_with(socket_) == ws.AUTH_FAILED

    async def test_disconnect_unsubscribes(self, ws_url, user):
        token = (await start_session(user)).access_token
        first, second = await open_socket(ws_url, token), await open_socket(ws_url, token)
        channel = events.channel(user.id)
        hub = events.get_hub()
        assert channel in hub.channels

        await first.close()
        await publish_committed([user.id], "still.here", {})
        assert (await receive(second))["type"] == "still.here"  # one socket gone, the other still served
        assert channel in hub.channels
        await second.close()

        for _ in range(200):
            [(_, subscribers)] = await get_redis().pubsub_numsub(channel)
            if channel not in hub.channels and subscribers == 0:
                break
            await asyncio.sleep(0.02)
        assert channel not in hub.channels
        assert subscribers == 0


class TestRedisOutage:
    async def test_the_hub_subscribes_again_after_losing_its_connection(self, ws_url, user):
        socket_ = await open_socket(ws_url, (await start_session(user)).access_token)
        redis = get_redis()
        name = f"c3po-events-{os.getpid()}"
        killed = [c["id"] for c in await redis.client_list(_type="pubsub") if c.get("name") == name]
        assert len(killed) == 1
        await redis.client_kill_filter(_id=killed[0])

        # Pub/sub keeps nothing: what is published before the hub is back is lost, so publish until heard.
        for _ in range(250):
            if await redis.publish(events.channel(user.id), events.encode("back", {})):
                break
            await asyncio.sleep(0.02)
        assert await receive(socket_) == {"type": "back", "data": {}}
        await socket_.close()

    async def test_without_redis_the_socket_is_told_to_try_again_later(self, ws_url, user, monkeypatch):
        token = (await start_session(user)).access_token
        unreachable = events.Hub(Redis.from_url(f"redis://127.0.0.1:{_free_port()}/0", socket_connect_timeout=1))
        monkeypatch.setattr(events, "_hub", unreachable)
        try:
            async with await connect(ws_url) as socket_:
                await socket_.send(token)
                assert await closed_with(socket_) == ws.TRY_AGAIN_LATER
        finally:
            await unreachable.close()

    async def test_a_channel_left_without_listeners_is_unsubscribed_when_it_speaks(self, ws_url, user):
        hub = events.get_hub()
        name = events.channel(user.id)
        await hub._pubsub.subscribe(name)  # as redis-py does on reconnecting when an unsubscribe was lost
        hub._ensure_reader()
        redis = get_redis()
        for _ in range(250):
            if not await redis.publish(name, events.encode("nobody", {})):
                break  # the hub let go of it
            await asyncio.sleep(0.02)
        [(_, subscribers)] = await redis.pubsub_numsub(name)
        assert subscribers == 0
        assert name not in hub.channels
