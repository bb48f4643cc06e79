"""What must hold after a drill, read from the database and the SMTP capture: no overlapping live
appointments, no booking lost or made twice, every email delivered exactly once."""

import asyncio
import re
import time
from collections import Counter

import asyncpg
from _stack import Stack, World
from _traffic import Stats

from app.models.appointment import LIVE_STATUSES

UID = re.compile(r"UID:([0-9a-f-]{36})@")
LIVE = [status.value for status in LIVE_STATUSES]


async def _fetch(stack: Stack, query: str, *args) -> list[asyncpg.Record]:
    conn = await asyncpg.connect(stack.database_url)
    try:
        return await conn.fetch(query, *args)
    finally:
        await conn.close()


async def overlaps(stack: Stack) -> int:
    rows = await _fetch(
        stack,
        """SELECT count(*) AS n FROM appointments a JOIN appointments b
           ON a.staff_id = b.staff_id AND a.id < b.id
          AND tstzrange(a.starts_at, a.ends_at) && tstzrange(b.starts_at, b.ends_at)
           WHERE a.status = ANY($1::text[]) AND b.status = ANY($1::text[])""",
        LIVE,
    )
    return rows[0]["n"]


async def ledger_problems(stack: Stack, stats: Stats) -> list[str]:
    """The database holds exactly the bookings that were answered 201; the cancelled ones cancelled."""
    rows = await _fetch(stack, "SELECT id::text AS id, status FROM appointments")
    stored = {row["id"]: row["status"] for row in rows}
    problems = []
    ghosts = set(stored) - set(stats.booked)
    lost = set(stats.booked) - set(stored)
    if ghosts:
        problems.append(f"{len(ghosts)} appointments stored that no client was told about (made twice?)")
    if lost:
        problems.append(f"{len(lost)} bookings answered 201 are not stored")
    wrong = [i for i in stats.cancelled if stored.get(i) != "cancelled"]
    if wrong:
        problems.append(f"{len(wrong)} cancellations answered 200 are not cancelled")
    return problems


async def wait_for_outbox(stack: Stack, timeout: float = 180) -> int:
    """Seconds until every outbox row is sent; raises on timeout."""
    began = time.monotonic()
    while True:
        rows = await _fetch(stack, "SELECT count(*) AS n FROM outbox WHERE sent_at IS NULL")
        if rows[0]["n"] == 0:
            return int(time.monotonic() - began)
        if time.monotonic() - began > timeout:
            raise AssertionError(f"{rows[0]['n']} emails still unsent after {timeout} s")
        await asyncio.sleep(0.5)


async def email_problems(stack: Stack, world: World, stats: Stats) -> tuple[list[str], str]:
    """Every outbox row arrived exactly once (by Message-ID); every booking mailed client and staff once."""
    from app.services.messaging.mailer import message_id

    rows = await _fetch(stack, "SELECT id, created_at, payload FROM outbox")
    expected = {message_id(row["id"], row["created_at"]) for row in rows}
    arrived = stack.smtp.count_by_message_id()
    problems = []
    doubled = {m: n for m, n in arrived.items() if n > 1}
    if doubled:
        problems.append(f"{len(doubled)} Message-IDs arrived more than once")
    if missing := expected - set(arrived):
        problems.append(f"{len(missing)} emails never arrived")
    if strays := set(arrived) - expected:
        problems.append(f"{len(strays)} emails arrived that no outbox row explains")
    import json

    booked_mail: Counter[tuple[str, str]] = Counter()
    for row in rows:
        payload = row["payload"] if isinstance(row["payload"], dict) else json.loads(row["payload"])
        if payload.get("template") != "appointment_booked":
            continue
        for attachment in payload.get("attachments", []):
            for appointment_id in UID.findall(attachment.get("content", "")):
                booked_mail[(appointment_id, payload["to"])] += 1
    staff_email = {s["id"]: s["email"] for s in world.staff}
    wrong = 0
    for appointment_id, (staff_id, client) in stats.booked.items():
        if booked_mail[(appointment_id, client)] != 1 or booked_mail[(appointment_id, staff_email[staff_id])] != 1:
            wrong += 1
    if wrong:
        problems.append(f"{wrong} bookings without exactly one booking email to each of client and staff")
    summary = f"{len(rows)} outbox emails, {sum(arrived.values())} received ({len(arrived)} distinct Message-IDs)"
    return problems, summary


async def verify(stack: Stack, world: World, stats: Stats) -> list[str]:
    """Print what was checked; the problems found (empty when everything holds)."""
    problems = []
    if n := await overlaps(stack):
        problems.append(f"{n} pairs of overlapping live appointments")
    problems += await ledger_problems(stack, stats)
    seconds = await wait_for_outbox(stack)
    mail, summary = await email_problems(stack, world, stats)
    problems += mail
    print(
        f"  checks: {len(stats.booked)} bookings, {len(stats.cancelled)} cancelled; overlaps: {n}; "
        f"outbox drained {seconds} s after the run; {summary}"
    )
    return problems
