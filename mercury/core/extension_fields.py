"""The narrow grammars of extension.yaml's values (core/extension_spec.py puts them together).

Each check returns the value in its one normal form or raises the given error naming the
dotted field. They are deliberately strict: package specifiers reach a Dockerfile, host
patterns the egress proxy, URLs and header templates the host's HTTP client, env values a
container. A value that might be a secret (a header value) is never quoted back.
"""

from __future__ import annotations

import ipaddress
import json
import re
from collections.abc import Mapping
from pathlib import PurePosixPath
from urllib.parse import urlsplit

from packaging.requirements import InvalidRequirement, Requirement


class FieldError(ValueError):
    """A wrong value, naming its dotted `field`; its text is one line."""

    prefix = ""

    def __init__(self, field: str, message: str) -> None:
        self.field = field
        self.message = message
        where = f"{field}: " if field else ""
        super().__init__(f"{self.prefix}{where}{message}")


class ManifestError(FieldError):
    """A wrong extension.yaml: `extension.yaml: install.pip[1]: "..." is not ..."`."""

    prefix = "extension.yaml: "


class SettingsError(FieldError):
    """A wrong operator setting: `extensions.settings.<name>.<key>: ...`."""


_MAX_QUOTE = 60


def quoted(value: object) -> str:
    """A value as one short line: JSON-quoted (newlines escaped), cut at 60 characters."""
    text = json.dumps(value, ensure_ascii=True, default=repr)
    return text if len(text) <= _MAX_QUOTE else text[: _MAX_QUOTE - 4] + '..."'


_CONTROL = re.compile(r"[\x00-\x1f\x7f]")


def check_text(value: object, where: str, limit: int) -> str:
    """One line of text (no control characters), at most `limit` characters."""
    if not isinstance(value, str):
        raise ManifestError(where, f"expected text, got {quoted(value)}")
    if _CONTROL.search(value):
        raise ManifestError(where, "must be one line of text (no control characters)")
    if len(value) > limit:
        raise ManifestError(where, f"at most {limit} characters, got {len(value)}")
    return value.strip()


# --------------------------------------------------------------------------- install steps

_PIP_CHARS = re.compile(r"[A-Za-z0-9][A-Za-z0-9._\-\[\],<>=!~*+]*")
_APT = re.compile(r"[a-z0-9][a-z0-9+.-]{0,62}(=[A-Za-z0-9.+:~-]{1,64})?")
_NPM = re.compile(
    r"(@[a-z0-9][a-z0-9._~-]{0,99}/)?[a-z0-9][a-z0-9._~-]{0,99}(@[A-Za-z0-9.^~<>=*-]{1,64})?"
)


def _step_text(value: object, where: str) -> str:
    if not isinstance(value, str):
        raise ManifestError(where, f"expected text, got {quoted(value)}")
    if value.startswith("-"):
        raise ManifestError(where, f"{quoted(value)} is an option, not a package")
    return value


def check_pip(value: object, where: str) -> str:
    """A PEP 508 requirement without URL, environment marker, option or whitespace:
    `name`, `name[extra]>=1.0,<2`."""
    text = _step_text(value, where)
    bad = ManifestError(where, f"{quoted(text)} is not a package specifier (name[extras]>=version)")
    if len(text) > 200 or not _PIP_CHARS.fullmatch(text):
        raise bad
    try:
        requirement = Requirement(text)
    except InvalidRequirement:
        raise bad from None
    if requirement.url or requirement.marker:
        raise bad
    return text


def check_apt(value: object, where: str) -> str:
    """A Debian package name, optionally `=version`."""
    text = _step_text(value, where)
    if not _APT.fullmatch(text):
        raise ManifestError(
            where, f"{quoted(text)} is not a Debian package name (name or name=version)"
        )
    return text


def check_npm(value: object, where: str) -> str:
    """An npm package: optional @scope/, the name, optional @version (range)."""
    text = _step_text(value, where)
    if len(text) > 214 or not _NPM.fullmatch(text):
        raise ManifestError(
            where, f"{quoted(text)} is not an npm package (name, @scope/name, name@version)"
        )
    return text


# --------------------------------------------------------------------------- paths, hosts

_PATH_CHARS = re.compile(r"[A-Za-z0-9._/-]{1,200}")


def check_relpath(value: object, where: str) -> str:
    """A path inside the extension folder: relative, no "..", in plain characters."""
    if not isinstance(value, str):
        raise ManifestError(where, f"expected a relative path, got {quoted(value)}")
    if value.startswith("/"):
        raise ManifestError(where, f"{quoted(value)} must be relative to the extension folder")
    if not _PATH_CHARS.fullmatch(value):
        raise ManifestError(where, f"{quoted(value)} is not a path (letters, digits, . _ - /)")
    parts = PurePosixPath(value).parts
    if ".." in parts:
        raise ManifestError(where, f'{quoted(value)} must not leave the extension folder ("..")')
    return "/".join(parts) or "."


_LABEL = re.compile(r"[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?")
_HOST_PATTERN_HELP = (
    '("*", "example.com", "*.example.com" or an IPv4 address, optional ":port" or ":*")'
)


ANY_PORT = 0  # ":*" in a host pattern: every port


def split_host_pattern(pattern: str) -> tuple[str, int | None]:
    """("host", port or None) of a host pattern; ANY_PORT for ":*", -1 when it is not a
    port number."""
    host, sep, port = pattern.rpartition(":")
    if not sep:
        return pattern, None
    if port == "*":
        return host, ANY_PORT
    number = int(port) if port.isdigit() and len(port) <= 5 else -1
    return host, number if 1 <= number <= 65535 else -1


def _hostname_ok(host: str) -> bool:
    if not host or len(host) > 253:
        return False
    labels = host.split(".")
    if not all(_LABEL.fullmatch(label) for label in labels):
        return False
    if all(label.isdigit() for label in labels):  # numbers only: an IPv4 address or nothing
        try:
            ipaddress.IPv4Address(host)
        except ValueError:
            return False
    return True


def check_host_pattern(value: object, where: str) -> str:
    """A network pattern, lowercased: "*", "host", "*.host", each with optional ":port"."""
    if not isinstance(value, str):
        raise ManifestError(where, f"expected a host pattern, got {quoted(value)}")
    pattern = value.strip().lower()
    host, port = split_host_pattern(pattern)
    if port == -1 and pattern.rpartition(":")[2].isdigit():
        raise ManifestError(where, f"{quoted(value)}: the port must be a number 1-65535")
    name = host[2:] if host.startswith("*.") else host
    ok = port != -1 and (host == "*" or _hostname_ok(name))
    if ok and host.startswith("*.") and all(label.isdigit() for label in name.split(".")):
        ok = False  # "*.1.2.3.4" names nothing
    if not ok:
        raise ManifestError(where, f"{quoted(value)} is not a host pattern {_HOST_PATTERN_HELP}")
    return pattern


# --------------------------------------------------------------------------- URLs, headers, env

_NO_SPACE = re.compile(r"[^\s\x00-\x1f\x7f]+")


def check_url(value: object, where: str, *, query: bool = False) -> str:
    """An http(s) URL with a host, no user-info, no fragment (and no query unless allowed);
    returned as written."""
    if not isinstance(value, str):
        raise ManifestError(where, f"expected an http(s) URL, got {quoted(value)}")
    if len(value) > 2000 or not _NO_SPACE.fullmatch(value):
        raise ManifestError(where, f"{quoted(value)} is not a URL (no spaces, up to 2000)")
    parts = urlsplit(value)
    if parts.scheme not in ("http", "https"):
        raise ManifestError(where, f"{quoted(value)} must start with http:// or https://")
    try:
        parts.port  # noqa: B018 - raises ValueError for a bad port
    except ValueError:
        raise ManifestError(where, f"{quoted(value)} has a bad port") from None
    if "@" in parts.netloc:
        raise ManifestError(where, "must not carry a user or password (put it in headers)")
    host = parts.hostname or ""
    if not (_hostname_ok(host) or (host and ":" in host and _ipv6(host))):
        raise ManifestError(where, f"{quoted(value)} has no valid host")
    if parts.query and not query:
        raise ManifestError(where, f"{quoted(value)} must not have a query (?...)")
    if parts.fragment or value.endswith("#"):
        raise ManifestError(where, f"{quoted(value)} must not have a fragment (#...)")
    return value


def _ipv6(host: str) -> bool:
    try:
        ipaddress.IPv6Address(host)
    except ValueError:
        return False
    return True


_TOKEN = re.compile(r"[!#$%&'*+.^_`|~0-9A-Za-z-]{1,64}")
_TEMPLATE = re.compile(r"\$\{([A-Za-z0-9_]*)\}?")
_VAR = re.compile(r"[A-Z_][A-Z0-9_]*")
# Set by the host or its proxy: an extension must not choose them.
_RESERVED_HEADERS = frozenset(
    {
        "host",
        "content-length",
        "transfer-encoding",
        "connection",
        "keep-alive",
        "upgrade",
        "te",
        "trailer",
        "proxy-authorization",
        "proxy-connection",
        "x-mercury-run-token",
    }
)


def check_headers(value: object, where: str) -> dict[str, str]:
    """Header templates: token names; one-line values whose ${VAR} are upper-case names
    of the host's environment, never one of Mercury's own (MERCURY_*)."""
    if not isinstance(value, Mapping):
        raise ManifestError(where, f"expected a mapping of headers, got {quoted(value)}")
    if len(value) > 20:
        raise ManifestError(where, f"at most 20 headers, got {len(value)}")
    headers: dict[str, str] = {}
    for name, text in value.items():
        if not isinstance(name, str) or not _TOKEN.fullmatch(name):
            raise ManifestError(where, f"{quoted(name)} is not a header name")
        if name.lower() in _RESERVED_HEADERS:
            raise ManifestError(f"{where}.{name}", "is set by Mercury, not by an extension")
        field = f"{where}.{name}"
        if not isinstance(text, str):
            raise ManifestError(field, "expected text")
        if _CONTROL.search(text) or len(text) > 4096:
            raise ManifestError(field, "must be one line of text (up to 4096 characters)")
        for match in _TEMPLATE.finditer(text):
            var = match.group(1)
            if not match.group(0).endswith("}") or not _VAR.fullmatch(var):
                raise ManifestError(
                    field, "${...} must name an environment variable like ${GITHUB_TOKEN}"
                )
            if var.startswith("MERCURY_"):
                raise ManifestError(field, f"${{{var}}}: Mercury's own variables are not shared")
        headers[name] = text
    return headers


_ENV_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]{0,63}")


def check_env(value: object, where: str) -> dict[str, str]:
    """Environment for a stdio MCP server: variable names, text values."""
    if not isinstance(value, Mapping):
        raise ManifestError(where, f"expected a mapping of variables, got {quoted(value)}")
    if len(value) > 50:
        raise ManifestError(where, f"at most 50 variables, got {len(value)}")
    env: dict[str, str] = {}
    for name, text in value.items():
        if not isinstance(name, str) or not _ENV_NAME.fullmatch(name):
            raise ManifestError(where, f"{quoted(name)} is not an environment variable name")
        if not isinstance(text, str):
            raise ManifestError(f"{where}.{name}", f"expected text (quote it), got {quoted(text)}")
        if "\x00" in text or len(text) > 4096:
            raise ManifestError(f"{where}.{name}", "must be text up to 4096 characters")
        env[name] = text
    return env


def check_command(value: object, where: str) -> tuple[str, ...]:
    """A stdio server's argv: a non-empty list of text (run without a shell)."""
    if not isinstance(value, list) or not value:
        raise ManifestError(where, "expected a non-empty list like [python, server.py]")
    if len(value) > 20:
        raise ManifestError(where, f"at most 20 arguments, got {len(value)}")
    for i, arg in enumerate(value):
        if not isinstance(arg, str) or not arg or _CONTROL.search(arg) or len(arg) > 500:
            raise ManifestError(f"{where}[{i}]", f"expected one line of text, got {quoted(arg)}")
    return tuple(value)


# --------------------------------------------------------------------------- settings


def check_setting_value(kind: str, value: object, where: str, error: type[FieldError]) -> object:
    """A setting's value of its declared type (a float setting takes a whole number too; a
    list holds text, numbers or booleans), as it will be used."""
    if kind == "bool":
        if isinstance(value, bool):
            return value
    elif kind == "int":
        if isinstance(value, int) and not isinstance(value, bool):
            return value
    elif kind == "float":
        if isinstance(value, int | float) and not isinstance(value, bool):
            return float(value)
    elif kind == "str":
        if isinstance(value, str) and "\x00" not in value and len(value) <= 4096:
            return value
    elif kind == "list" and isinstance(value, list):
        scalars = all(isinstance(item, str | int | float | bool) for item in value)
        if scalars and len(json.dumps(value)) <= 4096:
            return list(value)
    names = {"bool": "true or false", "int": "a whole number", "float": "a number"}
    names |= {"str": "text (up to 4096 characters)", "list": "a list of text or numbers"}
    raise error(where, f"expected {names.get(kind, kind)}, got {quoted(value)}")
