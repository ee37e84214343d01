"""Shared fixtures. Network tests talk only to 127.0.0.1; proxies would send them elsewhere."""

from __future__ import annotations

import os
import subprocess
from collections.abc import Iterator

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


def _mounts_under(root: str) -> list[str]:
    """Mount points below `root` (space images a killed `mercury run` left mounted)."""
    points: list[str] = []
    try:
        with open("/proc/self/mountinfo", encoding="utf-8") as fh:
            for line in fh:
                point = line.split()[4].replace("\\040", " ")
                if point.startswith(root + "/"):
                    points.append(point)
    except OSError:
        return []
    return sorted(points, key=len, reverse=True)  # deepest first


@pytest.fixture(scope="session", autouse=True)
def _unmount_leftover_space_images(tmp_path_factory: pytest.TempPathFactory) -> Iterator[None]:
    """Tests that SIGKILL `mercury run` leave its space images mounted: unmount them at the
    end, so the tmp dirs can go and no loop device is kept."""
    yield
    root = str(tmp_path_factory.getbasetemp().resolve())
    for point in _mounts_under(root):
        subprocess.run(["umount", "-l", point], capture_output=True, check=False)
