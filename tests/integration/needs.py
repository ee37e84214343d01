"""What some integration tests need from the machine, said as a failure, never a skip."""

from __future__ import annotations

import os

import pytest


def require_root(why: str) -> None:
    """Fail (never skip) a test that needs root: CI runs as root, and a skipped test
    proves nothing. `why` says what the test does that only root may."""
    if os.geteuid() != 0:
        pytest.fail(f"run the suite as root (scripts/test in CI does): {why}")
