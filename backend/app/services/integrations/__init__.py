"""Connections to the world outside: webhooks, calendar feeds, external calendars."""
