"""Emails: rendering, and delivery through the outbox to a real SMTP server, once each."""

import asyncio
import base64
import re
from datetime import UTC, datetime, timedelta

import pytest
from arq.connections import RedisSettings
from arq.constants import default_queue_name, job_key_prefix
from arq.worker import create_worker
from sqlalchemy import func, select, update

from app.config import get_settings
from app.database import unit_of_work
from app.models import OutboxMessage
from app.services.messaging.mailer import build_message, message_id, render
from app.services.messaging.outbox import get_arq_pool, job_id, queue_email
from app.services.messaging.worker import SUPERVISED, WorkerSettings, backoff, deliver_outbox, relay_once, supervise
from tests.smtp import SmtpServer, html_part, settings_env, text_part

VERIFY = {"full_name": "Ada Lovelace", "link": "https://app.test/verify-email?token=t0k&x=1", "expires_hours": 48}
CONTEXTS = {
    "verify_email": VERIFY,
    "already_registered": {
        "full_name": "Ada Lovelace",
        "login_link": "https://app.test/login",
        "reset_link": "https://app.test/reset-password",
    },
    "password_reset": {
        "full_name": "Ada Lovelace",
        "link": "https://app.test/reset-password?token=r3s",
        "expires_minutes": 60,
    },
}
PREFIXES = {
    ("verify_email", "en"): "Email verification: ",
    ("verify_email", "ru"): "Подтверждение почты: ",
    ("already_registered", "en"): "Account exists: ",
    ("already_registered", "ru"): "Аккаунт уже существует: ",
    ("password_reset", "en"): "Password reset: ",
    ("password_reset", "ru"): "Сброс пароля: ",
}
CYRILLIC = re.compile("[а-яё]", re.IGNORECASE)


@pytest.fixture
async def smtp(app):
    server = SmtpServer().start()
    with settings_env(MAIL_SERVER=server.host, MAIL_PORT=str(server.port)):
        yield server
        server.stop()


async def run_workers(count: int = 1, **settings) -> None:
    """`count` arq workers side by side, each until the queue is empty (deferred jobs included)."""
    workers = [
        create_worker(
            WorkerSettings,
            **settings,
            burst=True,
            poll_delay=0.05,
            handle_signals=False,
            ctx={SUPERVISED: True},
            redis_settings=RedisSettings.from_dsn(get_settings().redis_url),
        )
        for _ in range(count)
    ]
    try:
        await asyncio.wait_for(asyncio.gather(*(worker.async_run() for worker in workers)), 30)
    finally:
        for worker in workers:
            await worker.close()


async def queue(count: int = 1, **extra) -> list[int]:
    """Commit `count` verification emails the way a request does (handed to arq after the commit)."""
    async with unit_of_work() as db:
        rows = [
            await queue_email(
                db, to=f"user{i}@example.com", template="verify_email", locale="en", context=VERIFY, **extra
            )
            for i in range(count)
        ]
    return [row.id for row in rows]


async def load(session, outbox_id: int) -> OutboxMessage:
    session.expire_all()
    row = await session.get(OutboxMessage, outbox_id)
    assert row is not None
    return row


class TestRender:
    @pytest.mark.parametrize(("template", "locale"), sorted(PREFIXES))
    def test_subject_starts_with_the_kind_and_both_parts_carry_the_links(self, template, locale):
        email = render(template, locale, CONTEXTS[template])

        assert email.subject.startswith(PREFIXES[template, locale])
        assert "\n" not in email.subject
        assert f'<html lang="{locale}">' in email.html
        assert f"<title>{email.subject}</title>" in email.html
        for key, value in CONTEXTS[template].items():
            if key.endswith("link"):
                assert value in email.text
                assert f'href="{value.replace("&", "&amp;")}"' in email.html
        assert "<" not in email.text

    @pytest.mark.parametrize("template", sorted(CONTEXTS))
    def test_russian_emails_are_written_in_russian(self, template):
        email = render(template, "ru", CONTEXTS[template])

        assert CYRILLIC.search(email.subject)
        assert "Здравствуйте, Ada Lovelace!" in email.text
        assert len(CYRILLIC.findall(email.text)) > 100

    def test_html_escapes_what_users_typed_and_text_keeps_it(self):
        email = render("verify_email", "en", {**VERIFY, "full_name": '<script>alert("x")</script> & Co'})

        assert "<script>" not in email.html
        assert "&lt;script&gt;alert(&#34;x&#34;)&lt;/script&gt; &amp; Co" in email.html
        assert 'Hello <script>alert("x")</script> & Co,' in email.text

    @pytest.mark.parametrize(
        ("locale", "hours", "phrase"),
        [
            ("en", 1, "expires in 1 hour."),
            ("en", 48, "expires in 48 hours."),
            ("ru", 1, "действительна 1 час."),
            ("ru", 24, "действительна 24 часа."),
            ("ru", 48, "действительна 48 часов."),
            ("ru", 11, "действительна 11 часов."),
        ],
    )
    def test_durations_agree_with_their_number(self, locale, hours, phrase):
        assert phrase in render("verify_email", locale, {**VERIFY, "expires_hours": hours}).text

    def test_an_unknown_locale_falls_back_to_english(self):
        assert render("password_reset", "de", CONTEXTS["password_reset"]).subject.startswith("Password reset: ")

    def test_a_missing_variable_is_an_error_not_a_gap(self):
        with pytest.raises(Exception, match="expires_hours"):
            render("verify_email", "en", {"full_name": "Ada", "link": "https://app.test/v"})

    def test_template_names_cannot_leave_the_templates_folder(self):
        with pytest.raises(ValueError):
            render("../base", "en", {})


class TestBuildMessage:
    def test_text_and_html_are_alternatives(self):
        message = build_message(to="ada@example.com", rendered=render("verify_email", "ru", VERIFY), msg_id="<m@x>")

        assert message.get_content_type() == "multipart/alternative"
        assert [part.get_content_type() for part in message.iter_parts()] == ["text/plain", "text/html"]
        assert message["Message-ID"] == "<m@x>"
        assert str(message["Subject"]).startswith("Подтверждение почты: ")

    def test_attachments_make_it_mixed_and_keep_their_type(self):
        ics = "BEGIN:VCALENDAR\r\nMETHOD:REQUEST\r\nEND:VCALENDAR\r\n"
        message = build_message(
            to="ada@example.com",
            rendered=render("verify_email", "en", VERIFY),
            msg_id="<m@x>",
            attachments=[
                {"filename": "invite.ics", "content": ics, "mime_type": "text/calendar; method=REQUEST"},
                {"filename": "a.bin", "content": base64.b64encode(b"\x00\x01").decode(), "mime_type": "application/x"},
            ],
        )

        assert message.get_content_type() == "multipart/mixed"
        invite, blob = list(message.iter_attachments())
        assert (invite.get_content_type(), invite.get_param("method"), invite.get_filename()) == (
            "text/calendar",
            "REQUEST",
            "invite.ics",
        )
        assert "METHOD:REQUEST" in invite.get_content()
        assert blob.get_content() == b"\x00\x01"

    def test_message_id_is_the_same_for_every_attempt_at_a_row(self):
        created = datetime(2026, 1, 1, tzinfo=UTC)
        assert message_id(7, created) == message_id(7, created) != message_id(8, created)


class TestBackoff:
    def test_doubles_from_two_seconds_up_to_five_minutes(self):
        assert [backoff(n).total_seconds() for n in (1, 2, 3, 4)] == [2, 4, 8, 16]
        assert backoff(9).total_seconds() == backoff(50).total_seconds() == 300


class TestDelivery:
    async def test_registering_sends_exactly_one_email_in_the_users_language(self, client, session, smtp):
        r = await client.post(
            "/api/v1/auth/register",
            json={
                "email": "boris@example.com",
                "password": "a long unusual passphrase",
                "full_name": "Борис",
                "locale": "ru",
            },
        )
        assert r.status_code == 202, r.text

        await run_workers()
        await run_workers()

        [message] = smtp.messages
        assert message["To"] == "boris@example.com"
        assert str(message["Subject"]).startswith("Подтверждение почты: ")
        link = f"{get_settings().frontend_url.rstrip('/')}/verify-email?token="
        assert link in text_part(message) and link in html_part(message)
        [row] = (await session.scalars(select(OutboxMessage))).all()
        assert row.sent_at is not None and row.attempts == 0
        assert message["Message-ID"] == message_id(row.id, row.created_at)

    async def test_a_rolled_back_change_sends_nothing(self, session, smtp):
        with pytest.raises(RuntimeError):
            async with unit_of_work() as db:
                await queue_email(db, to="ada@example.com", template="verify_email", locale="en", context=VERIFY)
                raise RuntimeError("the booking failed after the email was queued")

        assert await session.scalar(select(func.count()).select_from(OutboxMessage)) == 0
        assert await (await get_arq_pool()).zcard(default_queue_name) == 0
        await run_workers()
        assert await relay_once() == 0
        assert smtp.messages == []

    async def test_a_job_run_twice_sends_once(self, session, smtp):
        [outbox_id] = await queue()
        ctx = {"redis": await get_arq_pool()}

        assert await deliver_outbox(ctx, outbox_id) == "sent"
        assert await deliver_outbox(ctx, outbox_id) == "nothing to do"
        await run_workers()  # the job queued by the commit runs too

        assert len(smtp.messages) == 1
        assert (await load(session, outbox_id)).sent_at is not None

    async def test_the_same_job_running_twice_at_once_sends_once(self, smtp):
        [outbox_id] = await queue()
        ctx = {"redis": await get_arq_pool()}

        outcomes = await asyncio.gather(deliver_outbox(ctx, outbox_id), deliver_outbox(ctx, outbox_id))

        assert sorted(outcomes) == ["nothing to do", "sent"]
        assert len(smtp.messages) == 1

    async def test_two_workers_and_two_relays_at_once_send_each_email_once(self, session, smtp):
        ids = await queue(12)
        pool = await get_arq_pool()
        for outbox_id in ids[:6]:  # queued a second time, as a lost hand-off retried would be
            await pool.enqueue_job("deliver_outbox", outbox_id, _job_id=f"again:{outbox_id}")
        overdue = datetime.now(UTC) - timedelta(minutes=1)
        await session.execute(
            update(OutboxMessage).where(OutboxMessage.id.in_(ids[6:])).values(next_attempt_at=overdue)
        )
        await session.commit()

        await asyncio.gather(run_workers(2), relay_once(), relay_once())

        counts = smtp.count_by_message_id()
        assert len(counts) == 12 and set(counts.values()) == {1}
        unsent = select(func.count()).select_from(OutboxMessage).where(OutboxMessage.sent_at.is_(None))
        assert await session.scalar(unsent) == 0

    async def test_smtp_down_then_up_retries_with_backoff_and_sends_once(self, session, smtp):
        smtp.stop()
        [outbox_id] = await queue()
        pool = await get_arq_pool()

        assert await deliver_outbox({"redis": pool}, outbox_id) == "attempt 1 failed"

        row = await load(session, outbox_id)
        assert (row.attempts, row.sent_at, row.failed_at) == (1, None, None)
        assert "Connect" in row.last_error
        wait = row.next_attempt_at - datetime.now(UTC)
        assert timedelta(seconds=0.5) < wait <= timedelta(seconds=2)
        assert await pool.exists(job_key_prefix + job_id(outbox_id, 1))
        smtp.start()

        await run_workers()  # runs the first job (too early: skipped) and the retry when it is due

        assert len(smtp.messages) == 1
        row = await load(session, outbox_id)
        assert row.sent_at is not None and row.sent_at >= row.next_attempt_at - timedelta(seconds=1)

    async def test_gives_up_after_the_last_attempt(self, session, smtp):
        smtp.stop()
        [outbox_id] = await queue()
        last = get_settings().outbox_max_attempts
        await session.execute(update(OutboxMessage).values(attempts=last - 1))
        await session.commit()
        pool = await get_arq_pool()

        assert await deliver_outbox({"redis": pool}, outbox_id) == "given up"

        row = await load(session, outbox_id)
        assert row.attempts == last and row.failed_at is not None and row.sent_at is None
        assert not await pool.exists(job_key_prefix + job_id(outbox_id, last))
        await session.execute(update(OutboxMessage).values(next_attempt_at=func.now() - timedelta(hours=1)))
        await session.commit()
        assert await relay_once() == 0

    async def test_the_relay_sends_what_never_reached_the_queue_and_leaves_fresh_rows_alone(self, session, smtp):
        stranded = OutboxMessage(
            kind="email",
            payload={
                "to": "ada@example.com",
                "template": "password_reset",
                "locale": "en",
                "context": CONTEXTS["password_reset"],
            },
            next_attempt_at=datetime.now(UTC) - timedelta(minutes=1),
        )
        fresh = OutboxMessage(kind="email", payload=stranded.payload)
        session.add_all([stranded, fresh])
        await session.commit()
        stranded_id, fresh_id = stranded.id, fresh.id

        assert await relay_once() == 1
        assert await relay_once() == 0

        [message] = smtp.messages
        assert str(message["Subject"]).startswith("Password reset: ")
        assert (await load(session, stranded_id)).sent_at is not None
        assert (await load(session, fresh_id)).sent_at is None

    async def test_attachments_reach_the_recipient(self, smtp):
        ics = "BEGIN:VCALENDAR\r\nVERSION:2.0\r\nMETHOD:CANCEL\r\nEND:VCALENDAR\r\n"
        await queue(
            attachments=[{"filename": "cancel.ics", "content": ics, "mime_type": "text/calendar; method=CANCEL"}]
        )

        await run_workers()

        [message] = smtp.messages
        [invite] = list(message.iter_attachments())
        assert (invite.get_content_type(), invite.get_param("method"), invite.get_filename()) == (
            "text/calendar",
            "CANCEL",
            "cancel.ics",
        )
        assert "METHOD:CANCEL" in invite.get_content()
        assert "expires in 48 hours" in text_part(message)


class TestSupervise:
    async def test_runs_the_queue_and_the_relay_until_stopped(self, session, smtp):
        stop = asyncio.Event()
        worker = asyncio.create_task(supervise(stop))
        try:
            [outbox_id] = await queue()
            await smtp.wait_for(1)
        finally:
            stop.set()
            await asyncio.wait_for(worker, 30)

        assert worker.exception() is None
        assert (await load(session, outbox_id)).sent_at is not None
        assert len(smtp.messages) == 1
