"""Real-browser tests: Debian's Chromium driven by Playwright against a live `mercury run`.

One `mercury run` process (the real agent image, the fake model server answering with an
echo) and one headless Chromium serve each test module; each test gets a fresh browser
context (its own cookies) and a page on it. Playwright's sync API: the tests are plain
functions, so no asyncio loop runs in their thread (the sync API refuses one). While it is
alive, its own loop counts as running in this thread, which breaks every asyncio test
after it: so Playwright lives for one module only, never for the session.

Chromium is Debian's (`scripts/ensure-chromium`, run here when it is missing), always
passed by `executable_path`: Playwright never downloads a browser of its own.

Screenshots (`shot("name")`, full page) land in $MERCURY_TEST_OUTPUT when set, else in
`<pytest basetemp>/browser-output/` (e.g. /tmp/pytest-of-$USER/pytest-current/...); a
failing test also leaves `FAILED-<test>.png` there and the tail of Mercury's log in its
report.
"""

from __future__ import annotations

import contextlib
import os
import re
import subprocess
from collections.abc import Callable, Generator, Iterator
from pathlib import Path
from typing import Any

import docker
import pytest
from playwright.sync_api import Browser, BrowserContext, Page, Playwright, sync_playwright

from mercury.sandbox.hardening import LABEL_INSTANCE
from tests.fakes.model_server import FakeModelServer
from tests.integration.conftest import agent_image, base_image, docker_client
from tests.integration.mercury_site import Mercury, echo_responder

# Imported fixtures: the agent image is built (or found) once, as for the integration tests.
__all__ = ["agent_image", "base_image", "docker_client"]

REPO = Path(__file__).resolve().parents[2]
# Read at import, like the base image: the autouse fixture strips MERCURY_* per test.
_CHROMIUM_ENV = os.environ.get("MERCURY_TEST_CHROMIUM")
_OUTPUT_ENV = os.environ.get("MERCURY_TEST_OUTPUT")
# Playwright must never fetch its own browsers (their host is not reachable from CI).
os.environ.setdefault("PLAYWRIGHT_SKIP_BROWSER_DOWNLOAD", "1")

CHROMIUM_ARGS = ["--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage"]
VIEWPORT = {"width": 1280, "height": 800}


def _chromium_path() -> str:
    """Debian's Chromium: $MERCURY_TEST_CHROMIUM, else what scripts/ensure-chromium gives."""
    if _CHROMIUM_ENV:
        return _CHROMIUM_ENV
    done = subprocess.run(
        [str(REPO / "scripts" / "ensure-chromium")],
        capture_output=True,
        text=True,
        timeout=900,
        check=False,
    )
    if done.returncode != 0 or not done.stdout.strip():
        pytest.fail(f"scripts/ensure-chromium failed:\n{done.stderr[-2000:]}", pytrace=False)
    return done.stdout.strip().splitlines()[-1]


@pytest.fixture(scope="session")
def screenshot_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    folder = Path(_OUTPUT_ENV) if _OUTPUT_ENV else tmp_path_factory.getbasetemp() / "browser-output"
    folder.mkdir(parents=True, exist_ok=True)
    return folder


@pytest.fixture(scope="module")
def playwright() -> Iterator[Playwright]:
    with sync_playwright() as p:
        yield p


@pytest.fixture(scope="module")
def browser(playwright: Playwright) -> Iterator[Browser]:
    chromium = playwright.chromium.launch(
        executable_path=_chromium_path(), headless=True, args=CHROMIUM_ARGS
    )
    yield chromium
    chromium.close()


@pytest.fixture(scope="module")
def fake() -> Iterator[FakeModelServer]:
    """The model server of the module's Mercury: answers "re: <the user's text>"
    unless a test scripts turns of its own (`fake.script`) or swaps `fake.responder`."""
    with FakeModelServer() as server:
        server.responder = echo_responder()
        yield server


@pytest.fixture(scope="module")
def mercury(
    tmp_path_factory: pytest.TempPathFactory, agent_image: str, fake: FakeModelServer
) -> Iterator[Mercury]:
    """One live `mercury run` for the module; its tests use spaces of their own."""
    m = Mercury(tmp_path_factory.mktemp("browser-site"), agent_image, fake)
    m.start()
    yield m
    if m.proc is not None and m.proc.poll() is None:
        m.stop()
    client = docker.from_env()
    for container in client.containers.list(
        ignore_removed=True, all=True, filters={"label": f"{LABEL_INSTANCE}={m.instance}"}
    ):
        with contextlib.suppress(docker.errors.NotFound, docker.errors.APIError):
            container.remove(force=True)
    client.close()


@pytest.fixture
def context(browser: Browser, mercury: Mercury) -> Iterator[BrowserContext]:
    """A fresh browser profile (no cookies) whose relative URLs go to the live Mercury."""
    ctx = browser.new_context(base_url=mercury.url, viewport=VIEWPORT)
    yield ctx
    ctx.close()


@pytest.fixture
def page(
    context: BrowserContext, screenshot_dir: Path, request: pytest.FixtureRequest
) -> Iterator[Page]:
    tab = context.new_page()
    yield tab
    report = getattr(request.node, "rep_call", None)
    if report is not None and report.failed:
        with contextlib.suppress(Exception):  # the page may be gone with the failure
            tab.screenshot(path=screenshot_dir / f"FAILED-{_slug(request.node.name)}.png")


@pytest.fixture
def shot(page: Page, screenshot_dir: Path) -> Callable[[str], Path]:
    """shot("web-chat-reply"): a full-page PNG of the page now; returns its path."""

    def take(name: str) -> Path:
        path = screenshot_dir / f"{_slug(name)}.png"
        page.screenshot(path=path, full_page=True)
        return path

    return take


def _slug(name: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.-]+", "-", name).strip("-")


@pytest.hookimpl(wrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo[None]) -> Generator[Any]:
    """Keep each phase's report on the item (the `page` fixture screenshots a failure) and
    add the tail of Mercury's log to a failed test's report."""
    report = yield
    setattr(item, f"rep_{report.when}", report)
    site = getattr(item, "funcargs", {}).get("mercury")
    if report.failed and isinstance(site, Mercury):
        with contextlib.suppress(OSError):
            report.sections.append(("mercury run log (tail)", site.logs()[-6000:]))
    return report


def pytest_terminal_summary(terminalreporter: Any) -> None:
    """Say where the screenshots went (the docs take theirs from there)."""
    if _OUTPUT_ENV:
        folder = Path(_OUTPUT_ENV)
    else:
        factory = getattr(terminalreporter.config, "_tmp_path_factory", None)
        if factory is None:
            return
        folder = factory.getbasetemp() / "browser-output"
    shots = sorted(folder.glob("*.png")) if folder.is_dir() else []
    if shots:
        terminalreporter.write_line(f"browser screenshots ({len(shots)}): {folder}")
