"""The operator dashboard in a real browser, against a live `mercury run`.

A stranger asking for a page is sent to /login (and back to the page after logging in);
the login form, posted without any JavaScript of ours, opens the overview; a wrong
password is refused on the form; logging out ends the session, so the pages are closed
again. Each step is screenshotted for docs/dashboard.md.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from pathlib import Path

from playwright.sync_api import Page, expect

from tests.integration.mercury_site import PASSWORD, Mercury

# A reply needs a container run; the first run of a module also starts the agent image.
REPLY_TIMEOUT_MS = 120_000


def log_in(page: Page, password: str = PASSWORD) -> None:
    """Fill and post the /login form the browser is on."""
    page.fill("#username", "admin")
    page.fill("#password", password)
    page.get_by_role("button", name="Log in").click()


def test_a_stranger_is_sent_to_login_and_back_to_the_page_asked_for(
    page: Page, mercury: Mercury, shot: Callable[[str], Path]
) -> None:
    mercury.post("browser-overview", "hello dashboard")  # something for the pages to show
    mercury.wait_replies("browser-overview", 1)
    page.goto("/runs")
    expect(page).to_have_url(re.compile(r"/login\?next=(%2F|/)runs$"))
    expect(page.locator("form[action^='/login'] #password")).to_be_visible()
    expect(page.get_by_role("navigation")).to_have_count(0)  # nothing of the app shows
    shot("dashboard-login")

    log_in(page)
    expect(page).to_have_url(re.compile(r"/runs$"))
    expect(page.get_by_role("link", name="Runs")).to_have_attribute("aria-current", "page")


def test_login_opens_the_overview(page: Page, shot: Callable[[str], Path]) -> None:
    page.goto("/")
    expect(page).to_have_url(re.compile(r"/login"))
    log_in(page)
    expect(page).to_have_url(re.compile(r"/overview$"))
    expect(page.get_by_role("heading", name="Overview", exact=True)).to_be_visible()
    nav = page.get_by_role("navigation", name="Sections")
    expect(nav.get_by_role("link", name="Overview")).to_have_attribute("aria-current", "page")
    expect(page.get_by_role("button", name="Log out")).to_be_visible()
    shot("dashboard-overview")


def test_a_wrong_password_is_refused_on_the_form(page: Page, shot: Callable[[str], Path]) -> None:
    page.goto("/login")
    log_in(page, "not-the-password")
    expect(page.get_by_role("alert")).to_be_visible()
    expect(page.get_by_role("button", name="Log out")).to_have_count(0)
    shot("dashboard-login-refused")
    page.goto("/overview")
    expect(page).to_have_url(re.compile(r"/login\?next=(%2F|/)overview$"))


def test_logout_closes_the_pages_again(page: Page) -> None:
    page.goto("/login")
    log_in(page)
    expect(page).to_have_url(re.compile(r"/overview$"))
    page.get_by_role("button", name="Log out").click()
    expect(page).to_have_url(re.compile(r"/login$"))
    page.goto("/overview")
    expect(page).to_have_url(re.compile(r"/login\?next=(%2F|/)overview$"))
