"""Scheduling: the catalogue, staff calendars (hours, overrides, time off) and availability."""
