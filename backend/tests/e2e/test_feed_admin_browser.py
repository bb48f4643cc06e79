"""The admin panel's calendar feeds in a real browser (chromium through Playwright, a real uvicorn): an
admin finds a client's feed, sees when it was fetched but not what makes its URL, and rotates it; the
old URL then answers 404 from the same server."""

import httpx
from playwright.async_api import expect

from app.models import Role
from app.services.integrations import feeds
from tests.e2e.browser import admin_page, require_chromium
from tests.e2e.test_ws_fanout import api_processes
from tests.factories import create_user


async def test_an_admin_rotates_a_leaked_feed(stack, session, tmp_path):
    require_chromium()
    admin = await create_user(session, role=Role.admin)
    owner = await create_user(session, full_name="Carla Client")
    feed = await feeds.get_or_create(session, owner)
    await session.commit()
    path = f"/api/v1/calendar-feeds/{feeds.token_for(feed)}.ics"

    with api_processes(1, {**stack.env, "LOG_LEVEL": "WARNING"}, tmp_path) as bases:
        base = f"http://{bases[0]}"
        async with httpx.AsyncClient(base_url=base) as http:
            assert (await http.get(path)).status_code == 200
            async with admin_page(base, admin.email) as page:
                await page.goto(f"{base}/admin/calendar-feed/list")
                await expect(page.locator("table tbody tr")).to_have_count(1)
                await expect(page.locator("table tbody")).to_contain_text(str(owner.id))
                await page.goto(f"{base}/admin/calendar-feed/details/{owner.id}")
                await expect(page.locator("table")).to_contain_text("Last fetched")
                await expect(page.locator("table")).not_to_contain_text("version")
                await page.click("#rotate-feed")
                await expect(page.locator("#feed-rotated")).to_be_visible()
                await page.screenshot(path=str(tmp_path / "feed-rotated.png"), full_page=True)
            assert (await http.get(path)).status_code == 404
