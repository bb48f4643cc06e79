"""Which path a single booking takes: the hot path (`single`) or the full one (`booking.create`).

The hot path books a plain slot: one staff member's time and nothing else to take or count. A
booking that needs more (a seat of a group session, a resource, a limit to count) takes the full
path, whose locks come in one order: the client's, the staff member's, the resources'. The hot path
decides in the statement that takes its first lock, so it never holds a lock the full path would
have to take out of that order: it locks the staff member's calendar only if the booking is plain.

Reads before any lock: a service made a group session a moment later books as it was, as if the
booking had come first.
"""

from app.services.booking import limits


def full_path_sql(service: str, staff: str) -> str:
    """SQL: whether booking `service` with `staff` (SQL expressions, uuids) needs the full path."""
    # `staff` is in the statement's parameters whatever the rules read.
    seats = f"EXISTS (SELECT FROM services WHERE id = {service} AND capacity > 1)"
    needs_resource = f"EXISTS (SELECT FROM service_resources WHERE service_id = {service})"
    rules = [seats, needs_resource, limits.full_path_sql(service, staff)]
    return f"({staff})::uuid IS NOT NULL AND ({' OR '.join(rules)})"


def always_full_path() -> bool:
    """Whether every booking takes the full path (a rule that concerns every booking is set)."""
    return limits.any_global_limit()
