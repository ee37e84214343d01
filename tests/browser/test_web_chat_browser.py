"""The web chat at /chat in a real browser, against a live `mercury run`.

The operator logs in with the password from .env, sends a message and sees the agent's
reply arrive on the same page (the server-sent event stream, no reload), and uploads a
file that then shows in the conversation, downloads with the session cookie and reaches
the agent. Each
test has a space of its own on the shared process.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

from playwright.sync_api import Page, expect

from tests.integration.mercury_site import PASSWORD, Mercury

# A reply needs a container run; the first run of a session also starts the agent image.
REPLY_TIMEOUT_MS = 120_000


def log_in(page: Page, space: str) -> None:
    """Open /chat on `space` and log in through its form (the username is prefilled)."""
    page.goto(f"/chat?space={space}")
    expect(page.locator("#login")).to_be_visible()
    page.fill("#password", PASSWORD)
    page.click("#login button[type=submit]")
    expect(page.locator("#chat")).to_be_visible()
    expect(page.locator("#logout")).to_be_visible()


def mark_page(page: Page) -> None:
    """Tag the loaded document; `assert_not_reloaded` proves the same one is still shown."""
    page.evaluate("window.__mercuryTestMark = 'same-document'")


def assert_not_reloaded(page: Page) -> None:
    assert page.evaluate("window.__mercuryTestMark") == "same-document"


def test_wrong_password_is_refused_and_nothing_else_shows(
    page: Page, shot: Callable[[str], Path]
) -> None:
    page.goto("/chat")
    page.fill("#password", "not-the-password")
    page.click("#login button[type=submit]")
    expect(page.locator("#login-error")).not_to_be_empty()
    expect(page.locator("#chat")).to_be_hidden()
    shot("web-chat-login-refused")


def test_a_message_gets_the_agents_reply_without_reloading(
    page: Page, mercury: Mercury, shot: Callable[[str], Path]
) -> None:
    log_in(page, "browser-chat")
    expect(page.locator("#conn")).to_have_text("live")  # the event stream is open
    shot("web-chat-empty")
    mark_page(page)

    page.fill("#text", "hello from the browser")
    page.press("#text", "Enter")

    mine = page.locator(".msg.user", has_text="hello from the browser")
    expect(mine).to_be_visible()
    expect(page.locator("#text")).to_have_value("")
    reply = page.locator(".msg.assistant:not(.preview)", has_text="re: hello from the browser")
    expect(reply).to_be_visible(timeout=REPLY_TIMEOUT_MS)
    assert_not_reloaded(page)
    shot("web-chat-reply")
    # What the page shows is what Mercury stored.
    assert [r["text"] for r in mercury.replies("browser-chat")] == ["re: hello from the browser"]


def test_an_uploaded_file_shows_in_the_conversation_and_downloads(
    page: Page, mercury: Mercury, shot: Callable[[str], Path]
) -> None:
    content = b"line one\nline two: the browser uploaded me\n"
    log_in(page, "browser-files")
    mark_page(page)

    page.set_input_files(
        "#file", files=[{"name": "notes.txt", "mimeType": "text/plain", "buffer": content}]
    )
    page.fill("#text", "here are my notes")
    page.click("#send")

    mine = page.locator(".msg.user", has_text="here are my notes")
    link = mine.locator(".files a", has_text="notes.txt")
    expect(link).to_be_visible()
    expect(page.locator("#file")).to_have_value("")  # the form was reset for the next one
    href = link.get_attribute("href")
    assert href, "the file link has no address"
    download = page.request.get(href)  # the browser context's own cookies, no password
    assert download.ok, download.status
    assert download.body() == content

    # The agent was handed the file in its space (the echo model repeats the prompt's note).
    reply = page.locator(".msg.assistant:not(.preview)", has_text="re: here are my notes")
    expect(reply).to_be_visible(timeout=REPLY_TIMEOUT_MS)
    expect(reply).to_contain_text("/space/inbox/")
    expect(reply).to_contain_text("notes.txt")
    assert_not_reloaded(page)
    shot("web-chat-upload")
    stored = [m for m in mercury.messages("browser-files") if m["role"] == "user"]
    assert [f["name"] for f in stored[0]["files"]] == ["notes.txt"]


def test_the_answer_grows_in_place_while_the_model_writes(
    page: Page, mercury: Mercury, fake: Any, shot: Callable[[str], Path]
) -> None:
    """Streamed replies in a real browser: a preview (dashed) shows part of the answer
    while the model writes, then the reply takes its place and the preview is gone."""
    from tests.fakes.model_server import Text, Turn

    words = [f"word{i:02d}" for i in range(40)]
    fake.script([Turn([Text(" ".join(words))], first_token_delay=0.3, tokens_per_second=8)])
    log_in(page, "browser-stream")
    expect(page.locator("#conn")).to_have_text("live")
    mark_page(page)
    page.fill("#text", "write slowly")
    page.press("#text", "Enter")
    preview = page.locator(".msg.assistant.preview")
    expect(preview).to_be_visible(timeout=REPLY_TIMEOUT_MS)
    expect(preview).to_contain_text(words[0])
    shown = preview.inner_text()
    assert words[-1] not in shown  # part of the answer, while it is written
    shot("web-chat-streaming")
    reply = page.locator(".msg.assistant:not(.preview)", has_text=words[-1])
    expect(reply).to_be_visible(timeout=REPLY_TIMEOUT_MS)
    expect(page.locator(".msg.assistant.preview")).to_have_count(0)
    assert reply.inner_text().split()[-len(words) :] == words
    assert_not_reloaded(page)
