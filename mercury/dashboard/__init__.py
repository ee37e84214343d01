"""The browser dashboard: aiohttp routes, templates and static files."""
