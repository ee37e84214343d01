"""The agent as an MCP client, against the shipped example server (extensions/notes-mcp)
run for real: over stdio with this venv's python, and over streamable HTTP behind the
relay and a stand-in for the host API on a unix socket. Plus the environment extensions
give a run, input.json's new fields, and a whole run whose model calls an MCP tool.
"""

from __future__ import annotations

import asyncio
import json
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from aiohttp import web
from mercury_agent import contract
from mercury_agent.contract import ExtensionInput, InputError, McpServerInput
from mercury_agent.extensions import extension_env, service_env_name
from mercury_agent.mcp_tools import McpHub, input_schema, render_content, tool_name
from mercury_agent.relay import Relay
from mercury_agent.tools import ToolContext, run_tool

from tests.fakes.model_server import FakeModelServer, Text, ToolCall, Turn

REPO = Path(__file__).resolve().parents[3]
NOTES_DIR = REPO / "extensions" / "notes-mcp"
RESOURCES = REPO / "resources"
# This venv stands in for the extension's own: "python" must resolve to its bin/python.
VENV = sys.prefix
TOKEN = "run-token-mcp"
ECHO_ENV = (
    'echo "$MERCURY_EXT_NOTES_MCP_GREETING|$HTTPS_PROXY|$MERCURY_SERVICE_NOTES_MCP_GITHUB_URL"'
)


def notes_extension(*servers: McpServerInput, venv: str | None = VENV) -> ExtensionInput:
    servers = servers or (McpServerInput("notes", command=("python", "server.py")),)
    return ExtensionInput(name="notes-mcp", dir=str(NOTES_DIR), venv=venv, mcp=servers)


def processes_with(marker: str) -> list[int]:
    """Our processes whose command line or environment holds `marker`."""
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit() or int(entry.name) == os.getpid():
            continue
        try:
            text = (entry / "cmdline").read_bytes() + (entry / "environ").read_bytes()
        except OSError:
            continue
        if marker.encode() in text:
            found.append(int(entry.name))
    return found


@pytest.fixture
def space(tmp_path: Path) -> Path:
    path = tmp_path / "space"
    path.mkdir()
    return path


def run_env(space: Path, **extra: str) -> dict[str, str]:
    return {**os.environ, "MERCURY_SPACE_DIR": str(space), **extra}


# ------------------------------------------------------------------ the hub over stdio


async def test_the_example_servers_tools_are_listed_and_called(
    space: Path, capfd: pytest.CaptureFixture[str]
) -> None:
    marker = uuid.uuid4().hex
    hub = McpHub([notes_extension()], env=run_env(space, MCP_TEST_MARKER=marker))
    async with hub:
        assert hub.names == ["notes__add_note", "notes__list_notes"]
        add = hub.tools[0]
        assert "note" in add.description.lower()
        assert add.parameters["type"] == "object"
        assert add.parameters["required"] == ["text"]
        assert processes_with(marker), "the server should be running while the hub is open"

        added = await hub.call("notes__add_note", {"text": "buy  milk\n"})
        assert (added.is_error, added.content) == (False, "Noted. 1 note(s) saved in notes.md.")
        await hub.call("notes__add_note", {"text": "call Ada"})
        listed = await hub.call("notes__list_notes", {})
        assert (listed.is_error, listed.content) == (False, "1. buy milk\n2. call Ada")

        # A tool's own error reaches the model as a tool error with its message.
        empty = await hub.call("notes__add_note", {"text": "  "})
        assert empty.is_error and "the note is empty" in empty.content
        # Arguments the schema refuses, and a name the hub does not know.
        wrong = await hub.call("notes__add_note", {})
        assert wrong.is_error
        unknown = await hub.call("notes__nope", {})
        assert unknown.is_error and "unknown tool" in unknown.content
    assert (space / "notes.md").read_text() == "- buy milk\n- call Ada\n"
    assert processes_with(marker) == [], "a server outlived the hub"
    assert "mcp server notes started: 2 tools (add_note, list_notes)" in capfd.readouterr().err


async def test_the_loop_reaches_the_hubs_tools_through_the_tool_context(space: Path) -> None:
    async with McpHub([notes_extension()], env=run_env(space)) as hub:
        ctx = ToolContext(space_dir=space, bash_timeout_s=30, extra=hub.handlers())
        outcome = await run_tool(ctx, "notes__add_note", {"text": "from the loop"})
        assert not outcome.is_error, outcome.content
        builtin = await run_tool(ctx, "list_files", {})
        assert "notes.md" in builtin.content
        unknown = await run_tool(ctx, "nope", {})
        assert unknown.is_error and "notes__add_note" in unknown.content
    assert (space / "notes.md").read_text() == "- from the loop\n"


async def test_servers_that_do_not_start_are_left_out_and_the_others_work(
    space: Path, capfd: pytest.CaptureFixture[str]
) -> None:
    marker = uuid.uuid4().hex
    ext = notes_extension(
        McpServerInput("exits", command=(sys.executable, "-c", "import sys; sys.exit(3)")),
        McpServerInput("missing", command=("no-such-mcp-server-command",)),
        McpServerInput("silent", command=(sys.executable, "-c", "import time; time.sleep(600)")),
        McpServerInput("notes", command=("python", "server.py")),
        McpServerInput("remote", url="/v1/ext/notes-mcp/mcp/remote"),  # no relay given
    )
    hub = McpHub(
        [ext], env=run_env(space, MCP_TEST_MARKER=marker), startup_timeout_s=8, call_timeout_s=20
    )
    async with hub:
        assert hub.names == ["notes__add_note", "notes__list_notes"]
        assert not (await hub.call("notes__list_notes", {})).is_error
    err = capfd.readouterr().err
    for name in ("exits", "missing", "silent", "remote"):
        assert f"mercury-agent: mcp server {name} failed to start: " in err, err
    assert "mcp server silent failed to start: no answer within 8 s" in err
    assert "no-such-mcp-server-command" in err
    assert processes_with(marker) == [], "a server outlived the hub"


async def test_python_is_the_extensions_own_and_path_starts_with_its_bins(
    space: Path, tmp_path: Path
) -> None:
    """Without a venv "python" is looked up on PATH; with one it is the venv's python,
    whatever PATH says (here: a PATH where no python is found at all)."""
    env = run_env(space, PATH=str(tmp_path / "empty"))
    async with McpHub([notes_extension()], env=env) as hub:
        assert hub.names == ["notes__add_note", "notes__list_notes"]
    async with McpHub([notes_extension(venv=None)], env=env) as hub:
        assert hub.names == []


# ------------------------------------------------------------------ remote, via the relay


@dataclass
class HostStandIn:
    """The host API on a unix socket: /model/... to the fake model server, and the remote
    MCP route to the notes server's streamable HTTP endpoint, recording the run token."""

    socket: str
    root: Path
    fake: FakeModelServer
    mcp_tokens: list[str | None] = field(default_factory=list)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.fixture
def http_notes(tmp_path: Path) -> Iterator[str]:
    """The example server over streamable HTTP on 127.0.0.1; yields its /mcp URL."""
    port = _free_port()
    proc = subprocess.Popen(
        [sys.executable, "server.py", "--http", f"127.0.0.1:{port}"],
        cwd=NOTES_DIR,
        env=run_env(tmp_path),
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        for _ in range(600):
            if proc.poll() is not None:
                raise AssertionError(f"the HTTP notes server exited ({proc.returncode})")
            with socket.socket() as s:
                if s.connect_ex(("127.0.0.1", port)) == 0:
                    break
            time.sleep(0.05)
        yield f"http://127.0.0.1:{port}/mcp"
    finally:
        proc.terminate()
        proc.wait(timeout=10)


@pytest.fixture
async def host(http_notes: str) -> AsyncIterator[HostStandIn]:
    root = Path(tempfile.mkdtemp(prefix="mcp", dir="/tmp"))  # sun_path is short
    async with FakeModelServer() as fake, aiohttp.ClientSession(auto_decompress=False) as client:
        stand_in = HostStandIn(str(root / "api.sock"), root, fake)

        async def forward(request: web.Request, url: str) -> web.StreamResponse:
            body = await request.read()
            skip = {"host", "content-length", "transfer-encoding", "connection"}
            headers = {k: v for k, v in request.headers.items() if k.lower() not in skip}
            async with client.request(
                request.method, url, data=body or None, headers=headers
            ) as upstream:
                resp = web.StreamResponse(status=upstream.status)
                for key, value in upstream.headers.items():
                    if key.lower() not in ("content-length", "transfer-encoding", "connection"):
                        resp.headers[key] = value
                await resp.prepare(request)
                async for chunk in upstream.content.iter_any():
                    await resp.write(chunk)
                await resp.write_eof()
                return resp

        async def model(request: web.Request) -> web.StreamResponse:
            return await forward(request, f"{fake.url}/{request.match_info['tail']}")

        async def mcp(request: web.Request) -> web.StreamResponse:
            stand_in.mcp_tokens.append(request.headers.get("X-Mercury-Run-Token"))
            return await forward(request, http_notes)

        app = web.Application()
        app.router.add_post("/model/{provider}/{tail:.*}", model)
        app.router.add_route("*", "/v1/ext/notes-mcp/mcp/notes", mcp)
        runner = web.AppRunner(app, access_log=None)
        await runner.setup()
        await web.UnixSite(runner, stand_in.socket).start()
        try:
            yield stand_in
        finally:
            await runner.cleanup()
    shutil.rmtree(root, ignore_errors=True)


async def test_a_remote_server_is_reached_through_the_relay_with_the_run_token(
    host: HostStandIn, space: Path
) -> None:
    ext = ExtensionInput(
        name="notes-mcp",
        dir=str(NOTES_DIR),
        mcp=(McpServerInput("notes", url="/v1/ext/notes-mcp/mcp/notes"),),
    )
    async with Relay(host.socket) as relay:
        hub = McpHub([ext], env=run_env(space), relay_url=relay.url, token=TOKEN)
        async with hub:
            assert hub.names == ["notes__add_note", "notes__list_notes"]
            listed = await hub.call("notes__list_notes", {})
            assert (listed.is_error, listed.content) == (False, "No notes yet.")
    assert host.mcp_tokens and set(host.mcp_tokens) == {TOKEN}


# ------------------------------------------------------------------ a whole run


async def test_a_run_calls_an_mcp_tool_and_records_it(host: HostStandIn, space: Path) -> None:
    io_dir = host.root / "io"
    io_dir.mkdir()
    host.fake.script(
        [
            Turn([ToolCall("notes__add_note", {"text": "buy milk"})]),
            Turn([ToolCall("bash", {"command": ECHO_ENV})]),
            Turn([Text("Saved your note.")]),
        ]
    )
    data = {
        "run_id": "run-mcp",
        "space_id": "space-1",
        "platform": "web",
        "prompt": "Remember to buy milk.",
        "caller": {"id": "u1", "name": "Ada", "role": "member"},
        "model": {"chain": [{"provider": "anthropic", "model": "m"}], "retries_per_leg": 0},
        "api": {"socket": host.socket, "token": TOKEN},
        "egress": True,
        "extensions": [
            {
                "name": "notes-mcp",
                "dir": str(NOTES_DIR),
                "venv": VENV,
                "env": {"MERCURY_EXT_NOTES_MCP_GREETING": "hello from the settings"},
                "services": {"github": "/v1/ext/notes-mcp/svc/github"},
                "mcp": [{"name": "notes", "command": ["python", "server.py"], "env": {}}],
            }
        ],
    }
    (io_dir / "input.json").write_text(json.dumps(data), encoding="utf-8")
    env = {
        k: v
        for k, v in os.environ.items()
        if not k.startswith(("MERCURY_", "ANTHROPIC_", "OPENAI_"))
    }
    env |= {"MERCURY_SPACE_DIR": str(space), "MERCURY_RESOURCES_DIR": str(RESOURCES)}
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "mercury_agent",
        "--io-dir",
        str(io_dir),
        env=env,
        stdout=asyncio.subprocess.DEVNULL,
        stderr=asyncio.subprocess.PIPE,
    )
    _, stderr = await asyncio.wait_for(proc.communicate(), 120)
    assert proc.returncode == 0, stderr.decode()

    result = json.loads((io_dir / "result.json").read_text(encoding="utf-8"))
    assert (result["ok"], result["reply"]) == (True, "Saved your note."), result
    added, bash = result["tools"]
    assert {k: added[k] for k in ("name", "ok", "input", "output")} == {
        "name": "notes__add_note",
        "ok": True,
        "input": '{"text": "buy milk"}',
        "output": "Noted. 1 note(s) saved in notes.md.",
    }
    assert isinstance(added["ms"], int) and added["ms"] >= 0
    # The processes the agent starts get the extension's settings and service URLs (on
    # the relay) and, as the run has egress, the egress relay as their proxy.
    assert (bash["name"], bash["ok"]) == ("bash", True)
    greeting, proxy, service = bash["output"].splitlines()[0].split("|")
    assert greeting == "hello from the settings"
    assert proxy.startswith("http://127.0.0.1:")
    assert service.startswith("http://127.0.0.1:")
    assert service.endswith("/v1/ext/notes-mcp/svc/github")
    assert service.split("/v1/")[0] != proxy
    assert (space / "notes.md").read_text() == "- buy milk\n"

    first, second, _ = host.fake.requests
    # The relay sends the run token with everything it forwards.
    assert first.headers.get("x-mercury-run-token") == TOKEN
    offered = [tool["name"] for tool in first.body["tools"]]
    assert offered[:6] == [
        "bash",
        "read_file",
        "write_file",
        "edit_file",
        "list_files",
        "send_file",
    ]
    assert offered[6:] == ["notes__add_note", "notes__list_notes"]
    assert "notes__add_note, notes__list_notes" in json.dumps(first.body["system"])
    tool_result = second.body["messages"][-1]["content"][0]
    assert tool_result["type"] == "tool_result"
    assert "Noted. 1 note(s)" in json.dumps(tool_result["content"])


# ------------------------------------------------------------------ pure parts


def test_tool_names_are_what_providers_accept_and_unique() -> None:
    taken = {"bash"}
    assert tool_name("notes", "add_note", taken) == "notes__add_note"
    assert tool_name("my server", "do.it/now", taken) == "my_server__do_it_now"
    assert tool_name("my server", "do it now", taken) == "my_server__do_it_now_2"
    long = tool_name("s" * 40, "t" * 40, taken)
    assert len(long) == 64 and long == "s" * 40 + "__" + "t" * 22
    again = tool_name("s" * 40, "t" * 40, taken)
    assert len(again) == 64 and again.endswith("_2") and again != long
    assert {"notes__add_note", "my_server__do_it_now", long, again} < taken


def test_schemas_are_object_schemas() -> None:
    assert input_schema({"type": "object", "properties": {"a": {}}}) == {
        "type": "object",
        "properties": {"a": {}},
    }
    assert input_schema(None) == {"type": "object", "properties": {}}
    assert input_schema({"properties": {"a": {}}})["type"] == "object"


def test_results_are_text_for_the_model() -> None:
    from mcp.types import (
        BlobResourceContents,
        EmbeddedResource,
        ImageContent,
        ResourceLink,
        TextContent,
        TextResourceContents,
    )

    blocks = [
        TextContent(text="first"),
        ImageContent(data="aGVsbG8=", mime_type="image/png"),
        ResourceLink(uri="file:///space/a.txt", name="a.txt"),
        EmbeddedResource(
            resource=TextResourceContents(uri="mem://x", mime_type="text/plain", text="inner")
        ),
        EmbeddedResource(resource=BlobResourceContents(uri="mem://y", blob="AAAA")),
    ]
    assert render_content(blocks).splitlines() == [
        "first",
        "[image: image/png, 5 bytes, not shown]",
        "[resource link: file:///space/a.txt (a.txt)]",
        "[resource mem://x (text/plain)]",
        "inner",
        "[resource mem://y: unknown type, 3 bytes, not shown]",
    ]
    assert render_content([], {"total": 3}) == '{"total": 3}'
    assert render_content([]) == "(no output)"
    assert "more characters omitted" in render_content([TextContent(text="x" * 200_000)])


def test_extension_env_gives_settings_services_and_commands() -> None:
    exts = [
        ExtensionInput(
            name="web-reader",
            dir="/opt/mercury/ext/web-reader",
            venv="/opt/mercury-ext/web-reader",
            env={"MERCURY_EXT_WEB_READER_MAX_CHARS": "20000"},
            services={"git-hub": "/v1/ext/web-reader/svc/git-hub"},
        ),
        ExtensionInput(name="notes-mcp", dir="/opt/mercury/ext/notes-mcp"),
    ]
    env = extension_env(exts, "http://127.0.0.1:4000/", "/opt/mercury-agent/bin:/usr/bin")
    assert env["MERCURY_EXT_WEB_READER_MAX_CHARS"] == "20000"
    assert service_env_name("web-reader", "git-hub") == "MERCURY_SERVICE_WEB_READER_GIT_HUB_URL"
    assert env["MERCURY_SERVICE_WEB_READER_GIT_HUB_URL"] == (
        "http://127.0.0.1:4000/v1/ext/web-reader/svc/git-hub"
    )
    path = env["PATH"].split(":")
    assert path[:5] == [
        "/opt/mercury/ext/web-reader/bin",
        "/opt/mercury-ext/web-reader/bin",
        "/opt/mercury-ext/web-reader/node/bin",
        "/opt/mercury/ext/notes-mcp/bin",
        "/opt/mercury-agent/bin",
    ]
    assert path[5] == "/usr/bin"
    # The agent's own bin (mercury-ctl) stays reachable even when PATH lacked it.
    assert str(Path(sys.executable).parent) in extension_env(exts, "http://x", "/bin")["PATH"]
    assert extension_env([], "http://x", "/bin") == {}


# ------------------------------------------------------------------ input.json


BASE: dict[str, Any] = {"run_id": "r", "space_id": "s", "prompt": "p"}
EXT: dict[str, Any] = {
    "name": "notes-mcp",
    "dir": "/opt/mercury/ext/notes-mcp",
    "venv": None,
    "env": {},
    "services": {},
    "mcp": [{"name": "notes", "command": ["python", "server.py"], "env": {}, "url": None}],
}


def test_new_fields_default_and_parse() -> None:
    plain = contract.parse_input(BASE)
    assert (plain.egress, plain.extensions) == (False, [])
    parsed = contract.parse_input({**BASE, "egress": True, "extensions": [EXT]})
    assert parsed.egress is True
    assert parsed.extensions == [
        ExtensionInput(
            name="notes-mcp",
            dir="/opt/mercury/ext/notes-mcp",
            mcp=(McpServerInput("notes", command=("python", "server.py")),),
        )
    ]


def _mcp(**change: Any) -> dict[str, Any]:
    return {**EXT, "mcp": [{**EXT["mcp"][0], **change}]}


@pytest.mark.parametrize(
    ("data", "where", "message"),
    [
        ({"egress": "yes"}, "egress", "true or false"),
        ({"extensions": {"notes": {}}}, "extensions", "expected a list"),
        ({"extensions": ["notes"]}, "extensions[0]", "expected an object"),
        ({"extensions": [EXT] * 65}, "extensions", "at most 64"),
        ({"extensions": [EXT, EXT]}, "extensions", "unique"),
        ({"extensions": [{**EXT, "name": "Notes!"}]}, "extensions[0].name", "extension name"),
        ({"extensions": [{"name": "notes"}]}, "extensions[0].dir", "missing"),
        ({"extensions": [{**EXT, "dir": "ext/notes"}]}, "extensions[0].dir", "absolute"),
        ({"extensions": [{**EXT, "venv": 3}]}, "extensions[0].venv", "expected a string"),
        ({"extensions": [{**EXT, "env": {"A B": "x"}}]}, "extensions[0].env", "variable name"),
        ({"extensions": [{**EXT, "env": {"A": 1}}]}, "extensions[0].env.A", "expected a string"),
        (
            {"extensions": [{**EXT, "services": {"gh": "https://api.github.com"}}]},
            "extensions[0].services.gh",
            "path on the host API",
        ),
        ({"extensions": [_mcp(command=None)]}, "extensions[0].mcp[0]", "exactly one"),
        (
            {"extensions": [_mcp(url="/v1/ext/notes-mcp/mcp/notes")]},
            "extensions[0].mcp[0]",
            "exactly one",
        ),
        ({"extensions": [_mcp(command=[])]}, "extensions[0].mcp[0].command", "non-empty"),
        ({"extensions": [_mcp(command="python server.py")]}, "mcp[0].command", "a list"),
        (
            {"extensions": [_mcp(command=None, url="https://mcp.example.com/mcp")]},
            "extensions[0].mcp[0].url",
            "path on the host API",
        ),
        ({"extensions": [_mcp(name="")]}, "extensions[0].mcp[0].name", "empty"),
        (
            {"extensions": [{**EXT, "mcp": EXT["mcp"] * 2}]},
            "extensions[0].mcp",
            "unique",
        ),
    ],
)
def test_bad_extension_fields_are_refused_naming_the_field(
    data: dict[str, Any], where: str, message: str
) -> None:
    with pytest.raises(InputError) as info:
        contract.parse_input({**BASE, **data})
    assert where in str(info.value)
    assert message in str(info.value)


# ------------------------------------------------------------------ misbehaving servers

SLOW_SERVER = """
import os, time
from mcp.server.mcpserver import MCPServer

server = MCPServer("slow", log_level="WARNING")


@server.tool()
def nap(seconds: float) -> str:
    time.sleep(seconds)
    return f"slept {seconds}"


@server.tool()
def crash() -> str:
    os._exit(1)


@server.tool()
def picture() -> list:
    from mcp.server.mcpserver import Image
    return ["a chart:", Image(data=b"\\x89PNG....", format="png")]


server.run()
"""


async def test_a_call_that_outlasts_its_time_limit_or_kills_its_server_is_a_tool_error(
    space: Path, tmp_path: Path
) -> None:
    (tmp_path / "slow").mkdir()
    (tmp_path / "slow" / "server.py").write_text(SLOW_SERVER, encoding="utf-8")
    ext = ExtensionInput(
        name="slow",
        dir=str(tmp_path / "slow"),
        venv=VENV,
        mcp=(McpServerInput("slow", command=("python", "server.py")),),
    )
    async with McpHub([ext], env=run_env(space), call_timeout_s=30) as hub:
        assert hub.names == ["slow__nap", "slow__crash", "slow__picture"]
        late = await hub.call("slow__nap", {"seconds": 20}, timeout_s=1)
        assert late.is_error and "timed out after 1 s" in late.content
        # The server is still there for the next call.
        quick = await hub.call("slow__nap", {"seconds": 0})
        assert (quick.is_error, quick.content) == (False, "slept 0.0")
        picture = await hub.call("slow__picture", {})
        assert picture.content == "a chart:\n[image: image/png, 8 bytes, not shown]"
        crashed = await hub.call("slow__crash", {})
        assert crashed.is_error and "slow" in crashed.content
        after = await hub.call("slow__nap", {"seconds": 0})
        assert after.is_error


async def test_a_run_failure_still_reports_its_tool_calls(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import mercury_agent.main as main

    calls = [{"name": "bash", "ok": True, "ms": 1, "input": "{}", "output": "x"}]

    def fails(_inp: Any, attempts: list[dict[str, Any]]) -> Any:
        error = contract.AgentError("too many turns", contract.MAX_TURNS)
        error.tools = calls
        raise error

    monkeypatch.setattr(main, "respond", fails)
    data = {
        **BASE,
        "model": {"chain": [{"provider": "anthropic", "model": "m"}]},
        "api": {"socket": "/nowhere.sock", "token": "t"},
    }
    (tmp_path / "input.json").write_text(json.dumps(data), encoding="utf-8")
    assert main.main(["--io-dir", str(tmp_path)], env={}) == 1
    result = json.loads((tmp_path / "result.json").read_text(encoding="utf-8"))
    assert (result["error_class"], result["tools"]) == ("max_turns", calls)
