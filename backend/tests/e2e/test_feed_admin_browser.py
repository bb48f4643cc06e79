"""The admin panel's calendar feeds in a real browser (chromium through Playwright, a real uvicorn): an
admin finds a client's feed, sees when it was fetched but not what makes its URL, and rotates it; the
old URL then answers 404 from the same server."""

import httpx
from playwright.async_api import async_playwright, expect

from app.models import Role
from app.services.integrations import feeds
from tests.e2e.test_swagger_browser import CHROMIUM, CHROMIUM_ARGS, TIMEOUT_MS, require_chromium
from tests.e2e.test_ws_fanout import api_processes
from tests.factories import PASSWORD, create_user


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
            async with async_playwright() as playwright:
                browser = await playwright.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
                try:
                    page = await (await browser.new_context()).new_page()
                    page.set_default_timeout(TIMEOUT_MS)
                    await page.goto(f"{base}/admin/login")
                    await page.fill("#username", admin.email)
                    await page.fill("#password", PASSWORD)
                    await page.click("button[type=submit]")
                    await expect(page).to_have_url(f"{base}/admin/")

                    await page.goto(f"{base}/admin/calendar-feed/list")
                    await expect(page.locator("table tbody tr")).to_have_count(1)
                    await expect(page.locator("table tbody")).to_contain_text(str(owner.id))
                    await page.goto(f"{base}/admin/calendar-feed/details/{owner.id}")
                    await expect(page.locator("table")).to_contain_text("Last fetched")
                    await expect(page.locator("table")).not_to_contain_text("version")
                    await page.click("#rotate-feed")
                    await expect(page.locator("#feed-rotated")).to_be_visible()
                    await page.screenshot(path=str(tmp_path / "feed-rotated.png"), full_page=True)
                finally:
                    await browser.close()
            assert (await http.get(path)).status_code == 404
