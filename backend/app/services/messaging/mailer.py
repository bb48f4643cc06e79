"""Render an email from `templates/email/{locale}/{name}.{txt,html}` and send it over SMTP.

The subject is the `subject` block of the `.txt` template, so each email's words live in one place
per language. Messages are built with the standard library (multipart/alternative text + HTML,
multipart/mixed once attachments are added) and sent through fastapi-mail's SMTP connection.
"""

import asyncio
import base64
import re
from collections.abc import Iterable, Mapping
from contextlib import suppress
from dataclasses import dataclass
from datetime import datetime
from email.message import EmailMessage
from email.utils import formatdate, parseaddr
from functools import lru_cache
from pathlib import Path
from typing import Any

from fastapi_mail import ConnectionConfig
from fastapi_mail.connection import Connection
from jinja2 import Environment, FileSystemLoader, StrictUndefined, pass_context, select_autoescape
from jinja2.runtime import Context
from loguru import logger
from pydantic import SecretStr

from app.config import get_settings

TEMPLATES_DIR = Path(__file__).resolve().parents[2] / "templates" / "email"
LOCALES = ("en", "ru")
DEFAULT_LOCALE = "en"
_TEMPLATE_NAME = re.compile(r"^[a-z][a-z0-9_]*$")


@dataclass(frozen=True)
class RenderedEmail:
    subject: str
    text: str
    html: str


@pass_context
def _plural(context: Context, count: int, *forms: str) -> str:
    """`{{ n|plural("hour", "hours") }}`; Russian takes three forms: `("час", "часа", "часов")`."""
    n = abs(int(count))
    if context.get("locale") == "ru" and len(forms) == 3:
        if n % 10 == 1 and n % 100 != 11:
            return forms[0]
        return forms[1] if 2 <= n % 10 <= 4 and not 12 <= n % 100 <= 14 else forms[2]
    return forms[0] if n == 1 else forms[-1]


@lru_cache
def _environment() -> Environment:
    env = Environment(
        loader=FileSystemLoader(TEMPLATES_DIR),
        autoescape=select_autoescape(["html"]),  # HTML is escaped; plain text is not
        undefined=StrictUndefined,  # a missing variable fails the attempt instead of leaving a gap
        trim_blocks=True,
        lstrip_blocks=True,
        keep_trailing_newline=True,
    )
    env.filters["plural"] = _plural
    return env


def render(template: str, locale: str, context: Mapping[str, Any]) -> RenderedEmail:
    """Subject, plain text and HTML of one email in `locale` (English when we do not speak it)."""
    if not _TEMPLATE_NAME.match(template):
        raise ValueError(f"invalid email template name {template!r}")
    locale = locale if locale in LOCALES else DEFAULT_LOCALE
    env = _environment()
    text_template = env.get_template(f"{locale}/{template}.txt")
    values = {**context, "locale": locale}
    subject_block = text_template.blocks["subject"](text_template.new_context(values))
    subject = " ".join("".join(subject_block).split())  # one line: a header cannot hold a newline
    values["subject"] = subject
    html = env.get_template(f"{locale}/{template}.html").render(values)
    return RenderedEmail(subject=subject, text=text_template.render(values), html=html)


def message_id(outbox_id: int, created_at: datetime) -> str:
    """The same for every attempt at one outbox row, so a receiver can spot a repeat."""
    domain = parseaddr(get_settings().mail_from)[1].rpartition("@")[2] or "c3po.local"
    return f"<outbox.{outbox_id}.{int(created_at.timestamp())}@{domain}>"


def build_message(
    *, to: str, rendered: RenderedEmail, msg_id: str, attachments: Iterable[Mapping[str, str]] = ()
) -> EmailMessage:
    message = EmailMessage()
    message["Subject"] = rendered.subject
    message["From"] = get_settings().mail_from
    message["To"] = to
    message["Date"] = formatdate(usegmt=True)
    message["Message-ID"] = msg_id
    message.set_content(rendered.text)
    message.add_alternative(rendered.html, subtype="html")
    for attachment in attachments:
        _attach(message, attachment)
    return message


def _attach(message: EmailMessage, attachment: Mapping[str, str]) -> None:
    """`{filename, content, mime_type}`: text types carry text, other types base64 (JSON holds no bytes).

    `mime_type` may carry parameters, e.g. `text/calendar; method=REQUEST` for an invite.
    """
    mime_type, *raw_params = (part.strip() for part in attachment["mime_type"].split(";"))
    maintype, _, subtype = mime_type.partition("/")
    params = dict(param.split("=", 1) for param in raw_params if "=" in param)
    filename = attachment["filename"]
    if maintype == "text":
        message.add_attachment(attachment["content"], subtype=subtype, filename=filename, params=params)
    else:
        data = base64.b64decode(attachment["content"])
        message.add_attachment(data, maintype=maintype, subtype=subtype, filename=filename, params=params)


def connection_config() -> ConnectionConfig:
    settings = get_settings()
    name, address = parseaddr(settings.mail_from)
    # Built without validation: fastapi-mail checks MAIL_FROM with email-validator, which refuses
    # reserved domains such as `.local` that development setups use, and the SMTP connection never
    # reads it (each message carries its own From).
    return ConnectionConfig.model_construct(
        MAIL_USERNAME=settings.mail_username,
        MAIL_PASSWORD=SecretStr(settings.mail_password),
        MAIL_SERVER=settings.mail_server,
        MAIL_PORT=settings.mail_port,
        MAIL_STARTTLS=settings.mail_starttls,
        MAIL_SSL_TLS=settings.mail_ssl_tls,
        MAIL_FROM=address,
        MAIL_FROM_NAME=name or None,
        USE_CREDENTIALS=bool(settings.mail_username),
        TIMEOUT=settings.mail_timeout_seconds,
    )


async def send(message: EmailMessage) -> None:
    """Hand the message to the SMTP server; raises unless the server accepted it.

    An attempt cut short (the worker's send budget, a shutdown) drops the connection at once: a
    QUIT would wait for a server still busy with DATA, holding the cancelled attempt up to its timeout.
    """
    connection = Connection(connection_config())
    await connection.__aenter__()  # connects and logs in, with fastapi-mail's errors
    session = connection.session
    try:
        await session.send_message(message)
    except asyncio.CancelledError:
        session.close()
        raise
    except Exception:
        with suppress(Exception):
            await session.quit()
        raise
    try:
        await session.quit()
    except Exception:
        # The server said 250: the message is out. Failing now would send it a second time.
        logger.opt(exception=True).warning("SMTP QUIT failed after {} was accepted", message["Message-ID"])


async def send_email(outbox_id: int, created_at: datetime, payload: Mapping[str, Any]) -> None:
    """Deliver an outbox payload `{to, template, locale, context, attachments?}`."""
    rendered = render(payload["template"], payload.get("locale", DEFAULT_LOCALE), payload.get("context", {}))
    message = build_message(
        to=payload["to"],
        rendered=rendered,
        msg_id=message_id(outbox_id, created_at),
        attachments=payload.get("attachments", ()),
    )
    await send(message)
