"""`python -m app` admin commands against the test database, and the development mail catcher."""

import asyncio
import os
import smtplib
import socket
import subprocess
import sys
from email import message_from_bytes, policy
from email.message import EmailMessage
from pathlib import Path

from loguru import logger
from sqlalchemy import select, text

from app.cli import main
from app.models import User
from app.services.accounts.passwords import common_passwords
from app.services.demo import DEMO_ACCOUNTS, DEMO_PASSWORD
from app.utils.mailcatcher import MailCatcher, extract_links
from app.utils.security import verify_password
from tests.factories import create_user

BACKEND_DIR = Path(__file__).resolve().parents[2]
PASSPHRASE = "a fine long passphrase"


async def run_cli(*argv: str) -> int:
    """The CLI in this process, in a thread of its own because it runs its own event loop."""
    return await asyncio.to_thread(main, list(argv))


async def users_by_email(session) -> dict[str, User]:
    session.expire_all()
    return {user.email: user for user in await session.scalars(select(User))}


class TestCreateUser:
    async def test_creates_a_verified_user_with_the_given_role(self, session, capsys):
        code = await run_cli(
            "create-user", "--email", "Alex@Example.com", "--password", PASSPHRASE, "--role", "staff",
            "--full-name", "Alex Example",
        )  # fmt: skip

        assert code == 0
        user = (await users_by_email(session))["alex@example.com"]
        assert (user.role, user.full_name, user.is_verified) == ("staff", "Alex Example", True)
        assert (await verify_password(PASSPHRASE, user.hashed_password))[0]
        assert f"created staff alex@example.com (verified), id {user.id}" in capsys.readouterr().out

    async def test_unverified_user_and_default_name(self, session):
        assert await run_cli("create-user", "--email", "sam@example.com", "--password", PASSPHRASE, "--unverified") == 0

        user = (await users_by_email(session))["sam@example.com"]
        assert (user.role, user.full_name, user.is_verified) == ("user", "sam", False)

    async def test_duplicate_email_is_refused_with_a_message(self, session, capsys):
        assert await run_cli("create-user", "--email", "dup@example.com", "--password", PASSPHRASE) == 0
        capsys.readouterr()

        code = await run_cli("create-user", "--email", "DUP@example.com", "--password", "another passphrase")

        assert code == 1
        assert capsys.readouterr().err.strip() == "error: An account with this email already exists"
        assert list(await users_by_email(session)) == ["dup@example.com"]

    async def test_common_password_is_refused(self, session, capsys):
        assert "password123" in common_passwords()

        code = await run_cli("create-user", "--email", "weak@example.com", "--password", "password123")

        assert code == 1
        assert "error: This password is among the most commonly used ones" in capsys.readouterr().err
        assert await users_by_email(session) == {}

    async def test_invalid_input_is_refused_before_touching_the_database(self, session, capsys):
        code = await run_cli("create-user", "--email", "not-an-email", "--password", "short")

        assert code == 1
        err = capsys.readouterr().err
        assert "email: value is not a valid email address" in err
        assert "password: String should have at least 8 characters" in err
        assert await users_by_email(session) == {}

    async def test_a_real_process_exits_non_zero_without_a_traceback(self, service_urls):
        assert await run_cli("create-user", "--email", "proc@example.com", "--password", PASSPHRASE) == 0

        second = subprocess.run(
            [sys.executable, "-m", "app", "create-user", "--email", "proc@example.com", "--password", PASSPHRASE],
            cwd=BACKEND_DIR,
            env=os.environ,
            capture_output=True,
            text=True,
            timeout=60,
        )

        assert second.returncode == 1
        assert "error: An account with this email already exists" in second.stderr
        assert "Traceback" not in second.stderr


class TestSeedDemo:
    async def test_creates_the_demo_accounts_once(self, session, capsys):
        assert await run_cli("seed-demo") == 0
        assert await run_cli("seed-demo") == 0

        accounts = await users_by_email(session)
        assert {email: user.role for email, user in accounts.items()} == {a.email: a.role for a in DEMO_ACCOUNTS}
        assert all(user.is_verified and user.is_active for user in accounts.values())
        out = capsys.readouterr().out
        assert out.count(" created") == out.count(" already there") == len(DEMO_ACCOUNTS)

    async def test_demo_admin_can_sign_in_with_the_documented_password(self, client, capsys):
        assert DEMO_PASSWORD.lower() not in common_passwords()
        assert await run_cli("seed-demo") == 0

        login = await client.post(
            "/api/v1/auth/login", data={"username": "admin@example.com", "password": DEMO_PASSWORD}
        )
        assert login.status_code == 200, login.text
        me = await client.get("/api/v1/users/me", headers={"Authorization": f"Bearer {login.json()['access_token']}"})
        assert me.json()["role"] == "admin"
        assert f"password {DEMO_PASSWORD!r}" in capsys.readouterr().out

    async def test_leaves_existing_accounts_as_they_are(self, session):
        assert await run_cli("seed-demo") == 0
        admin = (await users_by_email(session))["admin@example.com"]
        admin.full_name = "Renamed Admin"
        await session.commit()

        assert await run_cli("seed-demo") == 0

        assert (await users_by_email(session))["admin@example.com"].full_name == "Renamed Admin"


class TestMigrate:
    async def test_is_a_no_op_on_an_up_to_date_database(self, service_urls, capsys):
        assert await run_cli("migrate") == 0
        assert "database schema is up to date" in capsys.readouterr().out


class TestEraseUser:
    async def test_erases_by_id_as_the_user_would(self, session, capsys):
        user = await create_user(session, email="erase.me@example.com")

        assert await run_cli("erase-user", str(user.id)) == 0

        assert f"erased {user.id}" in capsys.readouterr().out
        erased = (await users_by_email(session)).get(f"deleted-{user.id}@deleted.invalid")
        assert erased is not None and erased.deleted_at is not None and erased.full_name == "Deleted user"

    async def test_an_unknown_id_changes_nothing(self, session, capsys):
        user = await create_user(session)
        assert await run_cli("erase-user", str(user.id), "00000000-0000-0000-0000-000000000000") == 1
        assert "no account with id 00000000-0000-0000-0000-000000000000" in capsys.readouterr().err
        assert (await users_by_email(session))[user.email].deleted_at is None


class TestPurge:
    async def test_deletes_what_is_past_its_retention_and_says_how_much(self, session, service_urls):
        old = "now() - interval '400 days'"
        await session.execute(
            text(f"INSERT INTO audit_log (action, entity_type, entity_id, created_at) VALUES ('x', 'user', '1', {old})")
        )
        await session.execute(text("INSERT INTO audit_log (action, entity_type, entity_id) VALUES ('x', 'user', '2')"))
        await session.commit()

        done = subprocess.run(
            [sys.executable, "-m", "app", "purge"], cwd=BACKEND_DIR, capture_output=True, text=True, timeout=120
        )

        assert done.returncode == 0, done.stderr
        assert "       1 audit entries" in done.stdout.splitlines()
        assert await session.scalar(text("SELECT array_agg(entity_id) FROM audit_log")) == ["2"]


def _message(subject: str, text: str, html: str) -> EmailMessage:
    message = EmailMessage()
    message["From"] = "c3po <no-reply@c3po.local>"
    message["To"] = "ada@example.com"
    message["Subject"] = subject
    message.set_content(text)
    message.add_alternative(html, subtype="html")
    return message


class TestMailCatcher:
    def test_saves_each_message_as_an_eml_file_and_logs_subject_and_links(self, tmp_path):
        logged: list[str] = []
        sink = logger.add(lambda line: logged.append(str(line)), level="INFO", format="{message}")
        link = "http://localhost:5173/verify-email?token=abc-123_XYZ"
        try:
            with MailCatcher(tmp_path / "mail", port=0) as catcher, smtplib.SMTP(catcher.host, catcher.port) as smtp:
                smtp.send_message(_message("Подтвердите адрес", f"Open {link}.", f'<a href="{link}">verify</a>'))
                smtp.send_message(_message("Second", "no links here", "<p>none</p>"))
        finally:
            logger.remove(sink)

        files = sorted((tmp_path / "mail").glob("*.eml"))
        assert len(files) == 2
        saved = [message_from_bytes(path.read_bytes(), policy=policy.default) for path in files]
        assert sorted(m["subject"] for m in saved) == ["Second", "Подтвердите адрес"]
        first = next(m for m in saved if m["subject"] != "Second")
        assert extract_links(first) == [link]
        assert any("Подтвердите адрес" in line and link in line for line in logged)
        assert not list((tmp_path / "mail").glob("*.part"))

    def test_accepts_any_login_in_plain_text(self, tmp_path):
        with MailCatcher(tmp_path, port=0) as catcher, smtplib.SMTP(catcher.host, catcher.port) as smtp:
            smtp.login("anyone", "anything")
            smtp.send_message(_message("Hi", "text", "<p>html</p>"))
        assert len(list(tmp_path.glob("*.eml"))) == 1

    def test_takes_a_free_port_when_the_preferred_one_is_busy(self, tmp_path):
        with socket.socket() as busy:
            busy.bind(("127.0.0.1", 0))
            busy.listen()
            taken = busy.getsockname()[1]
            with MailCatcher(tmp_path, port=taken) as catcher:
                assert catcher.port != taken
                with smtplib.SMTP(catcher.host, catcher.port) as smtp:
                    assert smtp.noop()[0] == 250
