"""Which chat platforms exist and where each one's package is: the one list the App
builds adapters from and `mercury doctor` takes token and credential checks from.

Each package exports `from_config(config, secrets)`, `check_credentials(config,
secrets)`, `required_secrets(section)` and `SETUP_DOC` (see mercury/adapters/base.py).
Packages are imported only when their platform is enabled, so a disabled platform's
library (slack_sdk, discord.py, ...) is never loaded.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from importlib import import_module
from types import ModuleType

from mercury.adapters.base import Adapter
from mercury.checks import CheckResult
from mercury.config import Config, Secrets
from mercury.http.auth import WebAuth

# Platform name (the `adapters.<name>` config section) -> its package. The order is the
# order adapters start in and doctor rows are printed in.
PLATFORMS: dict[str, str] = {
    "web": "mercury.adapters.web",
    "slack": "mercury.adapters.slack",
    "discord": "mercury.adapters.discord",
    "telegram": "mercury.adapters.telegram",
}

CredentialCheck = Callable[..., Awaitable[list[CheckResult]]]

# Platforms whose pages sit behind the operator's login: their `from_config` takes the
# App's one WebAuth (`auth=`), so a login at the dashboard works there too.
SHARES_LOGIN = frozenset({"web"})


def enabled_platforms(config: Config) -> list[str]:
    """The platforms whose `adapters.<name>.enabled` is true, in PLATFORMS order."""
    return [name for name in PLATFORMS if getattr(config.adapters, name).enabled]


def _package(name: str) -> ModuleType:
    return import_module(PLATFORMS[name])


def build_adapters(
    config: Config, secrets: Secrets, *, auth: WebAuth | None = None
) -> dict[str, Adapter]:
    """An adapter per enabled platform; ValueError (one line naming the missing setting
    or variable) when one cannot be built. `auth`, the shared login layer, goes to the
    platforms in SHARES_LOGIN."""
    adapters: dict[str, Adapter] = {}
    for name in enabled_platforms(config):
        package = _package(name)
        if name in SHARES_LOGIN and auth is not None:
            adapters[name] = package.from_config(config, secrets, auth=auth)
        else:
            adapters[name] = package.from_config(config, secrets)
    return adapters


def credential_checks(config: Config) -> list[tuple[str, CredentialCheck]]:
    """(platform, its `check_credentials`) for each enabled platform."""
    return [(name, _package(name).check_credentials) for name in enabled_platforms(config)]


@dataclass(frozen=True)
class SecretNeed:
    """What an enabled platform needs from the environment, for doctor's token rows."""

    platform: str
    names: tuple[str, ...]  # Secrets field names
    setup_doc: str
    mode: str | None  # the section's mode (socket/http, polling/webhook), when it has one


def secret_needs(config: Config) -> list[SecretNeed]:
    """Each enabled platform's `required_secrets`, in PLATFORMS order."""
    needs: list[SecretNeed] = []
    for name in enabled_platforms(config):
        section = getattr(config.adapters, name)
        package = _package(name)
        needs.append(
            SecretNeed(
                name,
                tuple(package.required_secrets(section)),
                package.SETUP_DOC,
                getattr(section, "mode", None),
            )
        )
    return needs
