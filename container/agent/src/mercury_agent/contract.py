"""The host <-> agent contract: validating input.json and shaping result.json.

Validation is strict about the types of the fields it knows and lenient about fields it
does not: the host may be newer than the image, and an extra key must not fail a run.
Every error names the offending field by its path (e.g. `messages[2].text`).
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

# error_class values in a failed result.json; the host maps them to user-facing notices.
BAD_INPUT = "bad_input"  # input.json unusable (exit 2)
INTERNAL = "internal"  # a bug or an unexpected environment problem in the runtime
AUTH = "auth"  # the provider (or the host API) refused the credentials: no retry helps
BUDGET = "budget"  # model.budget_s ran out
MODEL = "model"  # every leg of the model chain failed
MAX_TURNS = "max_turns"  # the model was still calling tools after model.max_turns turns
AGENT_CLI = "agent_cli"  # the agent CLI (agent.command) failed or reported an error
SPENDING_CAP = "spending_cap"  # the host refused a model call: a spending cap is reached
# The error type of the host model proxy's 402 for a reached spending cap.
SPENDING_CAP_ERROR = "spending_cap_reached"

PROVIDERS = ("anthropic", "openai")
DEFAULT_MAX_TURNS = 40
DEFAULT_MAX_TOKENS = 8192
DEFAULT_BASH_TIMEOUT_S = 120.0
# How much of the space's MEMORY.md the system prompt holds when the host does not say.
DEFAULT_MEMORY_MAX_CHARS = 8000

# Extensions granted to the run (input.json `extensions`): the host writes them, but a
# bound on each list keeps a broken host from making the runtime start thousands of things.
MAX_EXTENSIONS = 64
MAX_EXTENSION_ENV = 256  # settings variables of one extension (or of one MCP server)
MAX_ENV_VALUE_CHARS = 32_768
MAX_SERVICES = 64
MAX_MCP_SERVERS = 32  # per extension
MAX_ARGV = 64
MAX_ARG_CHARS = 4096
MAX_PATH_CHARS = 1024
MAX_NAME_CHARS = 64
# Like extension.yaml's rule (mercury/core/extension_spec.py): it ends up in env names.
_EXTENSION_NAME = re.compile(r"^[a-z][a-z0-9-]{1,31}$")
_ENV_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_]{0,127}$")


class InputError(Exception):
    """input.json is unusable. `field` is the path of the offending field, if any."""

    def __init__(self, message: str, field: str | None = None) -> None:
        self.field = field
        super().__init__(f"{field}: {message}" if field else message)


class AgentError(Exception):
    """The run failed for a reason result.json reports: `error_class` says which kind.

    `usage` is what was spent before the failure, when known.
    """

    def __init__(self, message: str, error_class: str, usage: Usage | None = None) -> None:
        super().__init__(message)
        self.error_class = error_class
        self.usage = usage
        # The tool calls made before the failure (result.json `tools`), when known.
        self.tools: list[dict[str, Any]] | None = None


@dataclass(frozen=True)
class HistoryMessage:
    id: str
    author_id: str
    author_name: str
    text: str
    ts: str | float | None = None
    is_bot: bool = False
    attachments: list[str] = field(default_factory=list)


@dataclass(frozen=True)
class Caller:
    id: str
    name: str = ""
    role: str = "member"


@dataclass(frozen=True)
class LegSpec:
    """One leg of the model chain: provider and model only.

    Where a leg's calls go (its base_url) is the host's business: the agent always talks
    to the relay, and the host no longer puts a base_url in input.json (an older host's one
    is ignored like any unknown key).
    """

    provider: str  # "anthropic" | "openai"
    model: str


@dataclass(frozen=True)
class ModelSpec:
    chain: list[LegSpec] = field(default_factory=list)
    retries_per_leg: int = 0
    budget_s: float | None = None
    max_turns: int = DEFAULT_MAX_TURNS
    max_tokens: int = DEFAULT_MAX_TOKENS


@dataclass(frozen=True)
class AgentSpec:
    """How the run is answered: the built-in loop, or an agent CLI (`command`)."""

    command: list[str] | None = None
    bash_timeout_s: float = DEFAULT_BASH_TIMEOUT_S
    # MEMORY.md in the system prompt up to this many characters; 0 = not at all.
    memory_max_chars: int = DEFAULT_MEMORY_MAX_CHARS


@dataclass(frozen=True)
class ApiSpec:
    socket: str
    token: str


@dataclass(frozen=True)
class McpServerInput:
    """One MCP server of a granted extension: a stdio `command` run in the container
    (cwd = the extension's folder), or a remote server at `url`, a path on the relay
    (the host forwards it and adds the credentials)."""

    name: str
    command: tuple[str, ...] | None = None
    env: dict[str, str] = field(default_factory=dict)
    url: str | None = None


@dataclass(frozen=True)
class ExtensionInput:
    """An extension this run is granted: its folder, venv, settings, services, MCP servers."""

    name: str
    dir: str  # its folder in the container (read-only)
    venv: str | None = None  # its own venv (pip/npm installs), None without install steps
    env: dict[str, str] = field(default_factory=dict)  # settings, MERCURY_EXT_<NAME>_<KEY>
    services: dict[str, str] = field(default_factory=dict)  # service name -> relay path
    mcp: tuple[McpServerInput, ...] = ()


@dataclass(frozen=True)
class AgentInput:
    """A validated input.json."""

    run_id: str
    space_id: str
    prompt: str
    platform: str | None = None
    messages: list[HistoryMessage] = field(default_factory=list)
    caller: Caller | None = None
    attachments: list[str] = field(default_factory=list)
    preferences: dict[str, Any] = field(default_factory=dict)
    model: ModelSpec = field(default_factory=ModelSpec)
    profile: str | None = None
    skills: list[str] = field(default_factory=list)
    agent: AgentSpec = field(default_factory=AgentSpec)
    api: ApiSpec | None = None
    # Whether the run may reach the network through the host's egress proxy.
    egress: bool = False
    extensions: list[ExtensionInput] = field(default_factory=list)
    # What the agent remembers about the caller in this space: their own note only
    # (the host never puts another person's here); None when there is none.
    person_note: str | None = None

    @property
    def echo_mode(self) -> bool:
        """No model and no host API: the image's smoke test answers with an echo."""
        return self.api is None and not self.model.chain and self.agent.command is None


# --------------------------------------------------------------------------- helpers

_TYPE_NAMES = {
    str: "a string",
    bool: "true or false",
    int: "an integer",
    float: "a number",
    list: "a list",
    dict: "an object",
}


def _type_name(value: Any) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "a boolean"
    if isinstance(value, int | float):
        return "a number"
    if isinstance(value, str):
        return "a string"
    if isinstance(value, list):
        return "a list"
    if isinstance(value, dict):
        return "an object"
    return type(value).__name__


def _expect(value: Any, kind: type | tuple[type, ...], path: str) -> Any:
    kinds = kind if isinstance(kind, tuple) else (kind,)
    # bool is an int subclass in Python, but `true` is never a valid count or timestamp.
    ok = isinstance(value, kinds) and not (isinstance(value, bool) and bool not in kinds)
    if not ok:
        wanted = " or ".join(_TYPE_NAMES.get(k, k.__name__) for k in kinds)
        raise InputError(f"expected {wanted}, got {_type_name(value)}", path)
    return value


def _required_str(obj: Mapping[str, Any], key: str, path: str, *, empty_ok: bool = False) -> str:
    where = f"{path}.{key}" if path else key
    if key not in obj:
        raise InputError("required field is missing", where)
    value = _expect(obj[key], str, where)
    if not empty_ok and not value.strip():
        raise InputError("must not be empty", where)
    return value


def _optional(obj: Mapping[str, Any], key: str, kind: type | tuple[type, ...], path: str) -> Any:
    """The value if present and not null, type-checked; else None."""
    value = obj.get(key)
    if value is None:
        return None
    return _expect(value, kind, f"{path}.{key}" if path else key)


def _str_list(obj: Mapping[str, Any], key: str, path: str) -> list[str]:
    where = f"{path}.{key}" if path else key
    items = _optional(obj, key, list, path) or []
    return [_expect(item, str, f"{where}[{i}]") for i, item in enumerate(items)]


# --------------------------------------------------------------------------- parsing


def _message(raw: Any, path: str) -> HistoryMessage:
    obj = _expect(raw, dict, path)
    return HistoryMessage(
        id=str(_expect(obj.get("id", ""), (str, int), f"{path}.id")),
        author_id=str(_expect(obj.get("author_id", ""), (str, int), f"{path}.author_id")),
        author_name=_optional(obj, "author_name", str, path) or "",
        text=_required_str(obj, "text", path, empty_ok=True),
        ts=_optional(obj, "ts", (str, int, float), path),
        is_bot=bool(_optional(obj, "is_bot", bool, path)),
        attachments=_str_list(obj, "attachments", path),
    )


def _caller(raw: Any) -> Caller:
    obj = _expect(raw, dict, "caller")
    if "id" not in obj:
        raise InputError("required field is missing", "caller.id")
    return Caller(
        # Platform ids are strings, but some platforms (Telegram) have numeric ones.
        id=str(_expect(obj["id"], (str, int), "caller.id")),
        name=_optional(obj, "name", str, "caller") or "",
        role=_optional(obj, "role", str, "caller") or "member",
    )


def _leg(raw: Any, path: str) -> LegSpec:
    obj = _expect(raw, dict, path)
    provider = _required_str(obj, "provider", path)
    if provider not in PROVIDERS:
        raise InputError(
            f"must be one of {', '.join(PROVIDERS)}, got {provider!r}", f"{path}.provider"
        )
    return LegSpec(
        provider=provider,
        model=_required_str(obj, "model", path),
    )


def _positive_int(obj: Mapping[str, Any], key: str, path: str, default: int) -> int:
    value = _optional(obj, key, int, path)
    if value is None:
        return default
    if value < 1:
        raise InputError("must be >= 1", f"{path}.{key}")
    return int(value)


def _model(raw: Any) -> ModelSpec:
    obj = _expect(raw, dict, "model")
    chain = _optional(obj, "chain", list, "model") or []
    retries = _optional(obj, "retries_per_leg", int, "model") or 0
    if retries < 0:
        raise InputError("must be >= 0", "model.retries_per_leg")
    budget = _optional(obj, "budget_s", (int, float), "model")
    if budget is not None and budget <= 0:
        raise InputError("must be > 0", "model.budget_s")
    return ModelSpec(
        chain=[_leg(leg, f"model.chain[{i}]") for i, leg in enumerate(chain)],
        retries_per_leg=retries,
        budget_s=float(budget) if budget is not None else None,
        max_turns=_positive_int(obj, "max_turns", "model", DEFAULT_MAX_TURNS),
        max_tokens=_positive_int(obj, "max_tokens", "model", DEFAULT_MAX_TOKENS),
    )


def _agent(raw: Any) -> AgentSpec:
    obj = _expect(raw, dict, "agent")
    command: list[str] | None = None
    if obj.get("command") is not None:
        command = _str_list(obj, "command", "agent")
        if not command or not command[0].strip():
            raise InputError("must be null or a non-empty argv list", "agent.command")
    timeout = _optional(obj, "bash_timeout_s", (int, float), "agent")
    if timeout is not None and timeout <= 0:
        raise InputError("must be > 0", "agent.bash_timeout_s")
    memory = _optional(obj, "memory_max_chars", int, "agent")
    if memory is not None and memory < 0:
        raise InputError("must be >= 0", "agent.memory_max_chars")
    return AgentSpec(
        command=command,
        bash_timeout_s=float(timeout) if timeout is not None else DEFAULT_BASH_TIMEOUT_S,
        memory_max_chars=int(memory) if memory is not None else DEFAULT_MEMORY_MAX_CHARS,
    )


def _api(raw: Any) -> ApiSpec:
    obj = _expect(raw, dict, "api")
    return ApiSpec(
        socket=_required_str(obj, "socket", "api"),
        token=_required_str(obj, "token", "api"),
    )


def _bounded_list(obj: Mapping[str, Any], key: str, path: str, limit: int) -> list[Any]:
    where = f"{path}.{key}" if path else key
    items = _optional(obj, key, list, path) or []
    if len(items) > limit:
        raise InputError(f"at most {limit} entries, got {len(items)}", where)
    return list(items)


def _bounded_str(value: Any, path: str, limit: int, *, empty_ok: bool = False) -> str:
    text = _expect(value, str, path)
    if not empty_ok and not text.strip():
        raise InputError("must not be empty", path)
    if len(text) > limit:
        raise InputError(f"longer than {limit} characters", path)
    if "\0" in text:
        raise InputError("must not contain NUL characters", path)
    return text


def _relay_path(value: Any, path: str) -> str:
    text = _bounded_str(value, path, MAX_PATH_CHARS)
    if not text.startswith("/") or any(c.isspace() for c in text):
        raise InputError(f"must be a path on the host API starting with /, got {text!r}", path)
    return text


def _abs_path(value: Any, path: str) -> str:
    text = _bounded_str(value, path, MAX_PATH_CHARS)
    if not text.startswith("/"):
        raise InputError(f"must be an absolute path, got {text!r}", path)
    return text


def _env_map(obj: Mapping[str, Any], key: str, path: str) -> dict[str, str]:
    where = f"{path}.{key}"
    raw = _optional(obj, key, dict, path) or {}
    if len(raw) > MAX_EXTENSION_ENV:
        raise InputError(f"at most {MAX_EXTENSION_ENV} variables, got {len(raw)}", where)
    env: dict[str, str] = {}
    for name, value in raw.items():
        if not _ENV_NAME.match(name):
            raise InputError(f"{name!r} is not an environment variable name", where)
        env[name] = _bounded_str(value, f"{where}.{name}", MAX_ENV_VALUE_CHARS, empty_ok=True)
    return env


def _mcp_server(raw: Any, path: str) -> McpServerInput:
    obj = _expect(raw, dict, path)
    name = _bounded_str(_required_str(obj, "name", path), f"{path}.name", MAX_NAME_CHARS)
    command: tuple[str, ...] | None = None
    if obj.get("command") is not None:
        argv = _bounded_list(obj, "command", path, MAX_ARGV)
        if not argv:
            raise InputError("must be null or a non-empty argv list", f"{path}.command")
        command = tuple(
            _bounded_str(arg, f"{path}.command[{i}]", MAX_ARG_CHARS, empty_ok=i > 0)
            for i, arg in enumerate(argv)
        )
    url = _relay_path(obj["url"], f"{path}.url") if obj.get("url") is not None else None
    if (command is None) == (url is None):
        raise InputError("needs exactly one of command (stdio) and url (remote)", path)
    return McpServerInput(name=name, command=command, env=_env_map(obj, "env", path), url=url)


def _extension(raw: Any, path: str) -> ExtensionInput:
    obj = _expect(raw, dict, path)
    name = _required_str(obj, "name", path)
    if not _EXTENSION_NAME.match(name):
        raise InputError(
            f"{name!r} is not an extension name (a-z, 0-9 and -, 2 to 32)", f"{path}.name"
        )
    if "dir" not in obj:
        raise InputError("required field is missing", f"{path}.dir")
    venv = obj.get("venv")
    services_raw = _optional(obj, "services", dict, path) or {}
    if len(services_raw) > MAX_SERVICES:
        raise InputError(f"at most {MAX_SERVICES} services", f"{path}.services")
    services: dict[str, str] = {}
    for service, target in services_raw.items():
        where = f"{path}.services.{service}"
        _bounded_str(service, where, MAX_NAME_CHARS)
        services[service] = _relay_path(target, where)
    servers = [
        _mcp_server(s, f"{path}.mcp[{i}]")
        for i, s in enumerate(_bounded_list(obj, "mcp", path, MAX_MCP_SERVERS))
    ]
    names = [s.name for s in servers]
    if len(set(names)) != len(names):
        raise InputError("MCP server names must be unique", f"{path}.mcp")
    return ExtensionInput(
        name=name,
        dir=_abs_path(obj["dir"], f"{path}.dir"),
        venv=_abs_path(venv, f"{path}.venv") if venv is not None else None,
        env=_env_map(obj, "env", path),
        services=services,
        mcp=tuple(servers),
    )


def _extensions(obj: Mapping[str, Any]) -> list[ExtensionInput]:
    items = _bounded_list(obj, "extensions", "", MAX_EXTENSIONS)
    extensions = [_extension(e, f"extensions[{i}]") for i, e in enumerate(items)]
    names = [e.name for e in extensions]
    if len(set(names)) != len(names):
        raise InputError("extension names must be unique", "extensions")
    return extensions


def parse_input(data: Any) -> AgentInput:
    """Validate a decoded input.json; raises InputError naming the first bad field."""
    obj = _expect(data, dict, "input.json")
    messages = _optional(obj, "messages", list, "") or []
    caller = obj.get("caller")
    model = obj.get("model")
    agent = obj.get("agent")
    api = obj.get("api")
    inp = AgentInput(
        run_id=_required_str(obj, "run_id", ""),
        space_id=_required_str(obj, "space_id", ""),
        # An empty prompt is legal: a message may be only an attachment.
        prompt=_required_str(obj, "prompt", "", empty_ok=True),
        platform=_optional(obj, "platform", str, ""),
        messages=[_message(m, f"messages[{i}]") for i, m in enumerate(messages)],
        caller=_caller(caller) if caller is not None else None,
        attachments=_str_list(obj, "attachments", ""),
        preferences=dict(_optional(obj, "preferences", dict, "") or {}),
        model=_model(model) if model is not None else ModelSpec(),
        profile=_optional(obj, "profile", str, ""),
        skills=_str_list(obj, "skills", ""),
        agent=_agent(agent) if agent is not None else AgentSpec(),
        api=_api(api) if api is not None else None,
        egress=bool(_optional(obj, "egress", bool, "")),
        extensions=_extensions(obj),
        person_note=_optional(obj, "person_note", str, ""),
    )
    _check_consistent(inp)
    return inp


def _check_consistent(inp: AgentInput) -> None:
    """Cross-field rules: a model needs the host API, and the host API needs a model."""
    wants_model = bool(inp.model.chain) or inp.agent.command is not None
    if wants_model and inp.api is None:
        # Models are reached only through the host (it holds the keys).
        raise InputError("required when model.chain or agent.command is set", "api")
    if inp.api is not None and not wants_model:
        raise InputError("must list at least one model (or set agent.command)", "model.chain")


# --------------------------------------------------------------------------- results


@dataclass(frozen=True)
class Usage:
    input_tokens: int = 0
    output_tokens: int = 0
    model: str = ""
    cost_usd: float | None = None

    def to_dict(self) -> dict[str, Any]:
        data: dict[str, Any] = {
            "input_tokens": self.input_tokens,
            "output_tokens": self.output_tokens,
            "model": self.model,
        }
        if self.cost_usd is not None:
            data["cost_usd"] = self.cost_usd
        return data


def ok_result(
    reply: str,
    usage: Usage,
    files: list[str] | None = None,
    attempts: list[dict[str, Any]] | None = None,
    tools: list[dict[str, Any]] | None = None,
) -> dict[str, Any]:
    """A successful result.json payload; `files` are paths relative to /space (outbox/...).

    `attempts` (one entry per model call) is present whenever a model was involved; the
    echo mode has none, so its result keeps the original minimal shape. `tools` (one entry
    per tool call of the built-in loop: name, ok, ms, input, output) likewise.
    """
    result: dict[str, Any] = {
        "ok": True,
        "reply": reply,
        "usage": usage.to_dict(),
        "files": list(files or []),
    }
    if attempts is not None:
        result["attempts"] = list(attempts)
    if tools is not None:
        result["tools"] = list(tools)
    return result


def error_result(
    error: str,
    error_class: str,
    attempts: list[dict[str, Any]] | None = None,
    usage: Usage | None = None,
    tools: list[dict[str, Any]] | None = None,
) -> dict[str, Any]:
    """A failed result.json payload; `error` is for the operator, not shown raw to users."""
    result: dict[str, Any] = {"ok": False, "error": error, "error_class": error_class}
    if attempts is not None:
        result["attempts"] = list(attempts)
    if usage is not None and (usage.input_tokens or usage.output_tokens):
        result["usage"] = usage.to_dict()
    if tools:
        result["tools"] = list(tools)
    return result
