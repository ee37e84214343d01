"""Loopback fakes of external services, driven by tests (and by hand: see each module)."""
