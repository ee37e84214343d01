"""The environment a run's granted extensions give the processes the agent starts.

For each extension input.json lists (only the granted ones are in the container at all):

- its settings, as the host wrote them (MERCURY_EXT_<NAME>_<KEY>);
- one URL per credentialed service, MERCURY_SERVICE_<EXT>_<SERVICE>_URL = the relay +
  the service's path: the host adds the credentials, so no secret is ever here;
- PATH with its commands first: the folder's bin/ (its own scripts), then its venv's bin/
  (console scripts of its pip packages) and the venv's node/bin/ (npm packages).

The agent's own venv (/opt/mercury-agent/bin in the image) stays on PATH, after the
extensions, so mercury-ctl keeps working whatever an extension installs.
"""

from __future__ import annotations

import os
import re
import sys
from collections.abc import Iterable, Sequence
from pathlib import Path

from mercury_agent.contract import ExtensionInput

SERVICE_ENV_PREFIX = "MERCURY_SERVICE_"


def env_word(text: str) -> str:
    """`text` as a part of an environment variable name: upper snake case, each other
    character an underscore (as the host names settings: web-reader -> WEB_READER)."""
    return re.sub(r"[^A-Za-z0-9]", "_", text).upper()


def service_env_name(extension: str, service: str) -> str:
    """MERCURY_SERVICE_<EXT>_<SERVICE>_URL, e.g. web-reader/github -> ..._WEB_READER_GITHUB_URL."""
    return f"{SERVICE_ENV_PREFIX}{env_word(extension)}_{env_word(service)}_URL"


def bin_dirs(ext: ExtensionInput) -> list[str]:
    """Where an extension's commands are, most specific first."""
    dirs = [f"{ext.dir.rstrip('/')}/bin"]
    if ext.venv:
        venv = ext.venv.rstrip("/")
        dirs += [f"{venv}/bin", f"{venv}/node/bin"]
    return dirs


def prepend_path(first: Iterable[str], path: str) -> str:
    """`first` then the entries of `path`, each once, in that order."""
    entries: list[str] = []
    for entry in [*first, *path.split(os.pathsep)]:
        if entry and entry not in entries:
            entries.append(entry)
    return os.pathsep.join(entries)


def agent_bin_dir() -> str:
    """The agent's own venv bin (where mercury-ctl is): /opt/mercury-agent/bin in the image."""
    return str(Path(sys.executable).parent)


def extension_env(
    extensions: Sequence[ExtensionInput], relay_url: str, path: str | None = None
) -> dict[str, str]:
    """The variables the granted `extensions` add to every process the agent starts.

    `path` is the PATH to extend (default: this process's). Empty when no extension is
    granted, so a run without extensions keeps its environment exactly.
    """
    if not extensions:
        return {}
    base = relay_url.rstrip("/")
    values: dict[str, str] = {}
    for ext in extensions:
        values.update(ext.env)
        for service, route in ext.services.items():
            values[service_env_name(ext.name, service)] = base + route
    dirs = [d for ext in extensions for d in bin_dirs(ext)]
    current = os.environ.get("PATH", os.defpath) if path is None else path
    values["PATH"] = prepend_path([*dirs], current)
    agent_bin = agent_bin_dir()
    if agent_bin not in values["PATH"].split(os.pathsep):
        values["PATH"] += os.pathsep + agent_bin
    return values
