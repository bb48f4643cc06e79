"""The API's own Redis features against a real Redis Cluster of three masters, started here from
`redis-server`: sessions (login, refresh with its grace, logout, logout-all), the access-token
deny-list, rate limits, availability cache versions, idempotent booking, and events fanned out
over pub/sub from one API process to a WebSocket held by another, each on a different node.

arq's queue stays on a single Redis (the test's own database), as backend/README.md documents.
"""

import asyncio
import contextlib
import json
import os
import random
import shutil
import socket
import subprocess
import time
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path

import httpx
import jwt
import pytest
import redis
from redis.asyncio import RedisCluster
from redis.crc import key_slot
from websockets.asyncio.client import connect

from app.services.accounts import tokens
from app.services.scheduling import availability_cache
from tests.apiserver import api_process
from tests.factories import PASSWORD, bearer, create_user
from tests.scheduling import booking_body, create_service, create_staff, days_ahead, local
from tests.smtp import HOST

MASTERS = 3
HIGHEST_PORT = 55535  # the cluster bus listens on port + 10000
TIMEOUT = 10
AUTH = "/api/v1/auth"
ME = "/api/v1/users/me"
AVAILABILITY = "/api/v1/availability"
APPOINTMENTS = "/api/v1/appointments"


def require_redis_server() -> None:
    """CI has redis-server and must run this test; a laptop without it is told how to get it."""
    if shutil.which("redis-server") and shutil.which("redis-cli"):
        return
    message = "redis-server and redis-cli are missing (apt-get install redis-server)"
    if os.environ.get("CI"):
        pytest.fail(message)
    pytest.skip(message)


def _free(port: int) -> bool:
    with socket.socket() as sock:
        try:
            sock.bind((HOST, port))
        except OSError:
            return False
    return True


def cluster_ports(count: int) -> list[int]:
    """Free ports no higher than HIGHEST_PORT whose bus ports (+10000) are free too."""
    ports: list[int] = []
    while len(ports) < count:
        port = random.randint(20000, HIGHEST_PORT)
        if port not in ports and _free(port) and _free(port + 10000):
            ports.append(port)
    return ports


@dataclass
class Cluster:
    ports: list[int]
    processes: list[subprocess.Popen]

    def url(self, node: int = 0) -> str:
        return f"redis://{HOST}:{self.ports[node]}/0"

    def client(self) -> RedisCluster:
        return RedisCluster.from_url(self.url(), decode_responses=True)


def _wait(predicate, what: str, seconds: float = 30) -> None:
    deadline = time.monotonic() + seconds
    while True:
        with contextlib.suppress(redis.RedisError):
            if predicate():
                return
        if time.monotonic() > deadline:
            raise RuntimeError(f"{what} within {seconds}s")
        time.sleep(0.1)


@contextlib.contextmanager
def redis_cluster(directory: Path) -> Iterator[Cluster]:
    ports = cluster_ports(MASTERS)
    processes = []
    try:
        for port in ports:
            command = [
                "redis-server",
                *("--port", str(port), "--bind", HOST, "--dir", str(directory)),
                *("--cluster-enabled", "yes", "--cluster-config-file", str(directory / f"nodes-{port}.conf")),
                *("--cluster-node-timeout", "5000", "--save", "", "--appendonly", "no"),
            ]
            log = (directory / f"redis-{port}.log").open("wb")
            processes.append(subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT))
        nodes = [redis.Redis(host=HOST, port=port, socket_timeout=2) for port in ports]
        for node in nodes:
            _wait(node.ping, "a cluster node did not answer")
        subprocess.run(
            ["redis-cli", "--cluster", "create", *(f"{HOST}:{port}" for port in ports)]
            + ["--cluster-replicas", "0", "--cluster-yes"],
            check=True,
            capture_output=True,
            timeout=60,
        )
        for node in nodes:
            _wait(lambda node=node: node.cluster("info")["cluster_state"] == "ok", "the cluster was not ok")
        yield Cluster(ports, processes)
    finally:
        for process in processes:
            process.kill()
        for process in processes:
            process.wait(10)


@pytest.fixture(scope="module")
def cluster(tmp_path_factory) -> Iterator[Cluster]:
    require_redis_server()
    with redis_cluster(tmp_path_factory.mktemp("redis-cluster")) as built:
        yield built


@pytest.fixture(scope="module")
def apis(cluster, service_urls, tmp_path_factory) -> Iterator[list[str]]:
    """Two API processes on the cluster; each relays events through a node of its own."""
    logs = tmp_path_factory.mktemp("apis")
    settings = {
        "DATABASE_URL": service_urls["database_url"],
        "REDIS_URL": cluster.url(0),
        "REDIS_CLUSTER": "true",
        "ARQ_REDIS_URL": service_urls["redis_url"],
        "LOG_LEVEL": "WARNING",
    }
    with contextlib.ExitStack() as stack:
        bases = [
            stack.enter_context(api_process(logs / f"api-{n}.log", **settings, REDIS_PUBSUB_URL=cluster.url(n + 1)))
            for n in range(2)
        ]
        try:
            yield bases
        finally:
            for n in range(2):
                print(f"--- api-{n}.log\n{(logs / f'api-{n}.log').read_text(errors='replace')}")


@pytest.fixture
async def nodes(cluster):
    client = cluster.client()
    yield client
    await client.aclose()


async def sign_in(http: httpx.AsyncClient, email: str, password: str = PASSWORD, base: str = "") -> httpx.Response:
    return await http.post(f"{base}{AUTH}/login", data={"username": email, "password": password})


async def signed_in(http: httpx.AsyncClient, email: str, base: str = "") -> dict:
    response = await sign_in(http, email, base=base)
    assert response.status_code == 200, response.text
    return response.json()


def claims(access_token: str) -> dict:
    return jwt.decode(access_token, options={"verify_signature": False})


async def test_a_login_lives_refreshes_and_ends_in_one_slot_of_the_cluster(apis, session, nodes):
    user = await create_user(session)
    async with httpx.AsyncClient(base_url=apis[0], timeout=TIMEOUT) as http:
        pair = await signed_in(http, user.email)
        family = claims(pair["access_token"])["sid"]
        assert (await http.get(ME, headers=bearer(pair["access_token"]))).status_code == 200

        tabs = await asyncio.gather(
            *(http.post(f"{AUTH}/refresh", json={"refresh_token": pair["refresh_token"]}) for _ in range(3))
        )
        assert [tab.status_code for tab in tabs] == [200] * 3, [tab.text for tab in tabs]
        assert len({tab.json()["refresh_token"] for tab in tabs}) == 1  # the grace answers one successor
        current = tabs[0].json()

        logout = await http.post(
            f"{AUTH}/logout", headers=bearer(current["access_token"]), json={"refresh_token": current["refresh_token"]}
        )
        assert logout.status_code == 204, logout.text
        assert (await http.get(ME, headers=bearer(current["access_token"]))).status_code == 401
        again = await http.post(f"{AUTH}/refresh", json={"refresh_token": current["refresh_token"]})
        assert again.status_code == 400, again.text

    denied = tokens.denied_key(family, claims(current["access_token"])["jti"])
    assert await nodes.ttl(denied) > 0
    assert await nodes.hget(tokens.family_key(family), "revoked") == "1"
    assert key_slot(denied.encode()) == key_slot(tokens.family_key(family).encode())
    assert family in await nodes.smembers(f"user-families:{user.id}")


async def test_the_health_check_pings_the_cluster(apis):
    async with httpx.AsyncClient(timeout=TIMEOUT) as http:
        answer = await http.get(f"{apis[0]}/health/redis")
    assert answer.status_code == 200 and answer.json() == {"status": "ok", "redis": "up"}, answer.text


async def test_logout_all_ends_the_other_logins(apis, session):
    user = await create_user(session)
    async with httpx.AsyncClient(base_url=apis[0], timeout=TIMEOUT) as http:
        here, there = await signed_in(http, user.email), await signed_in(http, user.email)

        response = await http.post(f"{AUTH}/logout-all", headers=bearer(here["access_token"]))
        assert response.status_code == 204, response.text

        assert (await http.get(ME, headers=bearer(there["access_token"]))).status_code == 401
        refused = await http.post(f"{AUTH}/refresh", json={"refresh_token": there["refresh_token"]})
        assert refused.status_code == 400, refused.text


async def test_failed_logins_run_into_the_rate_limit(apis, session):
    user = await create_user(session)
    async with httpx.AsyncClient(base_url=apis[1], timeout=TIMEOUT) as http:
        failures = [await sign_in(http, user.email, "not the password") for _ in range(5)]
        assert [response.status_code for response in failures] == [400] * 5  # invalid_grant
        limited = await sign_in(http, user.email)  # even the right password now waits
        assert limited.status_code == 429, limited.text
        assert int(limited.headers["retry-after"]) > 0


async def test_a_booking_bumps_availability_replays_by_key_and_reaches_a_socket_through_another_node(
    apis, session, nodes
):
    staff = await create_staff(session)
    service = await create_service(session, [staff], duration=60, min_notice=0)
    customer = await create_user(session)
    day = days_ahead(7)
    starts_at = local(day, 10)
    window = {
        "service_id": str(service.id),
        "staff_id": str(staff.id),
        "start": local(day, 0).isoformat(),
        "end": local(day + timedelta(days=1), 0).isoformat(),
    }
    a, b = apis
    async with httpx.AsyncClient(timeout=TIMEOUT) as http:
        before = await http.get(f"{a}{AVAILABILITY}", params=window)
        assert before.status_code == 200, before.text
        offered = {slot["starts_at"] for slot in before.json()["slots"]}
        assert len(offered) == 8
        customer_pair = await signed_in(http, customer.email, a)
        staff_pair = await signed_in(http, staff.email, b)

        async with connect(f"ws://{b.removeprefix('http://')}/api/v1/ws") as staff_socket:
            await staff_socket.send(json.dumps({"token": staff_pair["access_token"]}))
            ready = json.loads(await asyncio.wait_for(staff_socket.recv(), TIMEOUT))
            assert ready["type"] == "ready", ready

            headers = {**bearer(customer_pair["access_token"]), "Idempotency-Key": "cluster-1"}
            body = booking_body(service, staff, starts_at)
            first = await http.post(f"{a}{APPOINTMENTS}", json=body, headers=headers)
            assert first.status_code == 201, first.text
            event = await next_event(staff_socket)
            assert event["type"] == "appointment.created" and event["data"]["id"] == first.json()["id"]

            second = await http.post(f"{b}{APPOINTMENTS}", json=body, headers=headers)
            assert second.status_code == 201, second.text
            assert second.json() == first.json() and second.headers["idempotent-replayed"] == "true"

        after = await http.get(f"{b}{AVAILABILITY}", params=window)
        assert after.status_code == 200, after.text
        remaining = {slot["starts_at"] for slot in after.json()["slots"]}
        assert len(remaining) == 7 and offered - remaining == {first.json()["starts_at"]}

    versions = await nodes.hgetall(availability_cache.hash_key(staff.id))
    assert versions[f"d:{day}"] == "1"


async def next_event(socket_) -> dict:
    while True:
        message = json.loads(await asyncio.wait_for(socket_.recv(), TIMEOUT))
        if message["type"] != "heartbeat":
            return message
