"""Where things are, and the environment the runtime gives itself and its subprocesses.

Inside the container the paths are fixed by the image and the host's mounts; outside it
(development, tests) the environment overrides them:

    MERCURY_SPACE_DIR      the space dir (default /space)
    MERCURY_RESOURCES_DIR  profiles and built-in skills (default /opt/mercury/resources)
"""

from __future__ import annotations

import os
import tempfile
from collections.abc import Mapping, MutableMapping
from pathlib import Path

SPACE_MOUNT = "/space"
SPACE_DIR_ENV = "MERCURY_SPACE_DIR"
RESOURCES_DIR_ENV = "MERCURY_RESOURCES_DIR"
DEFAULT_RESOURCES_DIR = Path("/opt/mercury/resources")
OUTBOX = "outbox"
INBOX = "inbox"

# Set by the runtime once the relay listens; every SDK and agent CLI reads these.
ANTHROPIC_BASE_URL = "ANTHROPIC_BASE_URL"
OPENAI_BASE_URL = "OPENAI_BASE_URL"
ANTHROPIC_API_KEY = "ANTHROPIC_API_KEY"
OPENAI_API_KEY = "OPENAI_API_KEY"
MERCURY_API_URL = "MERCURY_API_URL"
MERCURY_API_TOKEN = "MERCURY_API_TOKEN"
# Would make the Anthropic SDK / Claude Code send a second, different credential
# (Authorization: Bearer), which the host refuses as ambiguous.
_CONFLICTING = ("ANTHROPIC_AUTH_TOKEN",)
_LOOPBACK = ("127.0.0.1", "localhost")


def space_dir(env: Mapping[str, str]) -> Path:
    """The space dir: $MERCURY_SPACE_DIR, else /space."""
    return Path(env.get(SPACE_DIR_ENV) or SPACE_MOUNT)


def resources_dir(env: Mapping[str, str]) -> Path:
    """Profiles and built-in skills: $MERCURY_RESOURCES_DIR, else /opt/mercury/resources."""
    return Path(env.get(RESOURCES_DIR_ENV) or DEFAULT_RESOURCES_DIR)


def relay_env(relay_url: str, token: str) -> dict[str, str]:
    """The variables that point SDKs and agent CLIs at the relay, with the run token as key.

    The host swaps the token for the real provider key, so no secret is ever here.
    """
    base = relay_url.rstrip("/")
    return {
        # Anthropic's SDK appends /v1/messages; OpenAI-compatible bases include /v1.
        ANTHROPIC_BASE_URL: f"{base}/model/anthropic",
        OPENAI_BASE_URL: f"{base}/model/openai/v1",
        ANTHROPIC_API_KEY: token,
        OPENAI_API_KEY: token,
        # For skills and tools that call the host API's own endpoints.
        MERCURY_API_URL: base,
        MERCURY_API_TOKEN: token,
    }


def apply_env(target: MutableMapping[str, str], values: Mapping[str, str]) -> None:
    """Set `values` in `target` (usually os.environ), drop conflicting credentials, and
    keep the relay off any HTTP proxy (an SDK or CLI honouring HTTP_PROXY would otherwise
    send loopback requests to the proxy), unless `values` says what stays direct."""
    for name in _CONFLICTING:
        target.pop(name, None)
    target.update(values)
    for name in ("NO_PROXY", "no_proxy"):
        if name in values:
            continue  # decided by the caller (egress: only the API relay stays direct)
        entries = [e.strip() for e in target.get(name, "").split(",") if e.strip()]
        entries += [h for h in _LOOPBACK if h not in entries]
        target[name] = ",".join(entries)


def writable_home(env: Mapping[str, str]) -> str:
    """A HOME that tools can write to: the container's root fs is read-only, and CLIs
    (git, pip, Claude Code) keep config and caches under ~."""
    home = env.get("HOME")
    if home and os.path.isdir(home) and os.access(home, os.W_OK | os.X_OK):
        return home
    fallback = Path(tempfile.gettempdir()) / "home"
    fallback.mkdir(mode=0o700, exist_ok=True)
    return str(fallback)


def subprocess_env(
    base: Mapping[str, str], extra: Mapping[str, str] | None = None
) -> dict[str, str]:
    """The environment of a tool or agent CLI process: `base` + `extra`, a writable HOME."""
    env = dict(base)
    apply_env(env, extra or {})
    env["HOME"] = writable_home(env)
    return env
