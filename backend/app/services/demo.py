"""Demo data for `python -m app dev` and `seed-demo`: safe to run any number of times."""

from dataclasses import dataclass

from sqlalchemy.ext.asyncio import AsyncSession

from app.models import Role, User
from app.services import auth, users

# Documented in README.md; not in app/data/common-passwords.txt. Development data only.
DEMO_PASSWORD = "c3po-demo-pass"


@dataclass(frozen=True)
class DemoAccount:
    email: str
    full_name: str
    role: Role
    timezone: str
    locale: str = "en"


DEMO_ACCOUNTS = (
    DemoAccount("admin@example.com", "Ada Admin", Role.admin, "UTC"),
    DemoAccount("alice.staff@example.com", "Alice Novak", Role.staff, "Europe/Berlin"),
    DemoAccount("boris.staff@example.com", "Boris Ivanov", Role.staff, "Europe/Moscow", "ru"),
    DemoAccount("user@example.com", "Uma User", Role.user, "Europe/London"),
)


async def seed_demo(session: AsyncSession) -> list[tuple[User, bool]]:
    """Create the demo accounts that are missing; answer each account and whether it was created now.

    Existing accounts are left exactly as they are (a changed password stays changed).
    """
    seeded: list[tuple[User, bool]] = []
    for account in DEMO_ACCOUNTS:
        user = await auth.get_user_by_email(session, account.email)
        created = user is None
        if user is None:
            user = await users.create_user(
                session,
                email=account.email,
                password=DEMO_PASSWORD,
                full_name=account.full_name,
                role=account.role,
                timezone=account.timezone,
                locale=account.locale,
            )
        seeded.append((user, created))
    return seeded
