"""The Spaces pages in a real browser, against a live `mercury run`.

The operator logs in through the dashboard's form, finds a space that a web chat message
made, links a second web chat to it with the page's form (a message there then lands in
the linked space), browses the space's folder the agent's run created, and unlinks the
chat again. Screenshots: dashboard-spaces, dashboard-space, dashboard-space-files.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

from playwright.sync_api import Page, expect

from tests.integration.mercury_site import PASSWORD, Mercury

REPLY_TIMEOUT_S = 120
SPACE = "browser-spaces-a"
OTHER = "browser-spaces-b"


def test_link_a_conversation_browse_files_and_unlink(
    page: Page, mercury: Mercury, shot: Callable[[str], Path]
) -> None:
    mercury.post(SPACE, "hello spaces")
    mercury.wait_replies(SPACE, 1, timeout=REPLY_TIMEOUT_S)  # a run made the folder

    page.goto("/spaces")
    page.fill("#username", "admin")
    page.fill("#password", PASSWORD)
    page.click("button[type=submit]")
    row = page.locator(f"tr[data-space='{SPACE}']")
    expect(row).to_be_visible()
    shot("dashboard-spaces")

    row.locator("a").first.click()
    expect(page.locator("h1")).to_have_text(SPACE)
    expect(page.locator(".messages")).to_contain_text("hello spaces")
    expect(page.locator(".messages")).to_contain_text("re: hello spaces")

    page.select_option("#link-platform", "web")
    page.fill("#link-chat", OTHER)
    page.click("#links form.stack-form button[type=submit]")
    expect(page.locator("#links p.alert.ok, p.alert.ok")).to_be_visible()
    linked = page.locator("#links tbody tr", has_text=OTHER)
    expect(linked).to_be_visible()
    shot("dashboard-space")

    # The linked chat's messages now land in this space.
    mercury.post(OTHER, "via the linked chat")
    mercury.wait_replies(OTHER, 1, timeout=REPLY_TIMEOUT_S)
    page.reload()
    expect(page.locator(".messages")).to_contain_text("via the linked chat")

    page.click("text=Files")
    expect(page.locator(".files-table")).to_contain_text("MEMORY.md")
    shot("dashboard-space-files")

    page.go_back()
    page.locator("#links tbody tr", has_text=OTHER).locator("button", has_text="Unlink").click()
    expect(page.locator("p.alert.ok")).to_contain_text("unlinked")
    expect(page.locator("#links tbody tr", has_text=OTHER)).to_have_count(0)
