"""Rate-limit guards for the sensitive account endpoints: per requester (an IP address, or a signed-in
user's id), and per email address when given."""

from app.config import get_settings
from app.services import rate_limit
from app.services.accounts.auth import normalize_email


async def limit_sensitive(action: str, requester: str, email: str | None = None, *, by: str = "ip") -> None:
    """`by` names what `requester` is ("ip" or "user"): the limit's label (`{action}:{by}`) says it."""
    settings = get_settings()
    await rate_limit.hit(settings.sensitive_requests_per_ip, action, by, requester)
    if email:
        await rate_limit.hit(settings.sensitive_requests_per_email, action, "email", normalize_email(email))
