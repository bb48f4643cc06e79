"""Resources: rooms, chairs and equipment a service needs one of, their closures, and the resource a
booking takes (never double-booked: an exclusion constraint of its own)

Revision ID: 0014
Revises: 0013
Create Date: 2026-12-01 23:00:00
"""

from collections.abc import Sequence

import sqlalchemy as sa

from alembic import op

revision: str = "0014"
down_revision: str | None = "0013"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

_LIVE = "status IN ('pending', 'confirmed')"
_BLOCKED = "tstzrange(blocked_from, blocked_until, '[)')"


def upgrade() -> None:
    op.create_table(
        "resources",
        sa.Column("id", sa.Uuid(), nullable=False),
        sa.Column("name", sa.String(length=200), nullable=False),
        sa.Column("description", sa.Text(), nullable=False),
        sa.Column("is_active", sa.Boolean(), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), server_default=sa.text("now()"), nullable=False),
        sa.Column("updated_at", sa.DateTime(timezone=True), server_default=sa.text("now()"), nullable=False),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_resources")),
    )
    op.create_index("ix_resources_name", "resources", ["name", "id"])
    op.create_table(
        "service_resources",
        sa.Column("service_id", sa.Uuid(), nullable=False),
        sa.Column("resource_id", sa.Uuid(), nullable=False),
        sa.ForeignKeyConstraint(
            ["service_id"], ["services.id"], name=op.f("fk_service_resources_service_id_services"), ondelete="CASCADE"
        ),
        sa.ForeignKeyConstraint(
            ["resource_id"],
            ["resources.id"],
            name=op.f("fk_service_resources_resource_id_resources"),
            ondelete="CASCADE",
        ),
        sa.PrimaryKeyConstraint("service_id", "resource_id", name=op.f("pk_service_resources")),
    )
    op.create_index(op.f("ix_service_resources_resource_id"), "service_resources", ["resource_id"])
    op.create_table(
        "resource_closures",
        sa.Column("id", sa.Uuid(), nullable=False),
        sa.Column("resource_id", sa.Uuid(), nullable=False),
        sa.Column("starts_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("ends_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("reason", sa.String(length=500), nullable=True),
        sa.Column("created_at", sa.DateTime(timezone=True), server_default=sa.text("now()"), nullable=False),
        sa.CheckConstraint("starts_at < ends_at", name=op.f("ck_resource_closures_order")),
        sa.ForeignKeyConstraint(
            ["resource_id"],
            ["resources.id"],
            name=op.f("fk_resource_closures_resource_id_resources"),
            ondelete="CASCADE",
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_resource_closures")),
    )
    op.create_index("ix_resource_closures_resource_range", "resource_closures", ["resource_id", "starts_at", "ends_at"])
    op.add_column("appointments", sa.Column("resource_id", sa.Uuid(), nullable=True))
    op.create_foreign_key(
        op.f("fk_appointments_resource_id_resources"),
        "appointments",
        "resources",
        ["resource_id"],
        ["id"],
        ondelete="SET NULL",
    )
    op.execute(
        "ALTER TABLE appointments ADD CONSTRAINT no_resource_double_booking EXCLUDE USING gist (resource_id WITH =,"
        f" {_BLOCKED} WITH &&, (coalesce(session_key, id)) WITH <>) WHERE ({_LIVE} AND resource_id IS NOT NULL)"
    )


def downgrade() -> None:
    op.drop_constraint("no_resource_double_booking", "appointments")
    op.drop_constraint(op.f("fk_appointments_resource_id_resources"), "appointments", type_="foreignkey")
    op.drop_column("appointments", "resource_id")
    op.drop_index("ix_resource_closures_resource_range", table_name="resource_closures")
    op.drop_table("resource_closures")
    op.drop_index(op.f("ix_service_resources_resource_id"), table_name="service_resources")
    op.drop_table("service_resources")
    op.drop_index("ix_resources_name", table_name="resources")
    op.drop_table("resources")
