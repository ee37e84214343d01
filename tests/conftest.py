"""Shared fixtures. Network tests talk only to 127.0.0.1; proxies would send them elsewhere."""

from __future__ import annotations

import os

import pytest

_PROXY_VARS = ("http_proxy", "https_proxy", "all_proxy")


@pytest.fixture(autouse=True)
def _no_proxies(monkeypatch: pytest.MonkeyPatch) -> None:
    # slack_sdk and others read proxy variables themselves and ignore NO_PROXY.
    for name in list(os.environ):
        if name.lower() in _PROXY_VARS:
            monkeypatch.delenv(name, raising=False)


@pytest.fixture(autouse=True)
def _clean_mercury_env(monkeypatch: pytest.MonkeyPatch) -> None:
    """A developer's own MERCURY_* settings or model keys must not leak into tests."""
    for name in list(os.environ):
        if (name.startswith("MERCURY_") and not name.startswith("MERCURY_TEST_")) or name in (
            "ANTHROPIC_API_KEY",
            "OPENAI_API_KEY",
        ):
            monkeypatch.delenv(name, raising=False)


def in_ci() -> bool:
    return os.environ.get("CI", "").lower() in ("1", "true", "yes")
