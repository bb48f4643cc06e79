"""Real-time events: published to a Redis channel per user after commit; every API process relays
them to the WebSockets it holds. INTERFACE — implemented by the real-time work (issue 3 §6)."""

import uuid
from typing import Any

from sqlalchemy.ext.asyncio import AsyncSession


def publish_after_commit(
    session: AsyncSession, user_ids: list[uuid.UUID], event_type: str, data: dict[str, Any]
) -> None:
    """Send `{"type": event_type, "data": data}` to each user's sockets once the transaction commits."""
    raise NotImplementedError
