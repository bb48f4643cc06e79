"""The worker's own series (emails sent, failed, given up; reminder delay) and its HTTP port: `/health`
while the relay makes progress, `/metrics` behind the same token rule as the API's."""

import asyncio
import subprocess
import sys
import time
from datetime import timedelta

import httpx
import pytest
from prometheus_client import generate_latest
from sqlalchemy import func, update

from app.config import get_settings
from app.metrics import WORKER_REGISTRY
from app.models import OutboxMessage
from app.services.messaging import probe, reminders
from app.services.messaging.worker import attempt_delivery, relay_forever, relay_once
from tests.integration.test_email import queue
from tests.integration.test_reminders import DAY, T0, at, book
from tests.metrics import delta, parse, value
from tests.smtp import HOST, SmtpServer, free_port, settings_env

TOKEN = "worker-metrics-token-0123456789"


def worker_samples() -> dict:
    return parse(generate_latest(WORKER_REGISTRY).decode())


@pytest.fixture
async def smtp(app):
    server = SmtpServer().start()
    with settings_env(MAIL_SERVER=server.host, MAIL_PORT=str(server.port)):
        yield server
        server.stop()


class TestEmailSeries:
    async def test_a_sent_email_counts_once_under_its_template(self, smtp):
        [outbox_id] = await queue()
        before = worker_samples()

        attempt = await attempt_delivery(outbox_id)
        assert attempt is not None and attempt.sent
        assert await attempt_delivery(outbox_id) is None  # nothing more to do: nothing more counted

        after = worker_samples()
        assert delta(before, after, "c3po_emails_sent_total", template="verify_email") == 1
        assert delta(before, after, "c3po_email_failures_total", template="verify_email") == 0
        assert delta(before, after, "c3po_email_send_seconds_count") == 1

    async def test_each_failed_attempt_counts_and_giving_up_once(self, session, smtp):
        smtp.stop()
        [outbox_id] = await queue()
        before = worker_samples()

        first = await attempt_delivery(outbox_id)
        assert first is not None and first.retry_at is not None
        await session.execute(
            update(OutboxMessage).values(
                attempts=get_settings().outbox_max_attempts - 1, next_attempt_at=func.now() - timedelta(seconds=1)
            )
        )
        await session.commit()
        last = await attempt_delivery(outbox_id)
        assert last is not None and last.retry_at is None and not last.sent

        after = worker_samples()
        assert delta(before, after, "c3po_email_failures_total", template="verify_email") == 2
        assert delta(before, after, "c3po_emails_given_up_total", template="verify_email") == 1
        assert delta(before, after, "c3po_emails_sent_total", template="verify_email") == 0


class TestReminderDelay:
    async def test_observed_once_per_reminder_queued_with_its_lateness(self, session, smtp):
        appointment = await book(session, starts_at=T0, booked_at=T0 - timedelta(days=3))
        before = worker_samples()

        assert await reminders.send_due(now=at(appointment, DAY) + timedelta(seconds=90)) == 1

        after = worker_samples()
        assert delta(before, after, "c3po_reminder_delay_seconds_count") == 1
        assert delta(before, after, "c3po_reminder_delay_seconds_sum") == 90
        assert delta(before, after, "c3po_reminder_delay_seconds_bucket", le="60.0") == 0
        assert delta(before, after, "c3po_reminder_delay_seconds_bucket", le="120.0") == 1


class TestRelay:
    async def test_a_pass_beats_the_heartbeat_and_counts(self, smtp):
        probe.HEARTBEAT.last = time.monotonic() - 3600
        before = worker_samples()
        stop = asyncio.Event()
        relay = asyncio.create_task(relay_forever(stop))
        deadline = time.monotonic() + 10
        while delta(before, worker_samples(), "c3po_worker_relay_passes_total", outcome="ok") < 1:
            assert time.monotonic() < deadline, "no relay pass"
            await asyncio.sleep(0.01)
        stop.set()
        await asyncio.wait_for(relay, 10)

        assert probe.HEARTBEAT.age() < 5
        assert delta(before, worker_samples(), "c3po_worker_relay_passes_total", outcome="ok") == 1

    async def test_relay_once_beats_before_each_attempt(self, smtp):
        probe.HEARTBEAT.last = time.monotonic() - 3600
        assert await relay_once() == 0
        assert probe.HEARTBEAT.age() < 5


@pytest.fixture
async def probe_url(app, monkeypatch):
    settings = get_settings()
    monkeypatch.setattr(settings, "worker_metrics_port", free_port())
    monkeypatch.setattr(settings, "host", HOST)
    server = await probe.start_probe(settings)
    assert server is not None
    probe.HEARTBEAT.beat()
    try:
        yield f"http://{HOST}:{settings.worker_metrics_port}"
    finally:
        server.close()
        await server.wait_closed()


class TestProbe:
    async def test_not_started_without_a_port(self):
        assert await probe.start_probe(get_settings().model_copy(update={"worker_metrics_port": None})) is None

    async def test_health_answers_while_the_relay_makes_progress(self, probe_url):
        async with httpx.AsyncClient(base_url=probe_url) as http:
            fresh = await http.get("/health")
            probe.HEARTBEAT.last = time.monotonic() - probe.stale_after(get_settings()) - 1
            stale = await http.get("/health")
            head = await http.head("/health")

        assert fresh.status_code == 200 and fresh.json()["status"] == "ok"
        assert stale.status_code == 503 and stale.json()["status"] == "stale"
        assert head.status_code == 503 and head.content == b""

    async def test_metrics_parse_and_carry_the_worker_series(self, probe_url):
        async with httpx.AsyncClient(base_url=probe_url) as http:
            response = await http.get("/metrics", headers={"Accept-Encoding": "gzip"})

        assert response.status_code == 200 and response.headers["content-encoding"] == "gzip"
        samples = parse(response.text)
        assert value(samples, "c3po_worker_last_relay_timestamp_seconds") > 0
        assert ("process_cpu_seconds_total", frozenset()) in samples
        assert not any(name.startswith("http_request") for name, _ in samples)  # the API's, not served here

    async def test_metrics_follow_the_token_rule(self, probe_url, monkeypatch):
        async with httpx.AsyncClient(base_url=probe_url) as http:
            monkeypatch.setattr(get_settings(), "environment", "production")
            closed = await http.get("/metrics")
            monkeypatch.setattr(get_settings(), "metrics_token", TOKEN)
            missing = await http.get("/metrics")
            right = await http.get("/metrics", headers={"Authorization": f"Bearer {TOKEN}"})
            health = await http.get("/health")  # never behind the token: compose's check has none

        assert closed.status_code == 404
        assert missing.status_code == 401 and missing.headers["www-authenticate"] == "Bearer"
        assert right.status_code == 200
        assert health.status_code == 200

    async def test_anything_else_is_refused(self, probe_url):
        async with httpx.AsyncClient(base_url=probe_url) as http:
            assert (await http.get("/nope")).status_code == 404
            assert (await http.post("/health")).status_code == 405

        reader, writer = await asyncio.open_connection(HOST, int(probe_url.rsplit(":", 1)[1]))
        writer.write(b"garbage\r\n\r\n")
        await writer.drain()
        assert await asyncio.wait_for(reader.read(), 10) == b""  # no answer, connection closed
        writer.close()


class TestComposeHealthCheck:
    async def test_the_compose_command_passes_while_healthy_and_fails_when_stale(self, probe_url):
        from ruamel.yaml import YAML

        from tests.unit.test_deploy_files import COMPOSE

        worker = YAML(typ="safe").load(COMPOSE.read_text())["services"]["worker"]
        kind, program, flag, code = worker["healthcheck"]["test"]
        assert (kind, program, flag) == ("CMD", "python", "-c")
        port = worker["environment"]["WORKER_METRICS_PORT"]
        command = [sys.executable, flag, code.replace(f":{port}/", f":{probe_url.rsplit(':', 1)[1]}/")]

        healthy = await asyncio.to_thread(subprocess.run, command, capture_output=True)
        probe.HEARTBEAT.last = time.monotonic() - probe.stale_after(get_settings()) - 1
        stale = await asyncio.to_thread(subprocess.run, command, capture_output=True)

        assert healthy.returncode == 0, healthy.stderr
        assert stale.returncode != 0 and b"503" in stale.stderr
