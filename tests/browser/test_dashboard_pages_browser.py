"""The Tasks, Runs, Usage, Health and Config pages in a real browser, on a live `mercury run`.

The operator logs in through the dashboard's form and:

- creates a task on /tasks for a space a chat message made, pauses and resumes it (htmx
  swaps the row), presses "Run now" and watches the task's reply arrive in the web chat
  open in a second tab (no reload), finds it on the dashboard's Chat page too, then sees
  the run as the task's last result;
- makes a run fail for real: the fake model asks the agent's bash tool to write a line to
  the agent's own stderr (the container log) and SIGKILL the agent, so the container exits
  without result.json (reason `crashed`); filters /runs down to it, opens its detail and
  reads that line in the log tail;
- finds a run's tokens (the fake model reports a distinctive count) in the usage table and
  in the chart's bar titles;
- opens /health and /config, whose secrets (the model key, the dashboard password) show
  as "set" and never by value.

Every page is screenshotted (dashboard-tasks, -runs, -run-detail, -usage, -health,
-config; login, overview, spaces and chat come from the other browser tests) for
docs/dashboard.md. The tests run in file order and share the module's one Mercury.
"""

from __future__ import annotations

import re
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from playwright.sync_api import BrowserContext, Page, expect

from tests.fakes.model_server import FakeModelServer, ScriptItem, Text, ToolCall, Turn
from tests.integration.mercury_site import PASSWORD, Mercury, last_user_text

# A reply needs a container run; the first run of a module also starts the agent image.
REPLY_TIMEOUT_S = 120
REPLY_TIMEOUT_MS = REPLY_TIMEOUT_S * 1000

TASK_SPACE = "browser-tasks"
FAIL_SPACE = "browser-fail"
USAGE_SPACE = "browser-usage"
CRASH_WORD = "CRASH-THE-AGENT"
CRASH_LINE = "mercury-test: the agent is killed on purpose"
# What the fake model reports per call, so the usage page's numbers are recognisably ours.
INPUT_TOKENS = 1234
OUTPUT_TOKENS = 321
# The command the fake model has the agent run: a line into the agent's stderr (the
# container's log), then SIGKILL to the agent (bash's parent), which so writes no result.
CRASH_COMMAND = f"echo '{CRASH_LINE}' > /proc/$PPID/fd/2; kill -9 $PPID"


def responder(body: dict[str, Any]) -> ScriptItem:
    """Echo the user's text with fixed token counts; crash the agent when asked to."""
    text = last_user_text(body)
    if CRASH_WORD in text:
        return ToolCall("bash", {"command": CRASH_COMMAND})
    reply = text.split(":", 1)[-1].strip()
    return Turn([Text(f"re: {reply}")], input_tokens=INPUT_TOKENS, output_tokens=OUTPUT_TOKENS)


@pytest.fixture(scope="module", autouse=True)
def scripted_model(fake: FakeModelServer) -> Iterator[None]:
    """This module's model: the echo of conftest's, plus token counts and the crash."""
    before = fake.responder
    fake.responder = responder
    yield
    fake.responder = before


def log_in(page: Page, path: str) -> None:
    """Open `path`, which sends a stranger to /login, and log in there; back on `path`."""
    page.goto(path)
    expect(page).to_have_url(re.compile(r"/login\?next="))
    page.fill("#username", "admin")
    page.fill("#password", PASSWORD)
    page.get_by_role("button", name="Log in").click()
    expect(page).to_have_url(re.compile(re.escape(path.split("?")[0]) + r"(\?.*)?$"))


def wait_for(check: Callable[[], bool], what: str, timeout: float = REPLY_TIMEOUT_S) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if check():
            return
        time.sleep(0.5)
    raise AssertionError(f"timed out waiting for {what}")


def test_create_pause_resume_and_run_a_task_now(
    page: Page, context: BrowserContext, mercury: Mercury, shot: Callable[[str], Path]
) -> None:
    mercury.post(TASK_SPACE, "hello tasks")  # the space and its conversation
    mercury.wait_replies(TASK_SPACE, 1, timeout=REPLY_TIMEOUT_S)

    log_in(page, "/tasks")
    expect(page.get_by_role("heading", name="Tasks", exact=True)).to_be_visible()
    page.select_option("#task-space", TASK_SPACE)
    page.fill("#task-prompt", "scheduled hello")
    page.select_option("#task-kind", "every")
    page.fill("#task-when", "1d")
    page.get_by_role("button", name="Create task").click()
    expect(page.get_by_role("status").filter(has_text="Task created.")).to_be_visible()
    row = page.locator("tr[id^='task-']", has_text="scheduled hello")
    expect(row).to_have_count(1)
    expect(row).to_contain_text("every 1 d")
    expect(row.locator(".badge")).to_have_text("enabled")
    expect(row.locator(".last-result")).to_contain_text("never ran")

    # Pause and resume: htmx swaps just the row.
    row.get_by_role("button", name="Pause").click()
    expect(row.locator(".badge")).to_have_text("paused")
    expect(row.get_by_role("status")).to_have_text("Task paused.")
    row.get_by_role("button", name="Resume").click()
    expect(row.locator(".badge")).to_have_text("enabled")
    expect(row.get_by_role("status")).to_have_text("Task resumed.")

    # The web chat in a second tab (the same login) shows the task's reply when it comes.
    chat = context.new_page()
    chat.goto(f"/chat?space={TASK_SPACE}")
    expect(chat.locator("#chat")).to_be_visible()
    expect(chat.locator(".msg.assistant:not(.preview)", has_text="re: hello tasks")).to_be_visible()
    expect(chat.locator("#conn")).to_have_text("live")

    row.get_by_role("button", name="Run now").click()
    expect(row.get_by_role("status")).to_have_text("Task queued to run now.")
    reply = chat.locator(".msg.assistant:not(.preview)", has_text="scheduled hello")
    expect(reply).to_be_visible(timeout=REPLY_TIMEOUT_MS)
    replies = mercury.wait_replies(TASK_SPACE, 2, timeout=REPLY_TIMEOUT_S)
    assert "scheduled hello" in replies[-1]["text"]
    chat.close()

    # The same conversation on the dashboard's Chat page, beside the list of chats.
    page.goto(f"/dashboard/chat?space={TASK_SPACE}")
    expect(page.locator(f".chat-convs li[data-chat='{TASK_SPACE}']")).to_be_visible()
    expect(
        page.locator("#messages .msg.assistant:not(.preview)", has_text="scheduled hello")
    ).to_be_visible()

    # The task's last result is that run, ok, with a link to its detail. (A fresh load of
    # the list, not a reload: that would keep the #task-N anchor's scroll for the shot.)
    page.goto("/tasks")
    row = page.locator("tr[id^='task-']", has_text="scheduled hello")
    expect(row.locator(".last-result .badge")).to_have_text("ok")
    expect(row.locator(".last-result a[href^='/runs/']")).to_be_visible()
    shot("dashboard-tasks")


def test_filter_the_runs_and_read_a_failed_runs_log_tail(
    page: Page, mercury: Mercury, shot: Callable[[str], Path]
) -> None:
    mercury.post(FAIL_SPACE, f"{CRASH_WORD} now")

    log_in(page, "/runs")
    expect(page.get_by_role("heading", name="Runs", exact=True)).to_be_visible()
    page.fill("#f-space", FAIL_SPACE)
    page.select_option("#f-reason", "crashed")
    page.get_by_role("button", name="Filter").click()
    expect(page).to_have_url(re.compile(r"/runs\?.*reason=crashed"))
    expect(page).to_have_url(re.compile(rf"space={FAIL_SPACE}"))

    rows = page.locator("table.runs-table tbody tr")

    def crashed_run_listed() -> bool:
        page.reload()
        return rows.count() > 0

    wait_for(crashed_run_listed, "the crashed run on /runs")
    expect(rows).to_have_count(1)
    expect(rows.first.locator(".badge")).to_have_text("crashed")
    expect(rows.first).to_contain_text(FAIL_SPACE)
    # The filter keeps other spaces' good runs out, and the form shows what it filters.
    expect(page.locator("table.runs-table")).not_to_contain_text(TASK_SPACE)
    expect(page.locator("#f-reason")).to_have_value("crashed")
    shot("dashboard-runs")

    rows.first.locator("a[href^='/runs/']").click()
    expect(page).to_have_url(re.compile(r"/runs/\d+$"))
    expect(page.get_by_role("heading", level=1)).to_contain_text("crashed")
    expect(page.locator(".run-prompt")).to_contain_text(CRASH_WORD)
    expect(page.locator(".run-error")).to_contain_text("without writing result.json")
    log = page.locator("pre.run-log")
    expect(log).to_contain_text(CRASH_LINE)
    # The model call that asked for the crash was metered for this run.
    expect(page.locator("table.run-calls tbody tr")).to_have_count(1)
    shot("dashboard-run-detail")

    # The unfiltered list shows the good runs too.
    page.get_by_role("link", name="« All runs").click()
    expect(page.locator("table.runs-table")).to_contain_text(TASK_SPACE)
    expect(page.locator("table.runs-table")).to_contain_text(FAIL_SPACE)


def test_usage_shows_the_runs_tokens_in_the_table_and_the_chart(
    page: Page, mercury: Mercury, shot: Callable[[str], Path]
) -> None:
    mercury.post(USAGE_SPACE, "count my tokens")
    mercury.wait_replies(USAGE_SPACE, 1, timeout=REPLY_TIMEOUT_S)

    log_in(page, "/usage")
    expect(page.get_by_role("heading", name="Usage", exact=True)).to_be_visible()
    row = page.locator("#usage-spaces tbody tr", has_text=USAGE_SPACE)
    expect(row).to_have_count(1)
    cells = row.locator("td")
    expect(cells.nth(1)).to_have_text(f"{INPUT_TOKENS:,}")
    expect(cells.nth(2)).to_have_text(f"{OUTPUT_TOKENS:,}")
    expect(cells.nth(4)).to_have_text("1")
    # The chart (tokens per day, stacked by space) has this space's bar for today.
    total = f"{INPUT_TOKENS + OUTPUT_TOKENS:,} tokens"
    titles = page.locator("svg rect title").all_text_contents()
    assert any(f"{USAGE_SPACE}: {total}" in t for t in titles), titles
    expect(page.locator(".legend")).to_contain_text(USAGE_SPACE)
    shot("dashboard-usage")

    with page.expect_download() as download:
        page.get_by_role("link", name="Download CSV").click()
    data = Path(download.value.path()).read_text()
    assert USAGE_SPACE in data


def test_health_and_config_render_with_secrets_masked(
    page: Page, shot: Callable[[str], Path]
) -> None:
    log_in(page, "/health")
    expect(page.get_by_role("heading", name="Health", exact=True)).to_be_visible()
    checks = page.locator("#health-checks tr.check-row")
    expect(checks.first).to_be_visible()
    assert checks.count() >= 3
    # The checks that matter here pass: the server runs containers with this engine.
    expect(page.locator("#health-checks")).not_to_contain_text("A required check fails")
    shot("dashboard-health")

    page.get_by_role("navigation", name="Sections").get_by_role("link", name="Config").click()
    expect(page).to_have_url(re.compile(r"/config$"))
    expect(page.get_by_role("heading", name="Config", exact=True)).to_be_visible()
    expect(page.locator("tr[data-key='server.port'] td.value")).not_to_be_empty()
    key_row = page.locator("#secrets-table tr[data-secret='ANTHROPIC_API_KEY']")
    expect(key_row).to_contain_text("set")
    html = page.content()
    assert "sk-ant-pipeline-test-000" not in html
    assert PASSWORD not in html
    shot("dashboard-config")
