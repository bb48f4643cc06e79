"""Debian's chromium under Playwright, for the browser tests (Playwright never downloads a browser here)."""

import os
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path

import pytest
from playwright.async_api import Page, async_playwright, expect

from tests.factories import PASSWORD

CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
]
TIMEOUT_MS = 20_000


def require_chromium() -> None:
    """CI installs Debian's chromium and must run these tests; a laptop without it is told how to get it."""
    if Path(CHROMIUM).exists():
        return
    message = f"{CHROMIUM} is missing (apt-get install chromium); Playwright never downloads a browser"
    if os.environ.get("CI"):
        pytest.fail(message)
    pytest.skip(message)


@asynccontextmanager
async def browser_page() -> AsyncIterator[Page]:
    """A fresh page in a headless chromium, closed afterwards."""
    async with async_playwright() as playwright:
        browser = await playwright.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        try:
            page = await (await browser.new_context()).new_page()
            page.set_default_timeout(TIMEOUT_MS)
            yield page
        finally:
            await browser.close()


async def sign_in_to_admin(page: Page, base: str, email: str, password: str = PASSWORD) -> None:
    """Through the panel's login form; lands on its front page."""
    await page.goto(f"{base}/admin/login")
    await page.fill("#username", email)
    await page.fill("#password", password)
    await page.click("button[type=submit]")
    await expect(page).to_have_url(f"{base}/admin/")


@asynccontextmanager
async def admin_page(base: str, email: str) -> AsyncIterator[Page]:
    """A page signed in to the admin panel at `base` as `email` (an admin)."""
    async with browser_page() as page:
        await sign_in_to_admin(page, base, email)
        yield page
