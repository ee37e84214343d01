"""The host side of the container contract: input.json, as one typed record.

input.json is what one run is asked. It is built here and nowhere else on the host (the
run executor for chat messages and tasks, `mercury sandbox run` for an operator's file) and
parsed in the container by `mercury_agent.contract.parse_input`; a test that needs no
Docker (tests/unit/sandbox/test_container_contract.py) builds one here and parses it there.

The other half of the contract, result.json, is written by the agent through
`mercury_agent.contract` (`ok_result`, `error_result`) and read on the host, capped and
validated, by `mercury.sandbox.iodir.parse_result`.

What stays on the host: a leg's `base_url` (it may carry credentials in its user-info) and
anything else added to ModelLeg later is the model proxy's business. Legs in input.json
carry provider and model only.
"""

from __future__ import annotations

import uuid
from collections.abc import Collection, Mapping
from dataclasses import dataclass, field
from typing import Any

from mercury.config import Config
from mercury.core.history import HistoryItem
from mercury.sandbox.hardening import API_MOUNT, SPACE_MOUNT

API_SOCKET_NAME = "api.sock"  # inside each run's socket folder (api.server.SOCKET_NAME)
API_SOCKET = f"{API_MOUNT}/{API_SOCKET_NAME}"  # the run's host API, as the container sees it


def new_run_id(tag: str = "") -> str:
    """A fresh run id; `tag` (the process's, see `run_tag_of`) goes in front, so that
    several processes on one data dir and engine (docs/scale-out.md) each clean up only
    their own and dead processes' leftovers."""
    run = uuid.uuid4().hex[:16]
    return f"{tag}-{run}" if tag else run


def run_tag_of(run_id: str) -> str | None:
    """The process tag a run id carries, or None (an untagged id: a `mercury sandbox run`
    or one made before tags)."""
    tag, sep, _ = run_id.partition("-")
    return tag if sep and tag else None


def spared_run(run_id: str, mine: str, live_tags: Collection[str]) -> bool:
    """Whether cleanup must leave `run_id`'s container and folders alone: it is another
    live process's run. Ours (not active) and dead or unknown processes' are removed."""
    tag = run_tag_of(run_id)
    return tag is not None and tag != mine and tag in live_tags


@dataclass(frozen=True)
class Leg:
    """One leg of the model chain as the container sees it: no base_url, no credentials."""

    provider: str
    model: str

    def to_dict(self) -> dict[str, Any]:
        return {"provider": self.provider, "model": self.model}


@dataclass(frozen=True)
class ModelSection:
    """input.json's `model`: the chain in the order it is tried, and the run's limits."""

    chain: tuple[Leg, ...]
    retries_per_leg: int
    budget_s: float | None
    max_turns: int

    def to_dict(self) -> dict[str, Any]:
        return {
            "chain": [leg.to_dict() for leg in self.chain],
            "retries_per_leg": self.retries_per_leg,
            "budget_s": self.budget_s,
            "max_turns": self.max_turns,
        }


@dataclass(frozen=True)
class Caller:
    """Who asked: the chat user (or the operator of `mercury sandbox run`) and their role."""

    id: str
    name: str
    role: str

    def to_dict(self) -> dict[str, Any]:
        return {"id": self.id, "name": self.name, "role": self.role}


OPERATOR = Caller("operator", "operator", "admin")


@dataclass(frozen=True)
class AgentSection:
    """How the run is answered: the built-in loop, or an agent CLI (`command`); and how
    much of the space's MEMORY.md its prompt holds (`memory.max_chars`, 0 = none)."""

    command: tuple[str, ...] | None
    bash_timeout_s: float
    memory_max_chars: int

    def to_dict(self) -> dict[str, Any]:
        return {
            "command": list(self.command) if self.command is not None else None,
            "bash_timeout_s": self.bash_timeout_s,
            "memory_max_chars": self.memory_max_chars,
        }


@dataclass(frozen=True)
class McpServerEntry:
    """One MCP server of a granted extension: a stdio `command` run in the container, or
    a remote one at `url`, a path on the host API (/v1/ext/<ext>/mcp/<server>)."""

    name: str
    command: tuple[str, ...] | None = None
    env: Mapping[str, str] = field(default_factory=dict)
    url: str | None = None

    def to_dict(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "command": list(self.command) if self.command is not None else None,
            "env": dict(self.env),
            "url": self.url,
        }


@dataclass(frozen=True)
class ExtensionEntry:
    """An extension the run is granted, as the container sees it: paths in the container,
    settings as environment variables, services and remote MCP servers as host API paths
    (never a base URL or a credential: those stay on the host)."""

    name: str
    dir: str  # /opt/mercury/ext/<name>
    venv: str | None = None  # /opt/mercury-ext/<name>, None without pip/npm steps
    env: Mapping[str, str] = field(default_factory=dict)  # MERCURY_EXT_<NAME>_<KEY>
    services: Mapping[str, str] = field(default_factory=dict)  # name -> /v1/ext/<ext>/svc/<s>
    mcp: tuple[McpServerEntry, ...] = ()

    def to_dict(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "dir": self.dir,
            "venv": self.venv,
            "env": dict(self.env),
            "services": dict(self.services),
            "mcp": [server.to_dict() for server in self.mcp],
        }


@dataclass(frozen=True)
class RunInput:
    """A complete input.json. The ids and `token` are always the host's own for this run."""

    run_id: str
    space_id: str
    token: str  # the run's host API token (RunHost.open_run)
    prompt: str
    model: ModelSection
    agent: AgentSection
    profile: str
    platform: str = "cli"
    messages: tuple[HistoryItem, ...] = ()  # the history window, oldest first
    caller: Caller = OPERATOR
    attachments: tuple[str, ...] = ()  # this message's files, relative to /space
    preferences: Mapping[str, Any] = field(default_factory=dict)
    skills: tuple[str, ...] = ()
    egress: bool = False  # the run may use the host's egress proxy (granted hosts only)
    extensions: tuple[ExtensionEntry, ...] = ()  # the extensions the run is granted
    # What the agent remembers about the caller in this space (storage/person_notes.py):
    # their own note only, never another person's; None when there is none.
    person_note: str | None = None

    def to_dict(self) -> dict[str, Any]:
        """The JSON-ready input.json (history timestamps as ISO 8601 in UTC)."""
        return {
            "run_id": self.run_id,
            "space_id": self.space_id,
            "platform": self.platform,
            "prompt": self.prompt,
            "messages": [item.to_payload() for item in self.messages],
            "caller": self.caller.to_dict(),
            "attachments": [f"{SPACE_MOUNT}/{path}" for path in self.attachments],
            "preferences": dict(self.preferences),
            "profile": self.profile,
            "skills": list(self.skills),
            "model": self.model.to_dict(),
            "agent": self.agent.to_dict(),
            "api": {"socket": API_SOCKET, "token": self.token},
            "egress": self.egress,
            "extensions": [ext.to_dict() for ext in self.extensions],
            "person_note": self.person_note,
        }


def model_section(config: Config, first: str | None = None) -> ModelSection:
    """The configured chain and limits; the leg whose model is `first` is tried first.

    `first` is the space's /model switch. The other legs keep their order.
    """
    model = config.model
    legs = [Leg(leg.provider, leg.model) for leg in model.chain]
    legs.sort(key=lambda leg: leg.model != first)  # stable: the others keep their order
    return ModelSection(
        chain=tuple(legs),
        retries_per_leg=model.retries_per_leg,
        budget_s=model.budget,
        max_turns=model.max_turns,
    )


def agent_section(config: Config) -> AgentSection:
    agent = config.agent
    return AgentSection(
        command=tuple(agent.command) if agent.command is not None else None,
        bash_timeout_s=agent.bash_timeout,
        memory_max_chars=config.memory.max_chars,
    )


def run_input(
    config: Config,
    *,
    run_id: str,
    space_id: str,
    token: str,
    prompt: str = "",
    model_first: str | None = None,
    profile: str | None = None,
    **fields: Any,
) -> RunInput:
    """A RunInput with the config's defaults: model chain, agent, profile.

    `fields` are the run's own (platform, messages, caller, attachments, preferences,
    skills, egress, extensions, person_note); `model_first` is the /model switch, `profile`
    the space's profile.
    """
    return RunInput(
        run_id=run_id,
        space_id=space_id,
        token=token,
        prompt=prompt,
        model=model_section(config, model_first),
        agent=agent_section(config),
        profile=profile if profile is not None else config.agent.profile,
        **fields,
    )


def build_input(
    config: Config,
    payload: Mapping[str, Any],
    *,
    run_id: str,
    space_id: str,
    token: str,
) -> dict[str, Any]:
    """An operator's own input (`mercury sandbox run`) completed into input.json.

    The config's defaults come from `run_input`; keys in `payload` win where they are the
    run's own (prompt, history, caller...). The ids and the API access are always the
    host's, so a payload cannot borrow another run's, and legs the payload names lose
    any base_url (like the config's, it stays on the host: the proxy picks the leg).
    """
    host = run_input(config, run_id=run_id, space_id=space_id, token=token).to_dict()
    data = {**host, **payload}
    if "prompt" not in payload:
        del data["prompt"]  # the agent names the missing field (exit 2, bad_input)
    model = data.get("model")
    if isinstance(model, Mapping) and isinstance(model.get("chain"), list):
        data["model"] = {
            **model,
            "chain": [
                {k: leg[k] for k in ("provider", "model") if k in leg}
                if isinstance(leg, Mapping)
                else leg
                for leg in model["chain"]
            ],
        }
    for key in ("run_id", "space_id", "api"):
        data[key] = host[key]
    return data
