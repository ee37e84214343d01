"""Loading the configuration: defaults < YAML file < MERCURY_* environment < CLI flags, with
one clear line per problem naming the key. Secrets come only from the environment or `.env`."""

from __future__ import annotations

import difflib
import os
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml
from dotenv import dotenv_values
from pydantic import (
    BaseModel,
    ValidationError,
)

from mercury.config.sections import (
    DEFAULT_CONFIG_NAME,
    ENV_NESTING,
    ENV_PREFIX,
    SECRET_ENV,
    Config,
    Secrets,
)

# --------------------------------------------------------------------------- loading

# Keys people will try to put in the YAML file; each answer says where they belong.
_SECRET_LOOKALIKES = {
    "token",
    "bot_token",
    "app_token",
    "signing_secret",
    "password",
    "api_key",
    "secret",
    "webhook_secret",
}


class ConfigError(Exception):
    """A config that cannot start Mercury; `problems` has one line per problem."""

    def __init__(self, problems: list[str]) -> None:
        self.problems = problems
        super().__init__("\n".join(problems))


@dataclass
class LoadedConfig:
    config: Config
    secrets: Secrets
    path: Path | None  # the YAML file read, if any
    sources: dict[str, str] = field(default_factory=dict)  # "container.memory" -> "MERCURY_…"


def find_config_path(explicit: str | os.PathLike[str] | None, env: Mapping[str, str]) -> Path:
    if explicit:
        return Path(explicit)
    if env.get("MERCURY_CONFIG"):
        return Path(env["MERCURY_CONFIG"])
    return Path(DEFAULT_CONFIG_NAME)


def _deep_merge(base: dict[str, Any], over: Mapping[str, Any]) -> dict[str, Any]:
    out = dict(base)
    for k, v in over.items():
        if isinstance(v, Mapping) and isinstance(out.get(k), dict):
            out[k] = _deep_merge(out[k], v)
        else:
            out[k] = v
    return out


def _set_path(target: dict[str, Any], path: list[str], value: Any) -> None:
    for part in path[:-1]:
        nxt = target.get(part)
        if not isinstance(nxt, dict):
            nxt = {}
            target[part] = nxt
        target = nxt
    target[path[-1]] = value


def _parse_env_value(raw: str) -> Any:
    """Environment values are YAML scalars or flow collections: 2g, 8080, true, [a, b]."""
    try:
        return yaml.safe_load(raw) if raw.strip() else raw
    except yaml.YAMLError:
        return raw


def _env_overrides(env: Mapping[str, str]) -> tuple[dict[str, Any], dict[str, str]]:
    """MERCURY_SECTION__KEY=value -> {"section": {"key": value}}; top-level keys by name."""
    top_level = set(Config.model_fields)
    secret_vars = set(SECRET_ENV.values())
    data: dict[str, Any] = {}
    sources: dict[str, str] = {}
    for name, raw in env.items():
        if not name.startswith(ENV_PREFIX) or name in secret_vars or name == "MERCURY_CONFIG":
            continue
        rest = name[len(ENV_PREFIX) :].lower()
        if ENV_NESTING in rest:
            path = rest.split(ENV_NESTING)
        elif rest in top_level:
            path = [rest]
        else:
            continue  # not a config key (e.g. a tool's own MERCURY_* variable)
        _set_path(data, path, _parse_env_value(raw))
        sources[".".join(path)] = name
    return data, sources


def _suggest(word: str, candidates: Iterable[str]) -> str:
    match = difflib.get_close_matches(word, list(candidates), n=1, cutoff=0.6)
    return f" (did you mean '{match[0]}'?)" if match else ""


def _fields_at(loc: tuple[Any, ...]) -> list[str]:
    """Field names of the model section at `loc` (for did-you-mean)."""
    model: Any = Config
    for part in loc:
        if isinstance(part, int):
            continue
        info = getattr(model, "model_fields", {}).get(part)
        if info is None:
            return []
        ann = info.annotation
        args = getattr(ann, "__args__", ())
        model = next(
            (a for a in (ann, *args) if isinstance(a, type) and issubclass(a, BaseModel)), None
        )
        if model is None:
            return []
    return list(getattr(model, "model_fields", {}))


def _short(value: Any) -> str:
    text = str(value)
    return text if len(text) <= 60 else text[:57] + "..."


def _describe(err: Mapping[str, Any], sources: Mapping[str, str]) -> str:
    loc = tuple(err["loc"])
    path = ".".join(str(p) for p in loc) or "(top level)"
    kind = err["type"]
    value = err.get("input")
    ctx = err.get("ctx") or {}
    if kind == "extra_forbidden":
        key = str(loc[-1])
        if key in _SECRET_LOOKALIKES or any(s in key for s in ("token", "secret", "password")):
            msg = (
                "secrets are not read from the config file; set them in the environment "
                "or .env (see docs/configuration.md#secrets)"
            )
        else:
            msg = "unknown key" + _suggest(key, _fields_at(loc[:-1]))
    elif kind in (
        "size",
        "duration",
        "network",
        "database_url",
        "admin_id",
        "user",
        "container_env",
        "trusted_proxy",
    ):
        msg = err["msg"]
    elif kind == "missing":
        msg = "required key is missing"
    elif kind == "literal_error":
        msg = f'expected one of {ctx.get("expected", "")}, got "{_short(value)}"'
    elif kind in ("int_parsing", "int_type", "int_from_float"):
        msg = f'expected a whole number, got "{_short(value)}"'
    elif kind in ("float_parsing", "float_type"):
        msg = f'expected a number, got "{_short(value)}"'
    elif kind in ("bool_parsing", "bool_type"):
        msg = f'expected true or false, got "{_short(value)}"'
    elif kind in ("string_type",):
        msg = f'expected text, got "{_short(value)}"'
    elif kind in ("list_type",):
        msg = f'expected a list, got "{_short(value)}"'
    elif kind in ("dict_type", "model_type", "model_attributes_type"):
        msg = f'expected a mapping of keys, got "{_short(value)}"'
    elif kind in ("greater_than_equal", "greater_than", "less_than_equal", "less_than"):
        bound = {
            "greater_than_equal": ">=",
            "greater_than": ">",
            "less_than_equal": "<=",
            "less_than": "<",
        }[kind]
        limit = next(iter(ctx.values()), "")
        msg = f'expected a number {bound} {limit}, got "{_short(value)}"'
    elif kind == "string_pattern_mismatch":
        msg = f'expected text matching {ctx.get("pattern")}, got "{_short(value)}"'
    elif kind in ("too_short",):
        msg = "must not be empty"
    else:
        msg = err["msg"][0].lower() + err["msg"][1:]
    source = sources.get(".".join(str(p) for p in loc if not isinstance(p, int)))
    return f"{path}: {msg}" + (f" (from {source})" if source else "")


def _read_yaml(path: Path) -> dict[str, Any]:
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise ConfigError([f"{path}: cannot read the config file ({exc.strerror})"]) from exc
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" line {mark.line + 1}, column {mark.column + 1}" if mark else ""
        problem = getattr(exc, "problem", None) or "invalid YAML"
        raise ConfigError([f"{path}:{where}: {problem}"]) from exc
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise ConfigError([f"{path}: expected a mapping of keys at the top level"])
    return data


def read_env_file(path: Path) -> dict[str, str]:
    """The `.env` beside the config file (values only; the process env wins over it)."""
    if not path.is_file():
        return {}
    return {k: v for k, v in dotenv_values(path).items() if v is not None}


def load_config(
    path: str | os.PathLike[str] | None = None,
    *,
    env: Mapping[str, str] | None = None,
    overrides: Mapping[str, Any] | None = None,
    require_file: bool = False,
) -> LoadedConfig:
    """Build the config from defaults < file < environment (+ .env) < `overrides`.

    `overrides` are CLI flags as a nested mapping. Raises ConfigError listing every problem.
    """
    process_env = dict(os.environ if env is None else env)
    explicit = path is not None or "MERCURY_CONFIG" in process_env
    cfg_path = find_config_path(path, process_env)
    file_data: dict[str, Any] = {}
    used_path: Path | None = None
    if cfg_path.is_file():
        file_data = _read_yaml(cfg_path)
        used_path = cfg_path.resolve()
    elif explicit or require_file:
        raise ConfigError([f"{cfg_path}: config file not found (run `mercury init` to create one)"])

    base_dir = used_path.parent if used_path else Path.cwd()
    # The process environment wins over .env, as every dotenv user expects.
    merged_env = {**read_env_file(base_dir / ".env"), **process_env}

    env_data, sources = _env_overrides(merged_env)
    data = _deep_merge(_deep_merge(file_data, env_data), overrides or {})
    for key in overrides or {}:
        sources.pop(key, None)
    try:
        config = Config.model_validate(data)
    except ValidationError as exc:
        raise ConfigError([_describe(e, sources) for e in exc.errors()]) from None

    # Relative paths are relative to the config file, not to wherever `mercury` was started.
    if not config.data_dir.is_absolute():
        config.data_dir = (base_dir / config.data_dir).resolve()
    if not config.extensions.dir.is_absolute():
        config.extensions.dir = (base_dir / config.extensions.dir).resolve()

    secrets = Secrets(
        **{name: merged_env[var] for name, var in SECRET_ENV.items() if merged_env.get(var)}
    )
    return LoadedConfig(config=config, secrets=secrets, path=used_path, sources=sources)


def defaults() -> Config:
    return Config()
