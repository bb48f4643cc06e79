"""Rate-limit guards for the unauthenticated account endpoints (per IP, and per email when given)."""

from app.config import get_settings
from app.services import rate_limit
from app.services.accounts.auth import normalize_email


async def limit_sensitive(action: str, client_ip: str, email: str | None = None) -> None:
    settings = get_settings()
    await rate_limit.hit(settings.sensitive_requests_per_ip, action, "ip", client_ip)
    if email:
        await rate_limit.hit(settings.sensitive_requests_per_email, action, "email", normalize_email(email))
