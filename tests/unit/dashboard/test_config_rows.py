"""config_rows: every setting's value, its source and its masking, from a real load_config."""

from __future__ import annotations

from pathlib import Path

import pytest

from mercury.config import load_config
from mercury.dashboard.pages.config_page import (
    MASK,
    ConfigRow,
    config_rows,
    flatten,
    mask_value,
    secret_rows,
)

DB_PASSWORD = "pg-very-secret-pw-123"
API_KEY = "sk-ant-abcdefghijklmnopqrstuvwxyz012345"
EXT_TOKEN = "ext-token-value-which-is-long"


def by_key(rows: list[ConfigRow]) -> dict[str, ConfigRow]:
    return {r.key: r for r in rows}


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "mercury.yaml"
    path.write_text(text)
    return path


def test_sources_default_file_and_environment(tmp_path: Path) -> None:
    path = write(
        tmp_path,
        "server:\n  port: 9000\n  host: 127.0.0.1\ncontainer:\n  memory: 2g\n"
        "model:\n  chain:\n    - {provider: openai, model: gpt-x}\n",
    )
    env = {"MERCURY_CONTAINER__TIMEOUT": "90s", "MERCURY_HISTORY__TURNS": "7"}
    rows = by_key(config_rows(load_config(path, env=env)))
    assert rows["server.port"].source == "file" and rows["server.port"].value == "9000"
    # Set in the file to exactly the default: it is the default.
    assert rows["server.host"].source == "default"
    assert rows["container.memory"].source == "file"
    assert rows["container.memory"].value == str(2 * 1024**3)
    assert rows["container.timeout"].source == "environment"
    assert rows["container.timeout"].env_var == "MERCURY_CONTAINER__TIMEOUT"
    assert rows["history.turns"].value == "7"
    assert rows["model.chain[0].provider"].source == "file"
    assert rows["model.chain[0].model"].value == "gpt-x"
    assert rows["log.level"].source == "default"
    # data_dir is made absolute beside the file; still the default.
    assert rows["data_dir"].source == "default"
    assert rows["extensions.dir"].source == "default"
    # Empty collections still get a row.
    assert rows["model.prices"].value == "{}"
    assert rows["container.cap_drop"].value == '["ALL"]'


def test_an_env_var_for_a_whole_section_covers_its_leaves(tmp_path: Path) -> None:
    env = {"MERCURY_MODEL__CHAIN": "[{provider: anthropic, model: m1}]"}
    rows = by_key(config_rows(load_config(write(tmp_path, "{}\n"), env=env)))
    assert rows["model.chain[0].model"].value == "m1"
    assert rows["model.chain[0].model"].env_var == "MERCURY_MODEL__CHAIN"


def test_without_a_file_changed_values_came_from_the_command_line(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)  # no mercury.yaml here
    loaded = load_config(None, env={}, overrides={"server": {"port": 8123}})
    assert loaded.path is None
    rows = by_key(config_rows(loaded))
    assert rows["server.port"].source == "command line"
    assert rows["server.host"].source == "default"


def test_secrets_are_masked_everywhere(tmp_path: Path) -> None:
    path = write(
        tmp_path,
        f"database_url: postgresql+asyncpg://mercury:{DB_PASSWORD}@db/mercury\n"
        "container:\n  env:\n    GITHUB_TOKEN: ghp_abcdefghijklmnop\n    LANG: C.UTF-8\n"
        "model:\n  chain:\n    - provider: openai\n      model: m\n"
        f"      base_url: https://user:{DB_PASSWORD}@proxy.example/v1\n"
        f"extensions:\n  settings:\n    notes:\n      api_key: {EXT_TOKEN}\n"
        f"      greeting: hello {API_KEY}\n",
    )
    env = {"ANTHROPIC_API_KEY": API_KEY, "MERCURY_DASHBOARD_PASSWORD": "dash-password-xyz-987"}
    loaded = load_config(path, env=env)
    rows = config_rows(loaded)
    shown = "\n".join(f"{r.key}={r.value}" for r in rows)
    for secret in (
        DB_PASSWORD,
        API_KEY,
        EXT_TOKEN,
        "ghp_abcdefghijklmnop",
        "dash-password-xyz-987",
    ):
        assert secret not in shown
    r = by_key(rows)
    assert r["database_url"].masked and "postgresql+asyncpg://mercury:" in r["database_url"].value
    assert r["container.env.GITHUB_TOKEN"].value == MASK
    assert r["container.env.LANG"].value == "C.UTF-8" and not r["container.env.LANG"].masked
    assert r["extensions.settings.notes.api_key"].value == MASK
    assert r["extensions.settings.notes.greeting"].masked
    assert r["model.chain[0].base_url"].masked
    assert "proxy.example" in r["model.chain[0].base_url"].value


def test_mask_value_leaves_harmless_values_alone() -> None:
    assert mask_value("server.port", "8787", []) == ("8787", False)
    assert mask_value("model.max_turns", "40", []) == ("40", False)
    assert mask_value("a.api_key", "null", []) == ("null", False)
    assert mask_value("a.api_key", "x", []) == (MASK, True)
    assert mask_value("a.note", "has a-configured-secret-1 in it", ["a-configured-secret-1"]) == (
        "has [REDACTED] in it",
        True,
    )


def test_secret_rows_say_only_whether_each_is_set(tmp_path: Path) -> None:
    loaded = load_config(write(tmp_path, "{}\n"), env={"OPENAI_API_KEY": "sk-openai-123456789012"})
    rows = {s.env_var: s for s in secret_rows(loaded)}
    assert rows["OPENAI_API_KEY"].is_set
    assert not rows["MERCURY_SLACK_BOT_TOKEN"].is_set
    assert "sk-openai" not in repr(rows)


def test_flatten() -> None:
    assert list(flatten({"a": {"b": 1, "c": []}, "d": [{"e": 2}], "f": [1, 2], "g": {}})) == [
        ("a.b", 1),
        ("a.c", []),
        ("d[0].e", 2),
        ("f", [1, 2]),
        ("g", {}),
    ]
