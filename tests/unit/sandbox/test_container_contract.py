"""The host and the agent agree on input.json and result.json, without Docker.

The host builds input.json with `mercury.sandbox.contract` and the agent parses it with
`mercury_agent.contract` (installed in the venv, as in the image); the agent writes
result.json with `mercury_agent.contract` and the host reads it with
`mercury.sandbox.iodir.parse_result`. Each test goes through real JSON bytes, as the io
dir does.
"""

from __future__ import annotations

import json
from dataclasses import fields, replace
from datetime import UTC, datetime, timedelta

import pytest
from mercury_agent import contract as agent

from mercury.config import Config
from mercury.core.history import HistoryItem
from mercury.core.router import failure_notice
from mercury.sandbox.contract import (
    API_SOCKET,
    Caller,
    ExtensionEntry,
    McpServerEntry,
    RunInput,
    build_input,
    run_input,
)
from mercury.sandbox.iodir import parse_result

CONFIG = Config.model_validate(
    {
        "model": {
            "chain": [
                {"provider": "anthropic", "model": "claude-a"},
                {
                    "provider": "openai",
                    "model": "gpt-b",
                    "base_url": "https://user:secret@gw.example.com/v1",
                },
            ],
            "retries_per_leg": 3,
            "budget": "90s",
            "max_turns": 12,
        },
        "agent": {"command": ["claude", "-p"], "bash_timeout": "45s", "profile": "coding"},
        "memory": {"max_chars": 1234},
    }
)
T0 = datetime(2025, 3, 1, 12, 0, tzinfo=UTC)
NOTES = ExtensionEntry(
    name="notes-mcp",
    dir="/opt/mercury/ext/notes-mcp",
    venv="/opt/mercury-ext/notes-mcp",
    env={"MERCURY_EXT_NOTES_MCP_MAX": "10"},
    services={"github": "/v1/ext/notes-mcp/svc/github"},
    mcp=(
        McpServerEntry("notes", command=("python", "server.py"), env={"LOG": "1"}),
        McpServerEntry("search", url="/v1/ext/notes-mcp/mcp/search"),
    ),
)


def representative() -> RunInput:
    """A run with everything a chat message can carry: history, files, a switched model."""
    history = (
        HistoryItem("41", "u1", "Ada", "look at this", T0, attachments=("inbox/a.csv",)),
        HistoryItem("42", "bot", "mercury", "done", T0 + timedelta(seconds=5), is_bot=True),
    )
    return run_input(
        CONFIG,
        run_id="run0123456789abc",
        space_id="slack-T1-C2",
        token="tok-secret",
        prompt="and now plot it",
        model_first="gpt-b",
        profile="research",
        platform="slack",
        messages=history,
        caller=Caller("u1", "Ada", "admin"),
        attachments=("inbox/plot.png", "inbox/data 2.csv"),
        preferences={"language": "fr", "verbose": True},
        skills=("pdf",),
        egress=True,
        extensions=(NOTES, ExtensionEntry("web-reader", "/opt/mercury/ext/web-reader")),
        person_note="Ada prefers metric units\nleads the data team",
    )


def through_json(data: object) -> object:
    return json.loads(json.dumps(data, ensure_ascii=False).encode("utf-8"))


def test_every_field_the_host_writes_arrives_in_the_agent() -> None:
    inp = representative()
    parsed = agent.parse_input(through_json(inp.to_dict()))

    assert (parsed.run_id, parsed.space_id) == ("run0123456789abc", "slack-T1-C2")
    assert (parsed.prompt, parsed.platform, parsed.profile) == (
        "and now plot it",
        "slack",
        "research",
    )
    assert parsed.caller == agent.Caller(id="u1", name="Ada", role="admin")
    assert parsed.attachments == ["/space/inbox/plot.png", "/space/inbox/data 2.csv"]
    assert parsed.preferences == {"language": "fr", "verbose": True}
    assert parsed.skills == ["pdf"]
    assert parsed.messages == [
        agent.HistoryMessage(
            id="41",
            author_id="u1",
            author_name="Ada",
            text="look at this",
            ts="2025-03-01T12:00:00+00:00",
            is_bot=False,
            attachments=["inbox/a.csv"],
        ),
        agent.HistoryMessage(
            id="42",
            author_id="bot",
            author_name="mercury",
            text="done",
            ts="2025-03-01T12:00:05+00:00",
            is_bot=True,
        ),
    ]
    # The /model switch put gpt-b first; no leg carries its base_url or its credentials.
    assert parsed.model.chain == [
        agent.LegSpec("openai", "gpt-b"),
        agent.LegSpec("anthropic", "claude-a"),
    ]
    assert (parsed.model.retries_per_leg, parsed.model.budget_s, parsed.model.max_turns) == (
        3,
        90.0,
        12,
    )
    assert parsed.agent == agent.AgentSpec(
        command=["claude", "-p"], bash_timeout_s=45.0, memory_max_chars=1234
    )
    assert parsed.api == agent.ApiSpec(socket=API_SOCKET, token="tok-secret")
    assert API_SOCKET == "/run/mercury-api/api.sock"
    assert "secret@" not in json.dumps(inp.to_dict())
    assert parsed.egress is True
    assert parsed.person_note == "Ada prefers metric units\nleads the data team"
    assert parsed.extensions == [
        agent.ExtensionInput(
            name="notes-mcp",
            dir="/opt/mercury/ext/notes-mcp",
            venv="/opt/mercury-ext/notes-mcp",
            env={"MERCURY_EXT_NOTES_MCP_MAX": "10"},
            services={"github": "/v1/ext/notes-mcp/svc/github"},
            mcp=(
                agent.McpServerInput("notes", command=("python", "server.py"), env={"LOG": "1"}),
                agent.McpServerInput("search", url="/v1/ext/notes-mcp/mcp/search"),
            ),
        ),
        agent.ExtensionInput(name="web-reader", dir="/opt/mercury/ext/web-reader"),
    ]


def test_the_host_writes_every_field_the_agent_reads_and_nothing_else() -> None:
    """A field added on one side only fails here, not in a container at run time."""
    written = set(representative().to_dict())
    read = {f.name for f in fields(agent.AgentInput)}
    assert written == read
    model_written = set(representative().model.to_dict())
    # max_tokens is the agent's own default: the host does not configure it.
    assert model_written == {f.name for f in fields(agent.ModelSpec)} - {"max_tokens"}
    assert set(representative().agent.to_dict()) == {f.name for f in fields(agent.AgentSpec)}
    assert set(NOTES.to_dict()) == {f.name for f in fields(agent.ExtensionInput)}
    assert set(NOTES.mcp[0].to_dict()) == {f.name for f in fields(agent.McpServerInput)}


def test_a_task_run_with_no_history_and_the_config_defaults_parses() -> None:
    inp = run_input(Config(), run_id="r1", space_id="s1", token="t", prompt="daily digest")
    parsed = agent.parse_input(through_json(inp.to_dict()))
    assert (parsed.messages, parsed.attachments, parsed.preferences) == ([], [], {})
    assert parsed.caller == agent.Caller("operator", "operator", "admin")
    assert parsed.profile == "general"
    assert [leg.model for leg in parsed.model.chain] == [Config().model.chain[0].model]
    assert parsed.agent.command is None
    assert (parsed.egress, parsed.extensions) == (False, [])
    assert parsed.person_note is None  # a task's run without a creator: nobody's note
    # memory.max_chars: the config's default is the one an older host's input gets too.
    assert parsed.agent.memory_max_chars == Config().memory.max_chars == 8000
    older = through_json(inp.to_dict())
    del older["agent"]["memory_max_chars"]  # type: ignore[index]
    assert agent.parse_input(older).agent.memory_max_chars == agent.DEFAULT_MEMORY_MAX_CHARS


@pytest.mark.parametrize("bad", [-1, "8000", True, 1.5])
def test_a_bad_memory_cap_is_refused_naming_it(bad: object) -> None:
    data = through_json(representative().to_dict())
    data["agent"]["memory_max_chars"] = bad  # type: ignore[index]
    with pytest.raises(agent.InputError, match=r"^agent\.memory_max_chars: "):
        agent.parse_input(data)


def test_an_input_without_its_token_is_refused_by_the_agent() -> None:
    """The executor builds the input before the run's access opens; forgetting to set
    the token is a bad_input, never a run that talks to the host unauthenticated."""
    inp = replace(representative(), token="")
    with pytest.raises(agent.InputError, match=r"api\.token"):
        agent.parse_input(through_json(inp.to_dict()))


def test_an_operators_file_is_completed_into_an_input_the_agent_parses() -> None:
    data = build_input(
        CONFIG,
        {"prompt": "hi", "caller": {"id": 7, "name": "ops"}, "run_id": "forged"},
        run_id="r1",
        space_id="s1",
        token="t1",
    )
    parsed = agent.parse_input(through_json(data))
    assert (parsed.run_id, parsed.prompt, parsed.caller) == ("r1", "hi", agent.Caller("7", "ops"))
    assert parsed.profile == "coding"
    assert [leg.model for leg in parsed.model.chain] == ["claude-a", "gpt-b"]


def test_an_operators_file_without_a_prompt_still_fails_in_the_agent_naming_it() -> None:
    data = build_input(CONFIG, {}, run_id="r1", space_id="s1", token="t1")
    with pytest.raises(agent.InputError, match="prompt"):
        agent.parse_input(through_json(data))


# --------------------------------------------------------------------------- result.json


def raw(result: dict[str, object]) -> bytes:
    return json.dumps(result, ensure_ascii=False).encode("utf-8")


def test_an_ok_result_the_agent_writes_is_read_whole_by_the_host() -> None:
    usage = agent.Usage(input_tokens=120, output_tokens=34, model="gpt-b", cost_usd=0.002)
    attempts = [{"provider": "openai", "model": "gpt-b", "ok": True}]
    written = agent.ok_result("here it is", usage, ["outbox/plot.png"], attempts)
    read = parse_result(raw(written))
    assert read.problem is None
    assert (read.ok, read.reply, read.files) == (True, "here it is", ["outbox/plot.png"])
    assert read.usage == {
        "input_tokens": 120,
        "output_tokens": 34,
        "model": "gpt-b",
        "cost_usd": 0.002,
    }
    assert read.data is not None and read.data["attempts"] == attempts


def test_the_echo_modes_minimal_result_is_read_by_the_host() -> None:
    read = parse_result(raw(agent.ok_result("echo", agent.Usage(output_tokens=1))))
    assert (read.problem, read.ok, read.reply, read.files) == (None, True, "echo", [])


def test_the_tool_calls_the_agent_records_reach_the_host() -> None:
    tools = [
        {"name": "notes__add_note", "ok": True, "ms": 8, "input": '{"text": "x"}', "output": "ok"},
        {"name": "bash", "ok": False, "ms": 1, "input": '{"command": "false"}', "output": "1"},
    ]
    written = agent.ok_result("done", agent.Usage(), [], [], tools)
    assert parse_result(raw(written)).tools == tools
    failed = agent.error_result("too many turns", agent.MAX_TURNS, [], None, tools)
    assert parse_result(raw(failed)).tools == tools
    # A run without tool calls (the echo, an agent CLI) writes no "tools" at all.
    assert "tools" not in agent.ok_result("echo", agent.Usage())
    assert parse_result(raw(agent.ok_result("echo", agent.Usage()))).tools == []


@pytest.mark.parametrize(
    "error_class",
    [
        agent.BAD_INPUT,
        agent.INTERNAL,
        agent.AUTH,
        agent.BUDGET,
        agent.MODEL,
        agent.MAX_TURNS,
        agent.AGENT_CLI,
    ],
)
def test_every_failure_the_agent_reports_reaches_the_host_and_has_its_own_notice(
    error_class: str,
) -> None:
    usage = agent.Usage(input_tokens=5, output_tokens=1, model="claude-a")
    written = agent.error_result("it broke", error_class, attempts=[], usage=usage)
    read = parse_result(raw(written))
    assert (read.problem, read.ok, read.error) == (None, False, "it broke")
    assert read.usage["input_tokens"] == 5
    assert read.data is not None and read.data["error_class"] == error_class
    # The run executor passes error_class to the notice: each has its own words.
    generic = failure_notice("error", "no-such-class")
    assert failure_notice("error", error_class, limit=30) != generic
