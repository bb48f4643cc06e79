"""/docs in a real browser (Debian's chromium driven by Playwright), against a real uvicorn process:
sign in with Swagger's Authorize button, call GET /users/me with "Try it out", and nothing is fetched
from any host but the API itself (Swagger UI's assets are served by the app)."""

import os
import tempfile
from pathlib import Path
from urllib.parse import urlsplit

import pytest
from playwright.async_api import Route, async_playwright, expect

from tests.e2e.browser import CHROMIUM, CHROMIUM_ARGS, TIMEOUT_MS, require_chromium
from tests.e2e.test_ws_fanout import api_processes
from tests.factories import PASSWORD, create_user

LOCAL_HOSTS = {"127.0.0.1", "localhost"}


@pytest.fixture
def api(service_urls, tmp_path):
    env = {
        **os.environ,
        "DATABASE_URL": service_urls["database_url"],
        "REDIS_URL": service_urls["redis_url"],
        "LOG_LEVEL": "WARNING",
    }
    with api_processes(1, env, tmp_path) as bases:
        yield f"http://{bases[0]}"


async def test_sign_in_with_authorize_and_call_users_me(api, session):
    require_chromium()
    user = await create_user(session)
    requested: list[str] = []
    refused: list[str] = []
    console: list[str] = []
    shots = Path(tempfile.mkdtemp(prefix="c3po-swagger-"))

    async def only_local(route: Route) -> None:
        url = route.request.url
        requested.append(url)
        if urlsplit(url).hostname in LOCAL_HOSTS or url.startswith(("data:", "blob:")):
            await route.continue_()
        else:
            refused.append(url)
            await route.abort()

    async with async_playwright() as playwright:
        browser = await playwright.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        try:
            context = await browser.new_context()
            await context.route("**/*", only_local)
            page = await context.new_page()
            page.on("console", lambda message: console.append(message.text) if message.type == "error" else None)
            page.set_default_timeout(TIMEOUT_MS)
            await page.goto(f"{api}/docs")

            await page.locator("button.authorize").first.click()
            dialog = page.locator(".modal-ux")
            await dialog.locator("#oauth_username").fill(user.email)
            await dialog.locator("#oauth_password").fill(PASSWORD)
            await dialog.locator("button.authorize").click()
            await expect(dialog.get_by_role("heading", name="Authorized")).to_be_visible(
                timeout=TIMEOUT_MS
            )  # the token was granted
            await dialog.get_by_role("button", name="Close").first.click()

            operation = page.locator("#operations-users-users-get-me")
            await operation.locator(".opblock-summary").click()
            await operation.locator("button.try-out__btn").click()
            await operation.locator("button.execute").click()
            status = operation.locator(".live-responses-table tr.response td.response-col_status").first
            await expect(status).to_have_text("200", timeout=TIMEOUT_MS)
            await expect(
                operation.locator(".live-responses-table tr.response td.response-col_description")
            ).to_contain_text(user.email, timeout=TIMEOUT_MS)
            shot = shots / "swagger-users-me.png"
            await operation.screenshot(path=str(shot))
            print(f"screenshot: {shot}")
        finally:
            await browser.close()

    print(f"{len(requested)} requests, e.g. {requested[:5]}")
    assert not refused, refused
    assert not [text for text in console if "Content Security Policy" in text], console
    assert any(url.endswith("/api/v1/auth/login") for url in requested)
    assert any(url.endswith("/api/v1/users/me") for url in requested)
