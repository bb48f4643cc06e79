"""The admin panel's calendar connections in a real browser (Debian's chromium via Playwright), a real
uvicorn process, a real worker and a local ICS server: an admin sees a failing connection with its
error and failures (host only, no secret URL), presses *Sync now*, and the worker's sync (the
calendar fixed meanwhile) shows as success with its busy blocks. Screenshots under the test's tmp dir."""

import asyncio
import sys
import time
import uuid

from playwright.async_api import expect
from sqlalchemy import select

from app.models import CalendarConnection, Role
from tests.e2e.browser import admin_page, require_chromium
from tests.e2e.test_ws_fanout import api_processes
from tests.factories import create_user
from tests.httpserver import serve
from tests.integration.test_external_calendars import DAY, ics, ics_event
from tests.scheduling import create_service, create_staff, local


async def test_an_admin_sees_a_failing_calendar_and_syncs_it(stack, session, tmp_path):
    require_chromium()
    admin = await create_user(session, role=Role.admin)
    staff = await create_staff(session, full_name="Alice Novak")
    await create_service(session, [staff])
    answer = {"status": 500, "body": ics()}
    shots = tmp_path / "calendar-screenshots"
    shots.mkdir()
    print(f"screenshots: {shots}")

    with serve(lambda _r: (answer["status"], {"Content-Type": "text/calendar"}, answer["body"])) as feed:
        url = f"{feed.url}/cal.ics?secret=private-feed-token"
        connection = CalendarConnection(
            id=uuid.uuid4(),
            staff_id=staff.id,
            kind="ics",
            name="Alice work",
            url=url,
            last_error="the server answered HTTP 500",
            consecutive_failures=4,
            block_count=0,
            is_active=True,
            push_appointments=False,
        )
        session.add(connection)
        await session.commit()
        stack.env["EGRESS_ALLOWED_NETWORKS"] = "127.0.0.0/8"
        stack.start_worker((sys.executable, "-m", "app", "worker"))

        with api_processes(1, {**stack.env, "LOG_LEVEL": "WARNING"}, tmp_path) as bases:
            base = f"http://{bases[0]}"
            async with admin_page(base, admin.email) as page:
                await page.goto(f"{base}/admin/calendar-connection/list")
                table = page.locator("table")
                await expect(table).to_contain_text("Alice work")
                await expect(table).to_contain_text("the server answered HTTP 500")
                await expect(table).to_contain_text("127.0.0.1")
                assert "private-feed-token" not in await page.content()
                await page.screenshot(path=str(shots / "01-failing.png"), full_page=True)

                answer.update(status=200, body=ics(ics_event("meeting", local(DAY, 10), local(DAY, 11))))
                await page.goto(f"{base}/admin/calendar-connection/details/{connection.id}")
                await page.click("button:has-text('Sync now')")
                await expect(page.locator(".alert-success")).to_contain_text("Sync queued")
                await _synced(session, connection.id)
                await page.reload()
                details = page.locator("table")
                await expect(details).not_to_contain_text("the server answered HTTP 500")
                assert "private-feed-token" not in await page.content()
                await page.screenshot(path=str(shots / "02-synced.png"), full_page=True)

    row = await _synced(session, connection.id)
    assert row.block_count == 1 and row.consecutive_failures == 0 and row.last_error is None
    assert sorted(p.name for p in shots.iterdir()) == ["01-failing.png", "02-synced.png"]


async def _synced(session, connection_id, timeout: float = 30) -> CalendarConnection:
    deadline = time.monotonic() + timeout
    while True:
        row = await session.scalar(
            select(CalendarConnection)
            .where(CalendarConnection.id == connection_id)
            .execution_options(populate_existing=True)
        )
        await session.commit()
        if row.last_success_at is not None:
            return row
        assert time.monotonic() < deadline, "the worker did not sync the calendar"
        await asyncio.sleep(0.2)
