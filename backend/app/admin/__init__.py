"""The admin panel at /admin (SQLAdmin): views over the models whose every write calls the same
services as the API; sign-in, session and CSRF in `auth` and `guard`. Nothing here imports a router."""

import logging
from pathlib import Path

from fastapi import FastAPI
from sqladmin import Admin
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from app.admin.auth import PanelAuth
from app.admin.booking import AppointmentAdmin
from app.admin.calendars import CalendarConnectionAdmin
from app.admin.calls import Refused
from app.admin.catalogue import DateOverrideAdmin, ServiceAdmin, TimeOffAdmin, WeeklyIntervalAdmin
from app.admin.feeds import CalendarFeedAdmin
from app.admin.guard import csrf_token
from app.admin.people import UserAdmin
from app.admin.records import AuditAdmin, OutboxAdmin
from app.admin.resources import ResourceAdmin, ResourceClosureAdmin
from app.admin.waitlist import WaitlistEntryAdmin, WaitlistOfferAdmin
from app.admin.webhooks import WebhookAttemptAdmin, WebhookDeliveryAdmin, WebhookEndpointAdmin
from app.config import Settings
from app.database import get_engine

BASE_URL = "/admin"
TEMPLATES = Path(__file__).resolve().parent / "templates"
VIEWS = (
    UserAdmin,
    ServiceAdmin,
    WeeklyIntervalAdmin,
    DateOverrideAdmin,
    TimeOffAdmin,
    ResourceAdmin,
    ResourceClosureAdmin,
    CalendarConnectionAdmin,
    AppointmentAdmin,
    AuditAdmin,
    OutboxAdmin,
    CalendarFeedAdmin,
    WebhookEndpointAdmin,
    WebhookDeliveryAdmin,
    WebhookAttemptAdmin,
    WaitlistEntryAdmin,
    WaitlistOfferAdmin,
)


class _PanelSessions(async_sessionmaker[AsyncSession]):
    """The panel's read sessions, on the app's engine once it exists (it is made on first use, after
    start-up); its own maker, because SQLAdmin reconfigures the one it is given."""

    def __call__(self, **local_kw):
        local_kw.setdefault("bind", get_engine())
        return super().__call__(**local_kw)


class _QuietRefusals(logging.Filter):
    """SQLAdmin logs every exception a form raises with its traceback; a refused form is no error."""

    def filter(self, record: logging.LogRecord) -> bool:
        return not (record.exc_info and isinstance(record.exc_info[1], Refused))


def install_admin(app: FastAPI, settings: Settings) -> Admin:
    auth = PanelAuth(settings, BASE_URL)
    admin = Admin(
        app,
        session_maker=_PanelSessions(expire_on_commit=False),
        base_url=BASE_URL,
        title="c3po admin",
        templates_dir=str(TEMPLATES),
        authentication_backend=auth,
    )
    auth.templates = admin.templates
    admin.templates.env.globals["csrf_token"] = csrf_token
    sqladmin_log = logging.getLogger("sqladmin.application")
    if not any(isinstance(f, _QuietRefusals) for f in sqladmin_log.filters):  # create_app may run many times
        sqladmin_log.addFilter(_QuietRefusals())
    for view in VIEWS:
        admin.add_view(view)
    return admin
