"""HTTP routers and what they share."""

API_PREFIX = "/api/v1"  # every business route is under it
