"""The configuration's shape: typed sections with their defaults, value types and the
secrets. Reading and checking sources is load.py's job."""

from __future__ import annotations

import ipaddress
import re
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import (
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    SecretStr,
    field_validator,
)
from pydantic_core import PydanticCustomError

from mercury.core.budget import Cap, CapError, Caps, parse_cap
from mercury.core.durations import DurationError
from mercury.core.durations import parse_duration as core_parse_duration
from mercury.core.egress_rules import parse_private_rule
from mercury.core.when import WhenError, zone_named

ENV_PREFIX = "MERCURY_"
ENV_NESTING = "__"
DEFAULT_CONFIG_NAME = "mercury.yaml"

# --------------------------------------------------------------------------- value types

_SIZE_RE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([kmgt]?)(?:i?b)?\s*$", re.IGNORECASE)
_SIZE_FACTORS = {"": 1, "k": 1024, "m": 1024**2, "g": 1024**3, "t": 1024**4}


def parse_size(value: Any) -> int:
    """`512m`, `2g`, `64k` or a plain byte count -> bytes."""
    if isinstance(value, bool):
        raise PydanticCustomError(
            "size", 'expected a size like 512m or 2g, got "{v}"', {"v": value}
        )
    if isinstance(value, int) and value > 0:
        return value
    if isinstance(value, str):
        m = _SIZE_RE.match(value)
        if m:
            n = int(float(m.group(1)) * _SIZE_FACTORS[m.group(2).lower()])
            if n > 0:
                return n
    raise PydanticCustomError("size", 'expected a size like 512m or 2g, got "{v}"', {"v": value})


def parse_duration(value: Any) -> float:
    """A duration in the one grammar (mercury/core/durations.py) -> seconds, for pydantic."""
    try:
        return core_parse_duration(value)
    except DurationError:
        raise PydanticCustomError(
            "duration", 'expected a duration like 30s, 10m or 2h, got "{v}"', {"v": value}
        ) from None


ByteSize = Annotated[int, BeforeValidator(parse_size)]
Duration = Annotated[float, BeforeValidator(parse_duration)]


class Section(BaseModel):
    """Every section forbids unknown keys: a typo must not be silently ignored."""

    model_config = ConfigDict(extra="forbid", validate_default=True)


# --------------------------------------------------------------------------- sections


class ServerConfig(Section):
    host: str = "127.0.0.1"
    port: int = Field(8787, ge=1, le=65535)
    # Public base URL (for Slack/Telegram webhooks, links in messages); none = not exposed.
    public_url: str | None = None
    # Reverse proxies (addresses or CIDR networks) whose X-Forwarded-For/-Proto/-Host are
    # believed; login throttling counts the client behind them. Empty = trust no header.
    trusted_proxies: list[str] = Field(default_factory=list)

    @field_validator("trusted_proxies")
    @classmethod
    def _proxies(cls, v: list[str]) -> list[str]:
        for item in v:
            try:
                ipaddress.ip_network(item.strip(), strict=False)
            except ValueError:
                raise PydanticCustomError(
                    "trusted_proxy",
                    'expected an IP address or network like 10.0.0.5 or 10.0.0.0/8, got "{v}"',
                    {"v": item},
                ) from None
        return v


class LogConfig(Section):
    level: Literal["debug", "info", "warning", "error"] = "info"
    # auto: coloured console in a terminal, JSON lines otherwise.
    format: Literal["auto", "console", "json"] = "auto"
    # Identical warnings/errors (same logger, message and level): at most repeat_limit per
    # repeat_window, then one "suppressed N similar lines" line. 0 = never suppress.
    repeat_limit: int = Field(10, ge=0)
    repeat_window: Duration = 60.0

    @field_validator("level", mode="before")
    @classmethod
    def _lower(cls, v: Any) -> Any:
        return v.lower() if isinstance(v, str) else v


class TriggerConfig(Section):
    # mention: only when the bot is mentioned; prefix: when a message starts with a prefix;
    # always: every message in the conversation.
    match: Literal["mention", "prefix", "always"] = "mention"
    prefixes: list[str] = Field(default_factory=lambda: ["!mercury"])
    direct_messages: bool = True
    reply_to_bot: bool = True


class WarmConfig(Section):
    # Keep the next container of an active space created, started and waiting with the
    # agent's imports done, so its next message skips the cold start (docs/performance.md).
    # Each still serves one message only. Costs the memory of one idle agent per waiting
    # container (about 85 MiB; docs/configuration.md).
    enabled: bool = True
    # Removed when no message came for this long.
    idle_ttl: Duration = 600.0
    # Waiting containers at most, across all spaces; the longest idle makes room.
    max: int = Field(4, ge=0)


class ContainerConfig(Section):
    image: str = "mercury-agent:latest"
    base_image: str = "python:3.12-slim"
    timeout: Duration = 600.0
    memory: ByteSize = 1024**3
    cpus: float = Field(1.0, gt=0)
    pids: int = Field(256, ge=16)
    tmpfs_size: ByteSize = 64 * 1024**2
    # none: no network at all (the agent reaches its model through the host API socket);
    # bridge or a named Docker network for agents that need the internet.
    network: str = "none"
    max_concurrency: int = Field(2, ge=1)
    # The Docker engine this process runs containers on (e.g. unix:///run/docker.sock,
    # ssh://host); None = DOCKER_HOST or the local socket. Each worker may have its own.
    docker_host: str | None = None
    # Optional OCI runtime, e.g. runsc (gVisor).
    runtime: str | None = None
    # Hardening: each on by default; docs/security.md explains what turning one off costs.
    # The uid:gid agents run as. auto: AUTO_CONTAINER_ID:AUTO_CONTAINER_ID when Mercury runs
    # as root (an id no host account has), else Mercury's own uid:gid.
    user: str = "auto"
    read_only_rootfs: bool = True
    cap_drop: list[str] = Field(default_factory=lambda: ["ALL"])
    no_new_privileges: bool = True
    init: bool = True
    # Extra environment variables granted to every run (never secrets).
    env: dict[str, str] = Field(default_factory=dict)
    # Open files per container process: a run cannot exhaust the host's file handles.
    nofile: int = Field(1024, ge=64)
    # What a run may send back from /space/outbox: at most this many files, this many bytes
    # in all; the rest is left out and the user told so.
    max_output_files: int = Field(10, ge=0, le=100)
    max_output_size: ByteSize = 50 * 1024**2
    # How long messages wait for a Docker engine that does not answer (restarting, crashed)
    # before they fail with a notice for the operator. Runs the outage cut short are run
    # again; nothing starts while it lasts.
    engine_outage_limit: Duration = 600.0
    warm: WarmConfig = Field(default_factory=WarmConfig)

    @field_validator("user")
    @classmethod
    def _user(cls, v: str) -> str:
        if v == "auto":
            return v
        if not re.fullmatch(r"\d+(:\d+)?", v) or v.split(":")[0] == "0":
            raise PydanticCustomError(
                "user",
                'expected auto or a non-root numeric "uid:gid" like 2000:2000, got "{v}"',
                {"v": v},
            )
        return v

    @field_validator("env")
    @classmethod
    def _env(cls, v: dict[str, str]) -> dict[str, str]:
        for name in v:
            if name in SECRET_ENV.values() or name.startswith("MERCURY_"):
                raise PydanticCustomError(
                    "container_env",
                    "{v} may not be passed into containers (secrets and Mercury's own settings "
                    "never enter a container)",
                    {"v": name},
                )
        return v

    @field_validator("network")
    @classmethod
    def _network(cls, v: str) -> str:
        if not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9_.-]*", v) or v == "host":
            raise PydanticCustomError(
                "network",
                'expected none, bridge or a Docker network name (not host), got "{v}"',
                {"v": v},
            )
        return v


# The uid and gid agents run as when Mercury runs as root and `container.user` is auto:
# above the login (1000-60000), systemd dynamic (61184-65519) and nobody (65534) ids, the
# usual subordinate-id ranges of rootless containers (100000 + 65536 n) and systemd-nspawn's
# container range (up to 0x6FFFFFFF), so on a typical host no account owns it.
AUTO_CONTAINER_ID = 2_000_000_000


class DiskConfig(Section):
    # Largest size of one space's folder (/space); null = no limit.
    space_size: ByteSize | None = 1024**3
    # How the limit is enforced: image = a filesystem image per space, mounted at the space
    # folder (needs root and loop devices); watch = the folder is measured while a run
    # writes and the run is stopped when it is over; auto = image where it works, else watch.
    space_limit: Literal["auto", "image", "watch"] = "auto"
    # Free disk Mercury keeps in data_dir for its own database: below this, new runs wait
    # (their messages stay queued) and a run that is writing is stopped.
    min_free: ByteSize = 1024**3


class ModelLeg(Section):
    provider: Literal["anthropic", "openai"]
    model: str = Field(min_length=1)
    # Any compatible endpoint: a proxy, OpenRouter, Ollama, vLLM. None = the provider's own.
    base_url: str | None = None


def _default_chain() -> list[ModelLeg]:
    return [ModelLeg(provider="anthropic", model="claude-sonnet-4-5")]


class ModelPrice(Section):
    # US dollars per million tokens.
    input_per_mtok: float = Field(ge=0)
    output_per_mtok: float = Field(ge=0)


class ModelConfig(Section):
    chain: list[ModelLeg] = Field(default_factory=_default_chain, min_length=1)
    retries_per_leg: int = Field(2, ge=0, le=10)
    budget: Duration = 300.0
    max_turns: int = Field(40, ge=1)
    # Model name -> price, on top of the shipped table resources/prices.yaml (config/prices.py):
    # an entry here replaces the shipped price of that name or adds a model. Calls of a
    # priced model get cost_usd (and count toward dollar caps); others count tokens only.
    prices: dict[str, ModelPrice] = Field(default_factory=dict)
    # Models runs may call besides the chain's (e.g. an agent CLI's small model); the model
    # proxy refuses every other name. They go to their provider's first leg.
    allowed: list[Annotated[str, Field(min_length=1)]] = Field(default_factory=list)


class AgentConfig(Section):
    # Profile of new spaces: resources/profiles/<name>/AGENTS.md (general, coding, research).
    profile: str = "general"
    # Run an installed agent CLI instead of the built-in loop, e.g.
    # ["claude", "-p", "--output-format", "json"]; null = built-in loop.
    command: list[str] | None = None
    # Limit for one bash tool call inside the container.
    bash_timeout: Duration = 120.0


class StreamConfig(Section):
    # Show the answer growing in place while the model writes (a preview message edited
    # as text comes, replaced by the reply when it is done); false = only the reply.
    enabled: bool = True
    # Seconds between two edits of the preview at most: the platform's edit rate limit.
    interval: Duration = 1.0


def _stream(interval: float) -> Any:
    return Field(default_factory=lambda: StreamConfig(interval=interval))


class SlackConfig(Section):
    enabled: bool = False
    stream: StreamConfig = _stream(1.2)
    # socket: Socket Mode, no public URL needed; http: Events API on /slack/events.
    mode: Literal["socket", "http"] = "socket"
    api_base_url: str = "https://slack.com/api/"


class DiscordConfig(Section):
    enabled: bool = False
    stream: StreamConfig = _stream(1.0)
    api_base_url: str = "https://discord.com/api/v10"
    gateway_url: str = "wss://gateway.discord.gg"


class TelegramConfig(Section):
    enabled: bool = False
    stream: StreamConfig = _stream(1.0)
    mode: Literal["polling", "webhook"] = "polling"
    api_base_url: str = "https://api.telegram.org/bot"
    file_base_url: str = "https://api.telegram.org/file/bot"


class WebChatConfig(Section):
    enabled: bool = True
    stream: StreamConfig = _stream(0.1)
    # Largest upload accepted by the web chat.
    max_upload: ByteSize = 20 * 1024**2


class AdaptersConfig(Section):
    slack: SlackConfig = Field(default_factory=SlackConfig)
    discord: DiscordConfig = Field(default_factory=DiscordConfig)
    telegram: TelegramConfig = Field(default_factory=TelegramConfig)
    web: WebChatConfig = Field(default_factory=WebChatConfig)


class DashboardConfig(Section):
    enabled: bool = True
    username: str = "admin"
    session_ttl: Duration = 12 * 3600.0


class RateLimitsConfig(Section):
    # Per user per space: at most `burst` triggering messages in `burst_window`.
    burst: int = Field(5, ge=1)
    burst_window: Duration = 60.0
    # Runs per user per day, by role; null = unlimited.
    daily: dict[str, int | None] = Field(default_factory=lambda: {"admin": None, "member": 200})


class PermissionsConfig(Section):
    # Seeded as admins in every space: "platform:user_id", e.g. "slack:U024BE7LH".
    admins: list[str] = Field(default_factory=list)
    default_role: str = "member"

    @field_validator("admins")
    @classmethod
    def _admins(cls, v: list[str]) -> list[str]:
        for item in v:
            if not re.fullmatch(r"(slack|discord|telegram|web):\S+", item):
                raise PydanticCustomError(
                    "admin_id",
                    'expected "platform:user_id" (platform slack, discord, telegram or web), '
                    'got "{v}"',
                    {"v": item},
                )
        return v


class HistoryConfig(Section):
    # How much recent conversation goes into each run's input.json.
    turns: int = Field(20, ge=0)
    max_chars: int = Field(20000, ge=0)


class MemoryConfig(Section):
    # The space's MEMORY.md goes into every run's prompt up to this many characters; past
    # it the agent sees the start and is told to condense the file. 0 = not in the prompt.
    max_chars: int = Field(8000, ge=0)


class SchedulerRetriesConfig(Section):
    # A task's failed run is tried again `attempts` times (0 = never), the first `backoff`
    # after the failure, each next one twice as long after; then reported once.
    attempts: int = Field(3, ge=0, le=20)
    backoff: Duration = 60.0


class SchedulerConfig(Section):
    enabled: bool = True
    tick: Duration = 30.0
    retries: SchedulerRetriesConfig = Field(default_factory=SchedulerRetriesConfig)
    # The zone task times are read and shown in (core/when.py); a space may set its own.
    timezone: str = "UTC"

    @field_validator("timezone")
    @classmethod
    def _timezone(cls, v: str) -> str:
        try:
            return zone_named(v).key
        except WhenError as exc:
            raise PydanticCustomError("timezone", "{why}", {"why": str(exc)}) from None


class ExtensionsConfig(Section):
    # Folder of operator-installed extensions (relative to the config file).
    dir: Path = Path("extensions")
    enabled: list[str] = Field(default_factory=list)
    settings: dict[str, dict[str, Any]] = Field(default_factory=dict)
    # Non-public addresses runs may still reach through the egress proxy (api/egress.py):
    # "ip", "ip:port" or a CIDR network. Empty = loopback, LAN and link-local all refused.
    allow_private: list[str] = Field(default_factory=list)

    @field_validator("allow_private")
    @classmethod
    def _allow_private(cls, v: list[str]) -> list[str]:
        for item in v:
            try:
                parse_private_rule(item)
            except ValueError as exc:
                raise PydanticCustomError("allow_private", "{why}", {"why": str(exc)}) from None
        return v


def _cap(value: Any) -> Cap | None:
    try:
        return parse_cap(value)
    except CapError as exc:
        raise PydanticCustomError("cap", str(exc)) from None


CapSetting = Annotated[Cap | None, BeforeValidator(_cap)]


class BudgetsConfig(Section):
    """Spending caps (core/budget.py): a dollar amount ("$5", 2.5), tokens ("500k tokens"),
    or null for none. Days and months are UTC. An admin may set a space's own space_*,
    user_day and task_run caps (/budget); instance_day only here."""

    instance_day: CapSetting = None
    space_day: CapSetting = None
    space_month: CapSetting = None
    user_day: CapSetting = None
    task_run: CapSetting = None

    def caps(self) -> Caps:
        return Caps(
            instance_day=self.instance_day,
            space_month=self.space_month,
            space_day=self.space_day,
            user_day=self.user_day,
            task_run=self.task_run,
        )


class WorkersConfig(Section):
    """Several processes on one PostgreSQL (docs/scale-out.md): the gateway and workers."""

    # How long a claimed job is held without renewal; its worker renews every third of it.
    # A worker killed mid-run loses its jobs to the others after at most this long.
    lease: Duration = Field(60.0, ge=3.0)
    # How often the gateway looks for replies and notices the workers stored, and a worker
    # for queued jobs (at most a second apart) and runs the gateway asked to stop.
    poll: Duration = Field(0.25, gt=0, le=10.0)


class Config(Section):
    """The whole configuration. `secrets` is filled from the environment only."""

    # Names this install; containers are labelled with it so orphan cleanup never touches
    # another instance's containers on the same engine.
    instance: str = Field("mercury", pattern=r"^[a-z0-9][a-z0-9-]{0,30}$")
    data_dir: Path = Path("data")
    # None = sqlite+aiosqlite:///<data_dir>/mercury.db
    database_url: str | None = None
    server: ServerConfig = Field(default_factory=ServerConfig)
    log: LogConfig = Field(default_factory=LogConfig)
    trigger: TriggerConfig = Field(default_factory=TriggerConfig)
    container: ContainerConfig = Field(default_factory=ContainerConfig)
    disk: DiskConfig = Field(default_factory=DiskConfig)
    model: ModelConfig = Field(default_factory=ModelConfig)
    agent: AgentConfig = Field(default_factory=AgentConfig)
    adapters: AdaptersConfig = Field(default_factory=AdaptersConfig)
    dashboard: DashboardConfig = Field(default_factory=DashboardConfig)
    rate_limits: RateLimitsConfig = Field(default_factory=RateLimitsConfig)
    permissions: PermissionsConfig = Field(default_factory=PermissionsConfig)
    history: HistoryConfig = Field(default_factory=HistoryConfig)
    memory: MemoryConfig = Field(default_factory=MemoryConfig)
    scheduler: SchedulerConfig = Field(default_factory=SchedulerConfig)
    budgets: BudgetsConfig = Field(default_factory=BudgetsConfig)
    extensions: ExtensionsConfig = Field(default_factory=ExtensionsConfig)
    workers: WorkersConfig = Field(default_factory=WorkersConfig)

    @field_validator("database_url")
    @classmethod
    def _db_url(cls, v: str | None) -> str | None:
        if v is not None and not v.startswith(("sqlite+aiosqlite://", "postgresql+asyncpg://")):
            raise PydanticCustomError(
                "database_url",
                'expected sqlite+aiosqlite:///PATH or postgresql+asyncpg://USER@HOST/DB, got "{v}"',
                {"v": v.split("://", 1)[0] + "://…" if "://" in v else v},
            )
        return v

    def resolved_database_url(self) -> str:
        if self.database_url:
            return self.database_url
        return f"sqlite+aiosqlite:///{self.data_dir.resolve() / 'mercury.db'}"


# --------------------------------------------------------------------------- secrets

# Secret name -> environment variable. These are the only places secrets come from.
SECRET_ENV: dict[str, str] = {
    "slack_bot_token": "MERCURY_SLACK_BOT_TOKEN",
    "slack_app_token": "MERCURY_SLACK_APP_TOKEN",
    "slack_signing_secret": "MERCURY_SLACK_SIGNING_SECRET",
    "discord_bot_token": "MERCURY_DISCORD_BOT_TOKEN",
    "telegram_bot_token": "MERCURY_TELEGRAM_BOT_TOKEN",
    "telegram_webhook_secret": "MERCURY_TELEGRAM_WEBHOOK_SECRET",
    "dashboard_password": "MERCURY_DASHBOARD_PASSWORD",
    # A bearer token for /metrics alone, so a Prometheus server needs no dashboard login.
    "metrics_token": "MERCURY_METRICS_TOKEN",
    "anthropic_api_key": "ANTHROPIC_API_KEY",
    "openai_api_key": "OPENAI_API_KEY",
}


class Secrets(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    slack_bot_token: SecretStr | None = None
    slack_app_token: SecretStr | None = None
    slack_signing_secret: SecretStr | None = None
    discord_bot_token: SecretStr | None = None
    telegram_bot_token: SecretStr | None = None
    telegram_webhook_secret: SecretStr | None = None
    dashboard_password: SecretStr | None = None
    metrics_token: SecretStr | None = None
    anthropic_api_key: SecretStr | None = None
    openai_api_key: SecretStr | None = None

    def present(self) -> set[str]:
        return {k for k in SECRET_ENV if getattr(self, k) is not None}
