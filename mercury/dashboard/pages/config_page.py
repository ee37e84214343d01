"""The Config page: the configuration the server runs with, masked, with where each value
came from.

Why a pure `config_rows`: which values are shown, how each is masked and how its source is
told apart are decisions worth testing without a server. Sources, lowest to highest, are
those of mercury.config.load: built-in default < the YAML file < a MERCURY_* variable
(< a command-line flag). `LoadedConfig.sources` names the variable behind each key set
from the environment; a key that differs from the built-in default and was not set from
the environment came from the file (or, with no file, from a command-line flag). A value
the file sets to exactly the default reads as "default" — which is what it is.

Secrets never reach this page: they live in `loaded.secrets`, of which only the
variable names and whether each is set are shown. Non-secret settings can still carry a
credential (a password in database_url or a base_url, a token in an extension's
settings or a container env var), so every value is masked by key name, by credential
shape and against the configured secret values before it is shown.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from aiohttp import web

from mercury.config import SECRET_ENV, LoadedConfig, defaults
from mercury.dashboard.deps import deps
from mercury.dashboard.render import page, render
from mercury.logging import is_secret_key, scrub_text, secret_forms, secret_values_of

__all__ = [
    "MASK",
    "ConfigRow",
    "SecretRow",
    "Source",
    "config_rows",
    "flatten",
    "mask_value",
    "routes",
    "secret_rows",
]

routes = web.RouteTableDef()

MASK = "•••••• (hidden)"
Source = Literal["default", "file", "environment", "command line"]
_INDEX = re.compile(r"\[\d+\]")
# Path-valued settings that load.py makes absolute relative to the config file.
_RELATIVE_PATHS = ("data_dir", "extensions.dir")


@dataclass(frozen=True, slots=True)
class ConfigRow:
    key: str  # dotted path: "server.port", "model.chain[0].model"
    value: str  # as shown: JSON-ish text, masked where needed
    source: Source
    env_var: str | None  # the MERCURY_* variable that set it, for source "environment"
    masked: bool


@dataclass(frozen=True, slots=True)
class SecretRow:
    name: str  # "dashboard_password"
    env_var: str  # "MERCURY_DASHBOARD_PASSWORD"
    is_set: bool


def flatten(value: Any, prefix: str = "") -> Iterator[tuple[str, Any]]:
    """Leaves of a JSON-like value as (dotted path, leaf); lists of mappings by index.

    An empty mapping or list is a leaf of its own, so an empty setting still has a row.
    """
    if isinstance(value, Mapping) and value:
        for k, v in value.items():
            yield from flatten(v, f"{prefix}.{k}" if prefix else str(k))
    elif isinstance(value, list) and value and any(isinstance(v, Mapping) for v in value):
        for i, v in enumerate(value):
            yield from flatten(v, f"{prefix}[{i}]")
    else:
        yield prefix, value


def _text(value: Any) -> str:
    if isinstance(value, str):
        return value
    return json.dumps(value, ensure_ascii=False)


def _env_source(key: str, sources: Mapping[str, str]) -> str | None:
    """The variable that set `key` or a section above it ("model.chain" sets its legs)."""
    parts = _INDEX.sub("", key).split(".")
    for n in range(len(parts), 0, -1):
        var = sources.get(".".join(parts[:n]))
        if var:
            return var
    return None


def mask_value(key: str, text: str, secrets: list[str]) -> tuple[str, bool]:
    """`text` as shown for `key`: hidden when the key names a secret, else with credential
    shapes (URL passwords, tokens) and configured secret values cut out."""
    last = _INDEX.sub("", key).rsplit(".", 1)[-1]
    if is_secret_key(last) and text not in ("", "null", "{}", "[]"):
        return MASK, True
    shown = scrub_text(text)
    for secret in secrets:
        for form in sorted(secret_forms(secret), key=len, reverse=True):
            shown = shown.replace(form, "[REDACTED]")
    return shown, shown != text


def _defaults(loaded: LoadedConfig) -> dict[str, Any]:
    """The built-in defaults, with relative paths resolved as load.py resolves them."""
    base_dir = loaded.path.parent if loaded.path else Path.cwd()
    d = defaults()
    d.data_dir = (base_dir / d.data_dir).resolve()
    d.extensions.dir = (base_dir / d.extensions.dir).resolve()
    return dict(flatten(d.model_dump(mode="json")))


def config_rows(loaded: LoadedConfig) -> list[ConfigRow]:
    """Every setting of the running configuration as a row, in the config's own order."""
    default = _defaults(loaded)
    secrets = secret_values_of(loaded)
    rows = []
    for key, value in flatten(loaded.config.model_dump(mode="json")):
        env_var = _env_source(key, loaded.sources)
        source: Source
        if env_var is not None:
            source = "environment"
        elif key in default and default[key] == value:
            source = "default"
        else:
            source = "file" if loaded.path is not None else "command line"
        shown, masked = mask_value(key, _text(value), secrets)
        rows.append(ConfigRow(key, shown, source, env_var, masked))
    return rows


def secret_rows(loaded: LoadedConfig) -> list[SecretRow]:
    """Each secret's variable and whether it is set — never its value."""
    present = loaded.secrets.present()
    return [SecretRow(name, var, name in present) for name, var in SECRET_ENV.items()]


@routes.get("/config")
@page
async def config_page(request: web.Request) -> web.Response:
    loaded = deps(request).loaded
    rows = config_rows(loaded)
    sections: dict[str, list[ConfigRow]] = {}
    for row in rows:
        section = row.key.split(".", 1)[0] if "." in row.key else "general"
        sections.setdefault(_INDEX.sub("", section), []).append(row)
    counts = {
        "set": sum(1 for r in rows if r.source in ("file", "command line")),
        "environment": sum(1 for r in rows if r.source == "environment"),
    }
    return render(
        request,
        "config.html",
        sections=sections,
        secrets=secret_rows(loaded),
        path=str(loaded.path) if loaded.path else None,
        counts=counts,
    )
