"""Messaging: the outbox, the email worker, booking emails, reminders and real-time events."""
