"""Resources (rooms, chairs, equipment) that some services need one of, and their closures."""

import uuid
from datetime import datetime

from sqlalchemy import CheckConstraint, Column, ForeignKey, Index, String, Table, Text, func
from sqlalchemy.orm import Mapped, mapped_column

from app.models.base import Base, Timestamps, UUIDPk

# "The service needs one of these": a booking of it takes exactly one free resource of its set.
service_resources = Table(
    "service_resources",
    Base.metadata,
    Column("service_id", ForeignKey("services.id", ondelete="CASCADE"), primary_key=True),
    Column("resource_id", ForeignKey("resources.id", ondelete="CASCADE"), primary_key=True, index=True),
)


class Resource(UUIDPk, Timestamps, Base):
    """Something a booking takes beside the staff member's time. Like staff time, the database
    guarantees it is never double-booked (`Appointment`'s `no_double_resource_booking`)."""

    __tablename__ = "resources"
    __table_args__ = (Index("ix_resources_name", "name", "id"),)

    name: Mapped[str] = mapped_column(String(200))
    description: Mapped[str] = mapped_column(Text, default="")
    is_active: Mapped[bool] = mapped_column(default=True)


class ResourceClosure(UUIDPk, Base):
    """Time a resource cannot be booked (maintenance, a room let to someone else): its time off."""

    __tablename__ = "resource_closures"
    __table_args__ = (
        CheckConstraint("starts_at < ends_at", name="order"),
        Index("ix_resource_closures_resource_range", "resource_id", "starts_at", "ends_at"),
    )

    resource_id: Mapped[uuid.UUID] = mapped_column(ForeignKey("resources.id", ondelete="CASCADE"))
    starts_at: Mapped[datetime]
    ends_at: Mapped[datetime]
    reason: Mapped[str | None] = mapped_column(String(500))
    created_at: Mapped[datetime] = mapped_column(server_default=func.now())
