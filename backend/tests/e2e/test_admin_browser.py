"""/admin in a real browser (Debian's chromium driven by Playwright) against a real uvicorn process, a
real worker and an aiosmtpd server: an admin signs in, lists and filters appointments, opens one,
cancels it (the client's email arrives), edits a service; a staff account is refused. Screenshots
go to a folder under the test's tmp dir, printed."""

import asyncio
import sys
import time

from playwright.async_api import async_playwright, expect
from sqlalchemy import select

from app.models import Role, Service
from tests.e2e.browser import CHROMIUM, CHROMIUM_ARGS, TIMEOUT_MS, require_chromium
from tests.e2e.test_ws_fanout import api_processes
from tests.factories import PASSWORD, create_user
from tests.scheduling import add_appointment, create_service, create_staff, days_ahead, local


async def wait_for_mail(stack, to: str, timeout: float = 20) -> str:
    deadline = time.monotonic() + timeout
    while True:
        for message in stack.smtp.messages:
            if str(message["To"]) == to:
                return str(message["Subject"])
        assert time.monotonic() < deadline, [str(m["To"]) for m in stack.smtp.messages]
        await asyncio.sleep(0.2)


async def test_an_admin_cancels_an_appointment_and_edits_a_service(stack, session, tmp_path):
    require_chromium()
    admin = await create_user(session, role=Role.admin)
    staff = await create_staff(session)
    client = await create_user(session, full_name="Carla Client")
    service = await create_service(session, [staff], name="Consultation")
    kept = await add_appointment(session, client, staff, service, local(days_ahead(4), 11), status="pending")
    appointment = await add_appointment(session, client, staff, service, local(days_ahead(3), 10))
    shots = tmp_path / "admin-screenshots"
    shots.mkdir()
    print(f"screenshots: {shots}")
    stack.start_worker((sys.executable, "-m", "app", "worker"))

    with api_processes(1, {**stack.env, "LOG_LEVEL": "WARNING"}, tmp_path) as bases:
        base = f"http://{bases[0]}"
        async with async_playwright() as playwright:
            browser = await playwright.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
            try:
                page = await (await browser.new_context()).new_page()
                page.set_default_timeout(TIMEOUT_MS)

                # A staff member is refused at the door, and no admin page opens.
                await page.goto(f"{base}/admin/login")
                await page.fill("#username", staff.email)
                await page.fill("#password", PASSWORD)
                await page.click("button[type=submit]")
                await expect(page.locator(".alert-danger")).to_contain_text("Only admins")
                await page.screenshot(path=str(shots / "01-staff-refused.png"))
                await page.goto(f"{base}/admin/appointment/list")
                await expect(page).to_have_url(f"{base}/admin/login")

                await page.fill("#username", admin.email)
                await page.fill("#password", PASSWORD)
                await page.click("button[type=submit]")
                await expect(page).to_have_url(f"{base}/admin/")

                await page.goto(f"{base}/admin/appointment/list")
                await expect(page.locator("table tbody tr")).to_have_count(2)
                await page.goto(f"{base}/admin/appointment/list?status=confirmed")
                rows = page.locator("table tbody tr")
                await expect(rows).to_have_count(1)
                await page.screenshot(path=str(shots / "02-appointments-confirmed.png"), full_page=True)

                await page.goto(f"{base}/admin/appointment/details/{appointment.id}")
                await page.fill("#transitions input[name=reason]", "The office is closed")
                await page.click("#transitions button[value=cancel]")
                await expect(page.locator("#transition-done")).to_be_visible()
                await expect(page.locator("#transitions button[value=cancel]")).to_have_count(0)
                await page.screenshot(path=str(shots / "03-cancelled.png"), full_page=True)

                await page.goto(f"{base}/admin/service/edit/{service.id}")
                await page.fill("input[name=name]", "Long consultation")
                await page.fill("input[name=price]", "45.00")
                await page.click("input[type=submit][value=Save], button:has-text('Save')")
                await expect(page).to_have_url(f"{base}/admin/service/list")
                await expect(page.locator("table")).to_contain_text("Long consultation")
                await page.screenshot(path=str(shots / "04-service-edited.png"), full_page=True)
            finally:
                await browser.close()
    subject = await wait_for_mail(stack, client.email)
    assert subject.startswith("Cancelled: ")
    await session.refresh(appointment)
    await session.refresh(kept)
    assert appointment.status == "cancelled" and kept.status == "pending"
    edited = await session.scalar(
        select(Service).where(Service.id == service.id).execution_options(populate_existing=True)
    )
    assert edited.name == "Long consultation" and str(edited.price) == "45.00"
    assert sorted(p.name for p in shots.iterdir()) == [
        "01-staff-refused.png",
        "02-appointments-confirmed.png",
        "03-cancelled.png",
        "04-service-edited.png",
    ]
