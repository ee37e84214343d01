"""The built-in web chat (platform "web"), served on Mercury's main HTTP server.

Built like every platform package (see mercury.adapters.base): `from_config` builds the
adapter, `check_credentials` is its part of `mercury doctor`. The adapter itself is in
`adapter`, its in-memory message log in `spacelog`, its file store in `files`, and the
chat page's assets in `static/` (package data). Login is mercury.http.auth, shared with
the dashboard.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from mercury.adapters.web.adapter import WebChatAdapter
    from mercury.checks import CheckResult
    from mercury.config import Config, Secrets, WebChatConfig
    from mercury.http.auth import WebAuth

__all__ = ["SETUP_DOC", "check_credentials", "from_config", "required_secrets"]

SETUP_DOC = "docs/web-chat.md"


def required_secrets(section: WebChatConfig) -> tuple[str, ...]:
    """The operator password (the dashboard's login); without it the chat stays locked."""
    return ("dashboard_password",)


def from_config(config: Config, secrets: Secrets, *, auth: WebAuth | None = None) -> WebChatAdapter:
    """The web chat as configured: the dashboard's login, `adapters.web`, `server`.

    `auth` is the App's one login layer, shared with the dashboard (sessions in the
    database); without it the chat builds its own from the same settings. Never refuses:
    without MERCURY_DASHBOARD_PASSWORD the chat starts locked (every request answers 503
    saying what to set), and `mercury doctor` reports it.
    """
    from mercury.adapters.web.adapter import WebChatAdapter

    password = secrets.dashboard_password
    return WebChatAdapter(
        username=config.dashboard.username,
        password=password.get_secret_value() if password else None,
        max_upload=config.adapters.web.max_upload,
        upload_dir=config.data_dir / "webchat",
        session_ttl=config.dashboard.session_ttl,
        public_url=config.server.public_url,
        trusted_proxies=config.server.trusted_proxies,
        auth=auth,
    )


async def check_credentials(config: Config, secrets: Secrets, **_: Any) -> list[CheckResult]:
    """Nothing to check live: the web chat talks to no platform.

    Its one credential, the dashboard password, is already checked (present or missing)
    by doctor's `check_adapters` for the web chat and the dashboard together.
    """
    return []
