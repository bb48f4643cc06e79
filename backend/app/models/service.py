import uuid
from decimal import Decimal

from sqlalchemy import CheckConstraint, Column, ForeignKey, Index, Numeric, String, Table, Text
from sqlalchemy.orm import Mapped, mapped_column, relationship

from app.models.base import Base, Timestamps, UUIDPk

service_staff = Table(
    "service_staff",
    Base.metadata,
    Column("service_id", ForeignKey("services.id", ondelete="CASCADE"), primary_key=True),
    Column("staff_id", ForeignKey("users.id", ondelete="CASCADE"), primary_key=True, index=True),
)


# The service's booking limits: nullable (None = no limit), and sent as `null` to lift one.
CLIENT_LIMIT_FIELDS = (
    "max_bookings_per_client_day",
    "max_bookings_per_client_week",
    "max_bookings_per_client_month",
    "min_gap_minutes",
)


class Service(UUIDPk, Timestamps, Base):
    """Something a client can book: how long it takes, what it costs, which policies apply."""

    __tablename__ = "services"
    __table_args__ = (
        CheckConstraint("duration_minutes BETWEEN 5 AND 1440", name="duration"),
        CheckConstraint("buffer_before_minutes >= 0 AND buffer_after_minutes >= 0", name="buffers"),
        CheckConstraint("price >= 0", name="price"),
        CheckConstraint("min_notice_minutes >= 0", name="min_notice"),
        CheckConstraint("max_advance_days BETWEEN 1 AND 730", name="max_advance"),
        CheckConstraint("capacity BETWEEN 1 AND 1000", name="capacity"),
        CheckConstraint(
            "max_bookings_per_client_day BETWEEN 1 AND 1000 AND max_bookings_per_client_week BETWEEN 1 AND 1000"
            " AND max_bookings_per_client_month BETWEEN 1 AND 1000 AND min_gap_minutes BETWEEN 1 AND 525600",
            name="client_limits",
        ),
        Index("ix_services_name", "name", "id"),
    )

    name: Mapped[str] = mapped_column(String(200))
    description: Mapped[str] = mapped_column(Text, default="")
    duration_minutes: Mapped[int]
    buffer_before_minutes: Mapped[int] = mapped_column(default=0)
    buffer_after_minutes: Mapped[int] = mapped_column(default=0)
    price: Mapped[Decimal] = mapped_column(Numeric(10, 2), default=Decimal("0"))
    currency: Mapped[str] = mapped_column(String(3), default="EUR")
    requires_confirmation: Mapped[bool] = mapped_column(default=False)
    min_notice_minutes: Mapped[int] = mapped_column(default=60)
    max_advance_days: Mapped[int] = mapped_column(default=90)
    is_active: Mapped[bool] = mapped_column(default=True)
    # Clients per session: above 1 a staff time slot is a group session of that many seats.
    capacity: Mapped[int] = mapped_column(default=1, server_default="1")
    # Booking limits (app/services/booking/limits.py), None = none: a client's bookings of this
    # service per local day, ISO week and month of the staff member, and the least gap between two.
    max_bookings_per_client_day: Mapped[int | None]
    max_bookings_per_client_week: Mapped[int | None]
    max_bookings_per_client_month: Mapped[int | None]
    min_gap_minutes: Mapped[int | None]

    staff: Mapped[list["User"]] = relationship(secondary=service_staff, lazy="raise")  # noqa: F821
    # The resources it needs one of (a massage: one of two massage rooms); empty: none.
    resources: Mapped[list["Resource"]] = relationship(  # noqa: F821
        secondary="service_resources", lazy="raise", order_by="Resource.id"
    )

    @property
    def staff_ids(self) -> list[uuid.UUID]:
        return [member.id for member in self.staff]

    @property
    def resource_ids(self) -> list[uuid.UUID]:
        return [resource.id for resource in self.resources]
