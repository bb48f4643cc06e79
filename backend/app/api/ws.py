"""WebSocket `/api/v1/ws`: the caller's real-time events, fanned out through Redis.

Protocol (JSON text frames):
- authenticate with `?token=ACCESS_TOKEN` or, better (URLs end up in logs), with the first message:
  `{"token": "..."}` or the bare token; the check is the HTTP Bearer one (signature, expiry,
  revocation). A missing, invalid or revoked token closes the socket with code 4401, as does the
  token's expiry: send `{"token": "<fresh access token>"}` before then to stay connected.
- the session ending closes the socket at once, on whichever process holds it, with code 4001
  ("session ended"): logout of the token's session, logout-all, a password reset or change (the
  changing session's sockets stay), deactivation, a role change, a replayed refresh token; the
  client should sign in again rather than reconnect with the same token;
- the server answers `{"type": "ready", "data": {"user_id", "expires_at"}}` once events flow, then
  sends `{"type": "appointment.created" | ..., "data": {...}}` as they happen, and
  `{"type": "heartbeat"}` after `HEARTBEAT_SECONDS` of silence, when it also checks again that the
  session was not revoked (logout, password change, deactivation: 4401);
- `"ping"` or `{"type": "ping"}` is answered with `{"type": "pong"}`;
- a server shutting down (deploy, scale-in: SIGTERM to `python -m app serve`) closes the socket with
  1012 ("service restart") at once, before it drains its HTTP requests: reconnect with the same token
  (to another process or replica); 1013 means Redis is unreachable: reconnect after a pause.
"""

import asyncio
import json
import time
from contextlib import suppress
from datetime import UTC, datetime

import jwt
from fastapi import APIRouter, WebSocket, WebSocketDisconnect
from loguru import logger
from redis.exceptions import RedisError
from starlette.websockets import WebSocketState

from app.database import get_sessionmaker
from app.errors import AppError
from app.schemas.common import iso_z
from app.services.accounts import auth
from app.services.messaging.events import ends_session, get_hub
from app.utils.security import AccessClaims, decode_access_token

router = APIRouter(tags=["events"])

AUTH_FAILED = 4401  # 4000 + HTTP 401, as several WebSocket APIs do
SESSION_ENDED = 4001
TRY_AGAIN_LATER = 1013
AUTH_TIMEOUT_SECONDS = 10
HEARTBEAT_SECONDS = 25


class _AuthFailed(Exception):
    pass


class _SessionEnded(Exception):
    pass


async def _authenticate(token: str) -> AccessClaims:
    """The HTTP Bearer check, for a socket: valid signature and claims, not revoked, user still active."""
    try:
        claims = decode_access_token(token)
    except jwt.InvalidTokenError as exc:
        raise _AuthFailed("invalid token") from exc
    await _check(claims)
    return claims


async def _check(claims: AccessClaims) -> None:
    """Raise `_AuthFailed` once the token is revoked (logout, password change, deactivation)."""
    async with get_sessionmaker()() as session:
        try:
            await auth.authenticate_access(session, claims)
        except AppError as exc:
            raise _AuthFailed(exc.detail) from exc


def _token_of(text: str) -> str:
    """`{"token": "..."}` or the bare token."""
    with suppress(ValueError):
        message = json.loads(text)
        if isinstance(message, dict):
            return str(message.get("token") or "")
    return text.strip()


def _is_ping(text: str) -> bool:
    if text.strip() == "ping":
        return True
    with suppress(ValueError):
        message = json.loads(text)
        return isinstance(message, dict) and message.get("type") == "ping"
    return False


async def _receive_text(websocket: WebSocket) -> str:
    """The next message as text (a binary frame is decoded as UTF-8); WebSocketDisconnect when the client goes."""
    message = await websocket.receive()
    if message["type"] == "websocket.disconnect":
        raise WebSocketDisconnect(message.get("code", 1000), message.get("reason"))
    if message.get("text") is not None:
        return message["text"]
    return (message.get("bytes") or b"").decode("utf-8", "replace")


async def _first_token(websocket: WebSocket) -> str:
    try:
        text = await asyncio.wait_for(_receive_text(websocket), AUTH_TIMEOUT_SECONDS)
    except TimeoutError as exc:
        raise _AuthFailed("no token") from exc
    return _token_of(text)


class _Connection:
    def __init__(self, websocket: WebSocket, claims: AccessClaims) -> None:
        self.websocket = websocket
        self.claims = claims
        self._send_lock = asyncio.Lock()

    async def send(self, text: str) -> None:
        async with self._send_lock:
            await self.websocket.send_text(text)

    async def listen(self) -> None:
        """Client messages: pings and fresh tokens; returns when the client goes."""
        while True:
            text = await _receive_text(self.websocket)
            if _is_ping(text):
                await self.send('{"type":"pong"}')
                continue
            token = _token_of(text)
            if not token:
                continue
            claims = await _authenticate(token)
            if claims.user_id != self.claims.user_id:
                raise _AuthFailed("token of another user")
            self.claims = claims
            await self.send(json.dumps({"type": "authenticated", "data": {"expires_at": _iso(claims.expires_at)}}))

    async def relay(self, queue: asyncio.Queue[str]) -> None:
        """Events to the socket, a heartbeat when quiet; `_AuthFailed` once the token runs out or is revoked."""
        while True:
            remaining = self.claims.expires_at - time.time()
            if remaining <= 0:
                raise _AuthFailed("token expired")
            try:
                text = await asyncio.wait_for(queue.get(), min(HEARTBEAT_SECONDS, remaining))
            except TimeoutError:
                if self.claims.expires_at - time.time() > 0:
                    await _check(self.claims)  # a quiet moment: is the session still valid?
                    await self.send('{"type":"heartbeat"}')
                continue
            ends = ends_session(text, self.claims.session_id)
            if ends:
                raise _SessionEnded()
            if ends is None:
                await self.send(text)


def _iso(timestamp: float) -> str:
    return iso_z(datetime.fromtimestamp(timestamp, UTC))


async def _serve(websocket: WebSocket, claims: AccessClaims) -> None:
    connection = _Connection(websocket, claims)
    async with get_hub().subscription(claims.user_id) as queue:
        await _check(claims)  # a session ended while we subscribed was announced before we listened
        ready = {"user_id": str(claims.user_id), "expires_at": _iso(claims.expires_at)}
        await connection.send(json.dumps({"type": "ready", "data": ready}))
        tasks = {asyncio.create_task(connection.listen()), asyncio.create_task(connection.relay(queue))}
        try:
            done, _ = await asyncio.wait(tasks, return_when=asyncio.FIRST_COMPLETED)
        finally:
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
        for task in done:
            task.result()  # raises what ended the connection


async def stream(websocket: WebSocket) -> None:
    """Real-time events for the caller (appointment changes), authenticated by an access token."""
    await websocket.accept()
    try:
        claims = await _authenticate(websocket.query_params.get("token") or await _first_token(websocket))
        await _serve(websocket, claims)
    except _AuthFailed as exc:
        await _close(websocket, AUTH_FAILED, str(exc))
    except _SessionEnded:
        await _close(websocket, SESSION_ENDED, "session ended")
    except WebSocketDisconnect:
        pass
    except (RedisError, OSError, TimeoutError):  # Redis unreachable: the client should retry shortly
        logger.opt(exception=True).warning("WebSocket events unavailable")
        await _close(websocket, TRY_AGAIN_LATER, "events unavailable, try again later")


# A plain Starlette route: FastAPI would apply the app-wide dependencies, which read an HTTP `Request`
# (body media type) that a WebSocket is not; this endpoint takes nothing from dependency injection.
router.add_websocket_route("/ws", stream, name="stream")


async def _close(websocket: WebSocket, code: int, reason: str) -> None:
    if websocket.client_state == WebSocketState.CONNECTED and websocket.application_state == WebSocketState.CONNECTED:
        with suppress(RuntimeError, WebSocketDisconnect):
            await websocket.close(code, reason[:120])
