from app.models.base import Base
from app.models.outbox import OutboxMessage
from app.models.user import ActionToken, ActionTokenPurpose, Role, User

__all__ = ["ActionToken", "ActionTokenPurpose", "Base", "OutboxMessage", "Role", "User"]
