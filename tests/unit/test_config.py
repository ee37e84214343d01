from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from mercury.config import (
    Config,
    ConfigError,
    load_config,
    parse_duration,
    parse_size,
)

ROOT = Path(__file__).resolve().parents[2]
EXAMPLE = ROOT / "mercury.example.yaml"


def write(tmp_path: Path, text: str, name: str = "mercury.yaml") -> Path:
    path = tmp_path / name
    path.write_text(text)
    return path


def problems(tmp_path: Path, text: str, env: dict[str, str] | None = None) -> list[str]:
    with pytest.raises(ConfigError) as info:
        load_config(write(tmp_path, text), env=env or {})
    return info.value.problems


# ---------------------------------------------------------------- good files


def test_good_file_is_read(tmp_path: Path) -> None:
    path = write(
        tmp_path,
        """
instance: prod-1
data_dir: /srv/mercury
server: {host: 0.0.0.0, port: 9000}
container: {memory: 2g, timeout: 5m, cpus: 2, network: bridge, tmpfs_size: 128m}
model:
  chain:
    - {provider: openai, model: llama3, base_url: "http://127.0.0.1:11434/v1"}
    - {provider: anthropic, model: claude-haiku-4-5}
  budget: 1h30m
adapters: {telegram: {enabled: true, mode: webhook}}
permissions: {admins: ["slack:U1", "telegram:42"]}
""",
    )
    loaded = load_config(path, env={})
    cfg = loaded.config
    assert loaded.path == path.resolve()
    assert cfg.instance == "prod-1"
    assert cfg.data_dir == Path("/srv/mercury")
    assert (cfg.server.host, cfg.server.port) == ("0.0.0.0", 9000)
    assert cfg.container.memory == 2 * 1024**3
    assert cfg.container.tmpfs_size == 128 * 1024**2
    assert cfg.container.timeout == 300.0
    assert cfg.container.network == "bridge"
    assert [leg.provider for leg in cfg.model.chain] == ["openai", "anthropic"]
    assert cfg.model.chain[0].base_url == "http://127.0.0.1:11434/v1"
    assert cfg.model.budget == 5400.0
    assert cfg.adapters.telegram.enabled and cfg.adapters.telegram.mode == "webhook"
    # untouched keys keep their defaults
    assert cfg.container.pids == Config().container.pids
    assert cfg.resolved_database_url() == "sqlite+aiosqlite:////srv/mercury/mercury.db"


def test_relative_paths_are_relative_to_the_config_file(tmp_path: Path) -> None:
    (tmp_path / "conf").mkdir()
    path = write(tmp_path / "conf", "data_dir: state\n")
    cfg = load_config(path, env={}).config
    assert cfg.data_dir == (tmp_path / "conf" / "state").resolve()
    assert cfg.extensions.dir == (tmp_path / "conf" / "extensions").resolve()


def test_missing_default_file_means_defaults(tmp_path: Path, monkeypatch) -> None:
    monkeypatch.chdir(tmp_path)
    loaded = load_config(None, env={})
    assert loaded.path is None
    assert loaded.config.server.port == Config().server.port


def test_explicit_missing_file_is_an_error(tmp_path: Path) -> None:
    with pytest.raises(ConfigError) as info:
        load_config(tmp_path / "nope.yaml", env={})
    assert "nope.yaml: config file not found" in info.value.problems[0]


def test_mercury_config_env_names_the_file(tmp_path: Path, monkeypatch) -> None:
    monkeypatch.chdir(tmp_path)
    path = write(tmp_path, "server: {port: 9123}\n", "other.yaml")
    assert load_config(None, env={"MERCURY_CONFIG": str(path)}).config.server.port == 9123


# ---------------------------------------------------------------- bad values, one class each


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        (
            "container: {memory: lots}",
            'container.memory: expected a size like 512m or 2g, got "lots"',
        ),
        (
            "container: {timeout: forever}",
            'container.timeout: expected a duration like 30s, 10m or 2h, got "forever"',
        ),
        ("server: {port: abc}", 'server.port: expected a whole number, got "abc"'),
        ("server: {port: 70000}", 'server.port: expected a number <= 65535, got "70000"'),
        ("container: {cpus: many}", 'container.cpus: expected a number, got "many"'),
        (
            "dashboard: {enabled: perhaps}",
            'dashboard.enabled: expected true or false, got "perhaps"',
        ),
        (
            "log: {level: loud}",
            "log.level: expected one of 'debug', 'info', 'warning' or 'error', got \"loud\"",
        ),
        (
            "container: {network: host}",
            "container.network: expected none, bridge or a Docker network name (not host), "
            'got "host"',
        ),
        ("model: {chain: []}", "model.chain: must not be empty"),
        (
            "model: {chain: [{provider: cohere, model: x}]}",
            "model.chain.0.provider: expected one of 'anthropic' or 'openai', got \"cohere\"",
        ),
        ("model: {chain: [{provider: openai}]}", "model.chain.0.model: required key is missing"),
        (
            "permissions: {admins: [bob]}",
            'permissions.admins: expected "platform:user_id" (platform slack, discord, telegram '
            'or web), got "bob"',
        ),
        (
            "container: {user: '0:0'}",
            'container.user: expected auto or a non-root numeric "uid:gid" like 2000:2000, '
            'got "0:0"',
        ),
        (
            "container: {user: agent}",
            'container.user: expected auto or a non-root numeric "uid:gid" like 2000:2000, '
            'got "agent"',
        ),
        (
            "container: {env: {ANTHROPIC_API_KEY: x}}",
            "container.env: ANTHROPIC_API_KEY may not be passed into containers (secrets and "
            "Mercury's own settings never enter a container)",
        ),
        (
            "container: {env: {MERCURY_DATABASE_URL: x}}",
            "container.env: MERCURY_DATABASE_URL may not be passed into containers (secrets and "
            "Mercury's own settings never enter a container)",
        ),
        ("server: 8080", 'server: expected a mapping of keys, got "8080"'),
        (
            "database_url: 'mysql://root:hunter2@db/x'",
            "database_url: expected sqlite+aiosqlite:///PATH or postgresql+asyncpg://USER@HOST/DB, "
            'got "mysql://…"',
        ),
    ],
)
def test_bad_value_names_the_key_and_expectation(tmp_path: Path, text: str, expected: str) -> None:
    assert problems(tmp_path, text) == [expected]


def test_every_problem_is_reported_one_line_each(tmp_path: Path) -> None:
    found = problems(tmp_path, "container: {memory: lots, pids: x}\nserver: {port: y}\n")
    assert len(found) == 3
    assert all("\n" not in p for p in found)
    assert {p.split(":")[0] for p in found} == {"container.memory", "container.pids", "server.port"}


def test_password_in_a_bad_database_url_is_not_echoed(tmp_path: Path) -> None:
    found = problems(tmp_path, "database_url: 'mysql://root:hunter2@db/x'")
    assert "hunter2" not in "".join(found)


def test_unknown_key_suggests_the_right_one(tmp_path: Path) -> None:
    assert problems(tmp_path, "container: {memroy: 1g}") == [
        "container.memroy: unknown key (did you mean 'memory'?)"
    ]
    assert problems(tmp_path, "sever: {port: 1}") == ["sever: unknown key (did you mean 'server'?)"]
    assert problems(tmp_path, "zzz: 1") == ["zzz: unknown key"]
    assert problems(tmp_path, "adapters: {slack: {api_base: x}}") == [
        "adapters.slack.api_base: unknown key (did you mean 'api_base_url'?)"
    ]


def test_secret_in_the_file_is_refused_with_where_it_belongs(tmp_path: Path) -> None:
    (found,) = problems(tmp_path, "adapters: {slack: {bot_token: xoxb-123}}")
    assert found.startswith("adapters.slack.bot_token: secrets are not read from the config file")
    assert "xoxb-123" not in found


def test_invalid_yaml_names_line(tmp_path: Path) -> None:
    (found,) = problems(tmp_path, "server:\n  port: [1,\n")
    assert "mercury.yaml: line" in found


def test_top_level_must_be_a_mapping(tmp_path: Path) -> None:
    assert problems(tmp_path, "- a\n- b\n")[0].endswith(
        "expected a mapping of keys at the top level"
    )


# ---------------------------------------------------------------- sources and precedence


def test_env_overrides_file_and_flags_override_env(tmp_path: Path) -> None:
    path = write(tmp_path, "server: {port: 9000}\ncontainer: {memory: 1g}\n")
    env = {
        "MERCURY_SERVER__PORT": "9001",
        "MERCURY_CONTAINER__MEMORY": "3g",
        "MERCURY_DATA_DIR": "/var/lib/m",
        "MERCURY_MODEL__CHAIN": "[{provider: openai, model: m1}]",
        "MERCURY_SOMETHING_ELSE": "ignored: not a config key",
    }
    cfg = load_config(path, env=env).config
    assert cfg.server.port == 9001
    assert cfg.container.memory == 3 * 1024**3
    assert cfg.data_dir == Path("/var/lib/m")
    assert cfg.model.chain[0].model == "m1"
    cfg = load_config(path, env=env, overrides={"server": {"port": 9002}}).config
    assert cfg.server.port == 9002
    assert cfg.container.memory == 3 * 1024**3


def test_bad_env_value_names_key_and_variable(tmp_path: Path) -> None:
    found = problems(tmp_path, "", env={"MERCURY_CONTAINER__MEMORY": "lots"})
    assert found == [
        'container.memory: expected a size like 512m or 2g, got "lots" '
        "(from MERCURY_CONTAINER__MEMORY)"
    ]
    found = problems(tmp_path, "", env={"MERCURY_SERVER__PROT": "1"})
    assert found == ["server.prot: unknown key (did you mean 'port'?) (from MERCURY_SERVER__PROT)"]


def test_secrets_come_from_env_and_dotenv_only(tmp_path: Path) -> None:
    path = write(tmp_path, "adapters: {slack: {enabled: true}}\n")
    (tmp_path / ".env").write_text(
        "MERCURY_SLACK_BOT_TOKEN=xoxb-from-dotenv\nANTHROPIC_API_KEY=sk-dotenv\n"
    )
    loaded = load_config(path, env={"ANTHROPIC_API_KEY": "sk-process"})
    s = loaded.secrets
    assert s.slack_bot_token is not None
    assert s.slack_bot_token.get_secret_value() == "xoxb-from-dotenv"
    assert s.anthropic_api_key is not None
    # the process environment wins over .env
    assert s.anthropic_api_key.get_secret_value() == "sk-process"
    assert s.discord_bot_token is None
    # secrets never show up in a repr or a dump of the config
    assert "xoxb-from-dotenv" not in repr(s)
    assert "xoxb" not in loaded.config.model_dump_json()


def test_dotenv_can_hold_config_overrides_too(tmp_path: Path) -> None:
    path = write(tmp_path, "")
    (tmp_path / ".env").write_text("MERCURY_SERVER__PORT=9555\n")
    assert load_config(path, env={}).config.server.port == 9555


# ---------------------------------------------------------------- value parsers


@pytest.mark.parametrize(
    ("text", "n"),
    [
        ("512m", 512 * 1024**2),
        ("2g", 2 * 1024**3),
        ("64k", 65536),
        ("1.5g", int(1.5 * 1024**3)),
        ("2GiB", 2 * 1024**3),
        (1000, 1000),
        ("100", 100),
    ],
)
def test_parse_size(text: object, n: int) -> None:
    assert parse_size(text) == n


@pytest.mark.parametrize("bad", ["lots", "-1m", "0", 0, True, "1x", ""])
def test_parse_size_rejects(bad: object) -> None:
    with pytest.raises(ValueError):
        parse_size(bad)


@pytest.mark.parametrize(
    ("text", "s"),
    [
        ("30s", 30),
        ("10m", 600),
        ("2h", 7200),
        ("1h30m", 5400),
        ("250ms", 0.25),
        (45, 45),
        ("12.5", 12.5),
        ("1d", 86400),
    ],
)
def test_parse_duration(text: object, s: float) -> None:
    assert parse_duration(text) == s


@pytest.mark.parametrize("bad", ["forever", "10 parsecs", "-5s", 0, "m10", False])
def test_parse_duration_rejects(bad: object) -> None:
    with pytest.raises(ValueError):
        parse_duration(bad)


# ---------------------------------------------------------------- the example cannot drift


def _keys(data: object, prefix: str = "") -> set[str]:
    if not isinstance(data, dict):
        return set()
    out: set[str] = set()
    for k, v in data.items():
        path = f"{prefix}{k}"
        out.add(path)
        # free-form maps (env, settings, daily) are values, not schema
        if path not in (
            "container.env",
            "extensions.settings",
            "rate_limits.daily",
            "model.prices",
        ):
            out |= _keys(v, path + ".")
    return out


def test_example_equals_built_in_defaults() -> None:
    data = yaml.safe_load(EXAMPLE.read_text())
    assert Config.model_validate(data) == Config()


def test_example_documents_every_key() -> None:
    documented = _keys(yaml.safe_load(EXAMPLE.read_text()))
    schema = _keys(Config().model_dump(mode="json"))
    # list items (model.chain entries) are documented by their one example entry
    schema = {k for k in schema if not k.startswith("model.chain.")}
    documented = {k for k in documented if not k.startswith("model.chain.")}
    assert documented == schema


def test_example_loads_through_the_real_loader(tmp_path: Path) -> None:
    path = write(tmp_path, EXAMPLE.read_text())
    loaded = load_config(path, env={})
    expected = Config()
    expected.data_dir = (tmp_path / "data").resolve()
    expected.extensions.dir = (tmp_path / "extensions").resolve()
    assert loaded.config == expected
