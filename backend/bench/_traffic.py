"""Mixed traffic from virtual clients (availability, booking, reschedule, cancel, /users/me,
sign-in), the bookkeeping the drills check afterwards, and the figures they print.

An answer is one of: expected (2xx, or a 409 a racing booker can get), `shed` (503 with a known
code and `Retry-After`), or an error (anything else: a 500, an undocumented status, a timeout).
Writes carry an `Idempotency-Key`; after a 503 or a transport error they are sent again with the
same key once `Retry-After` has passed, so that no booking is lost or made twice.
"""

import asyncio
import random
import time
import uuid
from collections import Counter, defaultdict
from dataclasses import dataclass, field
from datetime import timedelta

import httpx
from _stack import PASSWORD, World, percentile, random_slot

API = "/api/v1"
SHED_CODES = {"server_busy", "database_unavailable", "redis_unavailable"}
EXPECTED = {
    "availability": {200},
    "book": {201, 409},
    "reschedule": {200, 409},
    "cancel": {200},
    "me": {200},
    "sign-in": {200},
    "health": {200},
}
MIX = {"availability": 25, "book": 25, "reschedule": 8, "cancel": 7, "me": 25, "sign-in": 10}
RETRY_FOR_SECONDS = 90  # a write is retried (same key) this long after 503s or transport errors


@dataclass(frozen=True)
class Event:
    sent: float
    answered: float
    kind: str
    outcome: str  # ok, shed, error
    what: str  # "503 database_unavailable", "201", "transport"

    @property
    def seconds(self) -> float:
        return self.answered - self.sent


@dataclass
class Stats:
    latencies: dict[str, list[float]] = field(default_factory=lambda: defaultdict(list))
    statuses: dict[str, Counter] = field(default_factory=lambda: defaultdict(Counter))
    shed: Counter = field(default_factory=Counter)  # 503 code -> count
    errors: list[str] = field(default_factory=list)
    server_errors: int = 0
    shed_without_retry_after: int = 0
    slowest: float = 0.0
    booked: dict[str, tuple[str, str]] = field(default_factory=dict)  # appointment id -> (staff id, client email)
    cancelled: set[str] = field(default_factory=set)
    started: float = field(default_factory=time.monotonic)
    finished: float = 0.0
    events: list["Event"] = field(default_factory=list)

    def record(self, kind: str, seconds: float, response: httpx.Response | None, error: str | None = None) -> str:
        outcome = self._classify(kind, seconds, response, error)
        what = "transport" if response is None else f"{response.status_code} {_code(response)}".strip()
        now = time.monotonic()
        self.events.append(Event(now - seconds, now, kind, outcome, what))
        return outcome

    def sent_between(self, start: float, end: float) -> list["Event"]:
        return [event for event in self.events if start <= event.sent < end]

    def _classify(self, kind: str, seconds: float, response: httpx.Response | None, error: str | None) -> str:
        """'ok', 'shed' or 'error'."""
        self.latencies[kind].append(seconds)
        self.slowest = max(self.slowest, seconds)
        if response is None:
            self.statuses[kind]["transport"] += 1
            self.errors.append(f"{kind}: {error}")
            return "error"
        status = response.status_code
        self.statuses[kind][status] += 1
        if status in EXPECTED[kind]:
            return "ok"
        code = _code(response)
        if status == 503 and code in SHED_CODES:
            self.shed[code] += 1
            if not response.headers.get("retry-after", "").isdigit():
                self.shed_without_retry_after += 1
                self.errors.append(f"{kind}: 503 {code} without Retry-After")
            return "shed"
        if status >= 500:
            self.server_errors += 1
        self.errors.append(f"{kind}: {status} {response.text[:200]}")
        return "error"

    def print_table(self, title: str) -> None:
        elapsed = (self.finished or time.monotonic()) - self.started
        total = sum(len(v) for v in self.latencies.values())
        print(f"\n{title}: {total} requests in {elapsed:.1f} s = {total / elapsed:.1f} req/s")
        print(f"  {'kind':<13}{'count':>7}{'req/s':>8}{'p50 ms':>9}{'p95 ms':>9}{'p99 ms':>9}{'max ms':>9}  answers")
        for kind in EXPECTED:
            values = self.latencies.get(kind, [])
            if not values:
                continue
            answers = ", ".join(f"{n} x {s}" for s, n in sorted(self.statuses[kind].items(), key=str))
            figures = [percentile(values, q) * 1000 for q in (0.5, 0.95, 0.99, 1.0)]
            row = f"  {kind:<13}{len(values):>7}{len(values) / elapsed:>8.1f}" + "".join(f"{f:>9.1f}" for f in figures)
            print(f"{row}  {answers}")
        every = [v for values in self.latencies.values() for v in values]
        print(
            f"  all: p50 {percentile(every, 0.5) * 1000:.1f} ms, p99 {percentile(every, 0.99) * 1000:.1f} ms, "
            f"slowest {self.slowest:.2f} s"
        )
        print(
            f"  shed (503): {dict(self.shed) or 'none'}; 5xx other than those: {self.server_errors}; "
            f"errors: {len(self.errors)}"
        )
        for line in self.errors[:10]:
            print(f"    {line}")


def _code(response: httpx.Response) -> str:
    try:
        return str(response.json().get("code", ""))
    except ValueError:
        return ""


class Client:
    """One virtual user: signs in, then does random kinds of requests until told to stop."""

    def __init__(self, http: httpx.AsyncClient, world: World, email: str, stats: Stats, seed: int) -> None:
        self.http, self.world, self.email, self.stats = http, world, email, stats
        self.rng = random.Random(seed)
        self.token = ""
        self.mine: list[dict] = []  # live appointments of this client: {"id", "staff_id", "sequence"}

    @property
    def headers(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.token}"}

    async def call(self, kind: str, method: str, url: str, **kwargs) -> tuple[str, httpx.Response | None]:
        began = time.monotonic()
        try:
            response = await self.http.request(method, url, **kwargs)
        except httpx.HTTPError as exc:
            return self.stats.record(kind, time.monotonic() - began, None, f"{type(exc).__name__} {exc}"), None
        return self.stats.record(kind, time.monotonic() - began, response), response

    async def write(self, kind: str, method: str, url: str, **kwargs) -> httpx.Response | None:
        """A change with an Idempotency-Key, sent again (same key) after a 503 or a lost answer."""
        headers = {**self.headers, "Idempotency-Key": uuid.uuid4().hex}
        deadline = time.monotonic() + RETRY_FOR_SECONDS
        while True:
            outcome, response = await self.call(kind, method, url, headers=headers, **kwargs)
            in_progress = (
                response is not None
                and response.status_code == 409
                and _code(response) == ("idempotency_key_in_progress")
            )
            if not (outcome == "shed" or response is None or in_progress) or time.monotonic() > deadline:
                return response
            wait = int(response.headers.get("retry-after", "1")) if response is not None else 1
            await asyncio.sleep(min(wait, 2) * (0.5 + self.rng.random()))

    async def sign_in(self) -> bool:
        form = {"username": self.email, "password": PASSWORD}
        _, response = await self.call("sign-in", "POST", f"{API}/auth/login", data=form)
        if response is not None and response.status_code == 200:
            self.token = response.json()["access_token"]
            return True
        return False

    async def step(self, kind: str) -> None:
        if kind == "sign-in" or not self.token:
            await self.sign_in()
        elif kind == "me":
            await self.call("me", "GET", f"{API}/users/me", headers=self.headers)
        elif kind == "availability":
            start = random_slot(self.rng).replace(hour=0, minute=0)
            params = {
                "service_id": self.world.service_id,
                "start": start.isoformat(),
                "end": (start + timedelta(days=7)).isoformat(),
            }
            if self.rng.random() < 0.5:
                params["staff_id"] = self.rng.choice(self.world.staff)["id"]
            await self.call("availability", "GET", f"{API}/availability", params=params)
        elif kind == "book":
            await self.book()
        elif kind == "reschedule" and self.mine:
            await self.reschedule(self.rng.choice(self.mine))
        elif kind == "cancel" and self.mine:
            await self.cancel(self.mine.pop(self.rng.randrange(len(self.mine))))

    async def book(self) -> None:
        staff = self.rng.choice(self.world.staff)["id"]
        body = {"service_id": self.world.service_id, "staff_id": staff, "starts_at": random_slot(self.rng).isoformat()}
        response = await self.write("book", "POST", f"{API}/appointments", json=body)
        if response is not None and response.status_code == 201:
            made = response.json()
            self.stats.booked[made["id"]] = (staff, self.email)
            self.mine.append({"id": made["id"], "staff_id": staff, "sequence": made.get("sequence")})

    async def reschedule(self, appointment: dict) -> None:
        body = {"starts_at": random_slot(self.rng).isoformat()}
        response = await self.write("reschedule", "PATCH", f"{API}/appointments/{appointment['id']}", json=body)
        if response is not None and response.status_code == 200:
            appointment["sequence"] = response.json().get("sequence")

    async def cancel(self, appointment: dict) -> None:
        response = await self.write("cancel", "POST", f"{API}/appointments/{appointment['id']}/cancel")
        if response is not None and response.status_code == 200:
            self.stats.cancelled.add(appointment["id"])

    async def run(self, until: float, mix: dict[str, int]) -> None:
        kinds, weights = list(mix), list(mix.values())
        while not await self.sign_in():
            if time.monotonic() > until:
                return
            await asyncio.sleep(0.5)
        while time.monotonic() < until:
            await self.step(self.rng.choices(kinds, weights)[0])


async def drive(
    bases: list[str],
    world: World,
    *,
    clients: int,
    seconds: float,
    mix: dict[str, int] = MIX,
    stats: Stats | None = None,
) -> Stats:
    """`clients` virtual users spread over the API processes for `seconds`."""
    stats = stats or Stats()
    limits = httpx.Limits(max_connections=clients, max_keepalive_connections=clients)
    https = [httpx.AsyncClient(base_url=base, limits=limits, timeout=30) for base in bases]
    until = time.monotonic() + seconds
    try:
        users = [
            Client(https[n % len(https)], world, world.clients[n % len(world.clients)], stats, seed=n)
            for n in range(clients)
        ]
        await asyncio.gather(*(user.run(until, mix) for user in users))
    finally:
        stats.finished = time.monotonic()
        for http in https:
            await http.aclose()
    return stats


async def hammer(http: httpx.AsyncClient, kind: str, request: dict, stats: Stats, until: float) -> None:
    """Send one request after another (`request`: httpx.request's arguments) until `until`."""
    while time.monotonic() < until:
        began = time.monotonic()
        try:
            response = await http.request(**request)
        except httpx.HTTPError as exc:
            stats.record(kind, time.monotonic() - began, None, f"{type(exc).__name__} {exc}")
            continue
        stats.record(kind, time.monotonic() - began, response)
