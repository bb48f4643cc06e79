"""The admin panel's webhook views in a real browser (Debian's chromium driven by Playwright) against
a real uvicorn process and a real worker: an admin sees an endpoint, opens its delivery, presses
Redeliver, and the local receiver gets the same webhook-id a second time, signed. Screenshots go to
a folder under the test's tmp dir, printed."""

import asyncio
import sys
import time

from playwright.async_api import expect
from sqlalchemy import func, select
from standardwebhooks import Webhook

from app.database import unit_of_work
from app.models import Role, WebhookAttempt
from app.services.integrations import webhooks
from tests.e2e.browser import admin_page, require_chromium
from tests.e2e.test_ws_fanout import api_processes
from tests.factories import create_user
from tests.httpserver import serve


async def requests_seen(receiver, count: int, timeout: float = 60) -> None:  # a bound, generous for a busy machine
    deadline = time.monotonic() + timeout
    while len(receiver.requests) < count:
        assert time.monotonic() < deadline, f"{len(receiver.requests)} of {count} requests"
        await asyncio.sleep(0.1)


async def attempts_recorded(count: int, timeout: float = 60) -> None:
    """The worker records an attempt once the receiver has answered: the list page shows only what
    is recorded when it loads (Playwright's expectations wait, but never reload the page)."""
    deadline = time.monotonic() + timeout
    while True:
        async with unit_of_work() as db:
            recorded = await db.scalar(select(func.count()).select_from(WebhookAttempt))
        if recorded >= count:
            return
        assert time.monotonic() < deadline, f"{recorded} of {count} attempts recorded"
        await asyncio.sleep(0.1)


async def test_an_admin_redelivers_a_webhook_from_the_panel(stack, session, tmp_path, set_env):
    require_chromium()
    admin = await create_user(session, role=Role.admin)
    shots = tmp_path / "webhook-screenshots"
    shots.mkdir()
    print(f"screenshots: {shots}")
    stack.env.update(EGRESS_ALLOWED_NETWORKS="127.0.0.0/8", WEBHOOK_RETRY_SCHEDULE="0.5")
    set_env(EGRESS_ALLOWED_NETWORKS="127.0.0.0/8")  # the receiver's IP literal is checked when it is added
    with serve() as receiver:
        async with unit_of_work() as db:
            url = f"{receiver.url}/hooks"
            _, secret = await webhooks.create_endpoint(db, admin, {"url": url, "event_types": ["user.erased"]})
            (delivery_id,) = await webhooks.emit(db, "user.erased", [webhooks.Event({"id": "someone"})])
        stack.start_worker((sys.executable, "-m", "app", "worker"))
        await requests_seen(receiver, 1)

        with api_processes(1, {**stack.env, "LOG_LEVEL": "WARNING"}, tmp_path) as bases:
            base = f"http://{bases[0]}"
            async with admin_page(base, admin.email) as page:
                await page.goto(f"{base}/admin/webhook-endpoint/list")
                await expect(page.locator("table tbody tr")).to_have_count(1)
                await expect(page.locator("table")).to_contain_text(url)
                await page.screenshot(path=str(shots / "01-endpoints.png"), full_page=True)

                await page.goto(f"{base}/admin/webhook-delivery/list")
                await expect(page.locator("table tbody tr")).to_have_count(1)
                await expect(page.locator("table")).to_contain_text("user.erased")
                await page.screenshot(path=str(shots / "02-deliveries.png"), full_page=True)

                await page.goto(f"{base}/admin/webhook-delivery/details/{delivery_id}")
                await page.click("#redeliver")
                await expect(page.locator("#redelivered")).to_be_visible()
                await page.screenshot(path=str(shots / "03-redelivered.png"), full_page=True)

                await requests_seen(receiver, 2)
                await attempts_recorded(2)
                await page.goto(f"{base}/admin/webhook-attempt/list")
                await expect(page.locator("table tbody tr")).to_have_count(2)
                await page.screenshot(path=str(shots / "04-attempts.png"), full_page=True)
    ids = {Webhook(secret).verify(r.body, r.headers) and r.headers["webhook-id"] for r in receiver.requests}
    assert len(ids) == 1 and len(receiver.requests) == 2
    assert sorted(p.name for p in shots.iterdir()) == [
        "01-endpoints.png",
        "02-deliveries.png",
        "03-redelivered.png",
        "04-attempts.png",
    ]
