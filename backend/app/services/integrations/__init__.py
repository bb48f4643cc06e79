"""What c3po exchanges with other systems: webhooks, calendar feeds, external calendars, manage links."""
