"""The live Overview in a real browser, against a live `mercury run`.

A web chat message whose model answer is slow (the fake model server holds it) keeps a
container running: the open Overview shows it without a reload (its server-sent events
swap the fragment in), Stop ends it, and the aborted run then shows among the failures,
still without a reload. Screenshots: dashboard-overview-live, dashboard-overview-phone.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from playwright.sync_api import Page, expect

from tests.fakes.model_server import FakeModelServer, Text, Turn
from tests.integration.mercury_site import PASSWORD, Mercury, echo_responder, last_user_text

SPACE = "browser-overview-live"
SLOW = "please take your time"
# The first run of a module may also have to start the agent image.
RUN_TIMEOUT_MS = 120_000


@pytest.fixture
def slow_model(fake: FakeModelServer) -> Iterator[None]:
    """The model holds its answer to SLOW far longer than the test waits; echoes the rest."""
    echo = echo_responder()

    def respond(body: dict[str, Any]) -> Turn:
        if SLOW in last_user_text(body):
            return Turn([Text("too late")], delay=300)
        return echo(body)

    fake.responder = respond
    yield
    fake.responder = echo


def test_a_running_container_shows_live_and_stop_ends_it(
    page: Page, mercury: Mercury, shot: Callable[[str], Path], slow_model: None
) -> None:
    page.goto("/overview")
    page.fill("#username", "admin")
    page.fill("#password", PASSWORD)
    page.get_by_role("button", name="Log in").click()
    expect(page).to_have_url(re.compile(r"/overview$"))
    running = page.locator("#running")
    expect(running).to_contain_text("No container is running.")
    page.evaluate("window.__sameOverview = true")  # gone if the page reloads

    mercury.post(SPACE, SLOW)
    row = running.locator("tbody tr", has_text=SPACE)
    expect(row).to_be_visible(timeout=RUN_TIMEOUT_MS)
    expect(row.locator("td.mono").nth(1)).to_contain_text(f"mercury-{mercury.instance}-")
    assert page.evaluate("window.__sameOverview") is True
    shot("dashboard-overview-live")

    row.get_by_role("button", name="Stop").click()
    expect(page.locator("#overview-notice")).to_contain_text(
        f"{SPACE}: Stopped the running request."
    )
    expect(running.locator("tbody tr", has_text=SPACE)).to_have_count(0, timeout=30_000)
    expect(running).to_contain_text("No container is running.", timeout=30_000)
    # The aborted run is stored and counted, and the live page shows it.
    expect(page.locator("#activity tr[data-reason='aborted']")).to_be_visible(timeout=15_000)
    assert page.evaluate("window.__sameOverview") is True
    page.set_viewport_size({"width": 390, "height": 844})  # a phone: sections stack
    shot("dashboard-overview-phone")
