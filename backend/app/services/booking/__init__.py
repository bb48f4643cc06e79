"""Booking: appointments and their state machine, recurring series, idempotency keys."""
