"""The dashboard's Chat page (/dashboard/chat) in a real browser, against a live `mercury run`.

The operator logs in at the dashboard's /login (the web chat's own form is not on this
page), lands back on the Chat page, sends a message and watches the agent's reply arrive
without a reload (the web chat's event stream, driven by its own script), then uploads a
file that shows in the conversation and downloads with the same session. The conversation
then appears in the page's list, which comes from the database. Screenshot "dashboard-chat"
is for docs/dashboard.md.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from pathlib import Path

from playwright.sync_api import Page, expect

from tests.integration.mercury_site import PASSWORD, Mercury

# A reply needs a container run; the first run of a module also starts the agent image.
REPLY_TIMEOUT_MS = 120_000
SPACE = "browser-dash-chat"


def log_in_to(page: Page, path: str) -> None:
    """Open `path`; the dashboard sends a stranger to /login, and back after the form."""
    page.goto(path)
    expect(page).to_have_url(re.compile(r"/login\?next="))
    page.fill("#username", "admin")
    page.fill("#password", PASSWORD)
    page.get_by_role("button", name="Log in").click()
    expect(page).to_have_url(re.compile(re.escape(path) + "$"))


def test_chat_in_the_dashboard_sends_receives_live_and_uploads(
    page: Page, mercury: Mercury, shot: Callable[[str], Path]
) -> None:
    log_in_to(page, f"/dashboard/chat?space={SPACE}")
    nav = page.get_by_role("navigation", name="Sections")
    expect(nav.get_by_role("link", name="Chat")).to_have_attribute("aria-current", "page")
    expect(page.locator("#login")).to_have_count(0)  # the dashboard's login, not the chat's
    expect(page.locator("#conn")).to_have_text("live")  # the event stream is open
    page.evaluate("window.__mercuryTestMark = 'same-document'")

    page.fill("#text", "hello from the dashboard")
    page.press("#text", "Enter")
    expect(page.locator(".msg.user", has_text="hello from the dashboard")).to_be_visible()
    expect(page.locator("#text")).to_have_value("")
    reply = page.locator(".msg.assistant:not(.preview)", has_text="re: hello from the dashboard")
    expect(reply).to_be_visible(timeout=REPLY_TIMEOUT_MS)

    content = b"first line\nsecond line: uploaded from the dashboard\n"
    page.set_input_files(
        "#file", files=[{"name": "plan.txt", "mimeType": "text/plain", "buffer": content}]
    )
    page.fill("#text", "here is the plan")
    page.click("#send")
    link = page.locator(".msg.user", has_text="here is the plan").locator(
        ".files a", has_text="plan.txt"
    )
    expect(link).to_be_visible()
    expect(page.locator("#file")).to_have_value("")
    href = link.get_attribute("href")
    assert href, "the file link has no address"
    download = page.request.get(href)  # the dashboard session's cookie, no password
    assert download.ok, download.status
    assert download.body() == content
    second = page.locator(".msg.assistant:not(.preview)", has_text="re: here is the plan")
    expect(second).to_be_visible(timeout=REPLY_TIMEOUT_MS)
    expect(second).to_contain_text("plan.txt")
    assert page.evaluate("window.__mercuryTestMark") == "same-document"  # never reloaded
    shot("dashboard-chat")

    # What the page showed is what Mercury stored, and the list now names the conversation.
    replies = [r["text"] for r in mercury.replies(SPACE)]
    assert len(replies) == 2 and replies[0] == "re: hello from the dashboard", replies
    page.goto("/dashboard/chat")
    listed = page.get_by_role("complementary", name="Conversations").get_by_role(
        "link", name=re.compile(SPACE)
    )
    expect(listed).to_be_visible()
    listed.click()
    expect(page).to_have_url(re.compile(rf"/dashboard/chat\?space={SPACE}$"))
    expect(
        page.locator(".msg.assistant:not(.preview)", has_text="re: hello from the dashboard")
    ).to_be_visible()

    # On a phone the list stacks above the conversation and the compose form stays usable.
    page.set_viewport_size({"width": 390, "height": 844})
    expect(page.locator("#send")).to_be_visible()
    width = page.evaluate("document.documentElement.scrollWidth")
    assert width <= 390, f"the page scrolls sideways on a phone ({width}px)"
    shot("dashboard-chat-phone")


def test_a_lost_session_sends_the_chat_page_to_login(page: Page) -> None:
    log_in_to(page, "/dashboard/chat")
    expect(page.locator("#conn")).to_have_text("live")
    page.context.clear_cookies()  # the session is gone (expired, logged out elsewhere)
    page.fill("#text", "anyone there?")
    page.press("#text", "Enter")
    expect(page).to_have_url(re.compile(r"/login\?next="))
