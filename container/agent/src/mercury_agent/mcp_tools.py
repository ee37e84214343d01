"""The agent as an MCP client: the tools of the run's granted MCP servers, beside its own.

Each MCP server an extension declares is started when the run starts - a stdio `command`
in the container (cwd = the extension's folder, its venv and bin/ first on PATH), or a
remote server reached through the relay (its `url` is a path there: the host forwards it
and adds the credentials) - initialized, and asked for its tools. They are offered to the
model as `<server>__<tool>` beside the built-in tools; a call goes back to the server.

A server is an extra, never a requirement: one that does not start, does not answer within
STARTUP_TIMEOUT_S or fails to list its tools is left out with one line in the log, and the
run goes on without it. Every session and process is closed when the hub closes (the SDK
stops a stdio server's whole process tree).

The `mcp` package is imported only by runs that have MCP servers: importing it costs about
a second, which no other run should pay.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import contextlib
import json
import math
import re
import sys
import time
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from types import TracebackType
from typing import Any, Self, TextIO

from mercury_agent.contract import ExtensionInput, McpServerInput
from mercury_agent.conversation import ToolDef
from mercury_agent.extensions import bin_dirs, prepend_path
from mercury_agent.tools import TOOLS, ToolHandler, ToolOutcome

STARTUP_TIMEOUT_S = 30.0
# After the stop signal, how long a server's shutdown may take (the SDK bounds a stdio
# server's to about 6 s: stdin closed, SIGTERM, SIGKILL).
CLOSE_TIMEOUT_S = 15.0
DEFAULT_CALL_TIMEOUT_S = 120.0
TOOL_NAME_MAX = 64  # what the providers accept: ^[a-zA-Z0-9_-]{1,64}$
MAX_TOOLS_PER_SERVER = 128
# OpenAI takes at most 128 tools in a request: room for the built-in ones and a few more.
MAX_MCP_TOOLS = 112
MAX_DESCRIPTION_CHARS = 2000
MAX_OUTPUT_CHARS = 100_000
RUN_TOKEN_HEADER = "X-Mercury-Run-Token"
_UNSAFE = re.compile(r"[^A-Za-z0-9_-]")
_PYTHON = ("python", "python3")


def _log(message: str) -> None:
    print(f"mercury-agent: {message}", file=sys.stderr, flush=True)


# --------------------------------------------------------------------------- pure parts


def tool_name(server: str, tool: str, taken: set[str]) -> str:
    """`<server>__<tool>` as providers accept it ([A-Za-z0-9_-], <= 64), unique in `taken`
    (which receives it)."""
    base = _UNSAFE.sub("_", f"{server}__{tool}")[:TOOL_NAME_MAX]
    name, n = base, 2
    while name in taken:
        suffix = f"_{n}"
        name = base[: TOOL_NAME_MAX - len(suffix)] + suffix
        n += 1
    taken.add(name)
    return name


def input_schema(raw: Any) -> dict[str, Any]:
    """A tool's JSON schema as both wire formats want it: an object schema at the root."""
    if not isinstance(raw, dict):
        return {"type": "object", "properties": {}}
    if raw.get("type") != "object":
        return {**raw, "type": "object", "properties": raw.get("properties") or {}}
    return raw


def stdio_command(ext: ExtensionInput, server: McpServerInput) -> list[str]:
    """The argv of a stdio server: "python" is the extension's own venv's, when it has one
    (that is where its install steps put the server's packages)."""
    assert server.command is not None
    argv = list(server.command)
    if ext.venv and argv[0] in _PYTHON:
        argv[0] = f"{ext.venv.rstrip('/')}/bin/python"
    return argv


def stdio_env(
    ext: ExtensionInput, server: McpServerInput, env: Mapping[str, str]
) -> dict[str, str]:
    """The run's child environment, the server's own variables, the extension's bins first."""
    values = {**env, **server.env}
    values["PATH"] = prepend_path(bin_dirs(ext), values.get("PATH", ""))
    return values


def _size_of_base64(data: str) -> int:
    try:
        return len(base64.b64decode(data, validate=False))
    except (binascii.Error, ValueError):
        return len(data) * 3 // 4


def render_content(blocks: Iterable[Any], structured: Any = None) -> str:
    """A tool result as text for the model: text joined, anything else in one line."""
    parts: list[str] = []
    for block in blocks:
        kind = getattr(block, "type", None)
        if kind == "text":
            parts.append(block.text)
        elif kind in ("image", "audio"):
            size = _size_of_base64(block.data)
            parts.append(f"[{kind}: {block.mime_type}, {size} bytes, not shown]")
        elif kind == "resource_link":
            label = f" ({block.name})" if getattr(block, "name", None) else ""
            parts.append(f"[resource link: {block.uri}{label}]")
        elif kind == "resource":
            res = block.resource
            mime = getattr(res, "mime_type", None) or "unknown type"
            text = getattr(res, "text", None)
            if isinstance(text, str):
                parts.append(f"[resource {res.uri} ({mime})]\n{text}")
            else:
                size = _size_of_base64(getattr(res, "blob", "") or "")
                parts.append(f"[resource {res.uri}: {mime}, {size} bytes, not shown]")
        else:
            parts.append(f"[{kind or type(block).__name__} content, not shown]")
    if not parts and structured is not None:
        parts.append(json.dumps(structured, ensure_ascii=False, default=str))
    text = "\n".join(parts).strip() or "(no output)"
    if len(text) > MAX_OUTPUT_CHARS:
        omitted = len(text) - MAX_OUTPUT_CHARS
        text = text[:MAX_OUTPUT_CHARS] + f"\n[... {omitted} more characters omitted ...]"
    return text


def _reason(exc: BaseException) -> str:
    """One line for an error, looking inside the exception groups anyio raises."""
    while isinstance(exc, BaseExceptionGroup) and exc.exceptions:
        exc = exc.exceptions[0]
    text = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__


# --------------------------------------------------------------------------- servers


@dataclass(frozen=True)
class McpTool:
    """A server's tool as the model sees it (`definition.name` is the exposed name)."""

    definition: ToolDef
    server: str
    tool: str  # the server's own name for it


class _Server:
    """One MCP server; its session lives in a task of its own.

    The SDK's transports are anyio task groups, which must be entered and left by the same
    task: the task opens the transport and the session, sets `ready`, and holds both open
    until `stop` is set. A deadline on the task's cancel scope bounds the start-up.
    """

    def __init__(
        self,
        ext: ExtensionInput,
        spec: McpServerInput,
        *,
        env: Mapping[str, str],
        relay_url: str | None,
        token: str | None,
        startup_timeout_s: float,
        errlog: TextIO,
    ) -> None:
        self.ext, self.spec = ext, spec
        self.name = spec.name
        self._env = env
        self._relay_url = relay_url
        self._token = token
        self._startup_timeout_s = startup_timeout_s
        self._errlog = errlog
        self.session: Any = None
        self.tools: list[Any] = []
        self.error: str | None = None
        self.ready = asyncio.Event()
        self._stop = asyncio.Event()
        self._task: asyncio.Task[None] | None = None

    def start(self) -> None:
        self._task = asyncio.create_task(self._run(), name=f"mcp-{self.name}")

    def _transport(self) -> contextlib.AbstractAsyncContextManager[Any]:
        if self.spec.command is not None:
            from mcp import StdioServerParameters, stdio_client

            argv = stdio_command(self.ext, self.spec)
            params = StdioServerParameters(
                command=argv[0],
                args=argv[1:],
                env=stdio_env(self.ext, self.spec, self._env),
                cwd=self.ext.dir,
            )
            return stdio_client(params, errlog=self._errlog)
        return self._remote()

    @contextlib.asynccontextmanager
    async def _remote(self) -> Any:
        import httpx2
        from mcp.client.streamable_http import streamable_http_client

        if not self._relay_url:
            raise RuntimeError("a remote MCP server needs the host API relay")
        assert self.spec.url is not None
        url = self._relay_url.rstrip("/") + self.spec.url
        # The relay adds the run token too; sending it here does not depend on that.
        headers = {RUN_TOKEN_HEADER: self._token} if self._token else {}
        client = httpx2.AsyncClient(
            headers=headers,
            timeout=httpx2.Timeout(30.0, read=300.0),
            trust_env=False,  # 127.0.0.1: never through a proxy
        )
        async with client, streamable_http_client(url, http_client=client) as streams:
            yield streams

    async def _run(self) -> None:
        import anyio
        from mcp import ClientSession
        from mcp.types import Implementation

        started = False
        try:
            deadline = anyio.current_time() + self._startup_timeout_s
            with anyio.CancelScope(deadline=deadline) as scope:
                async with (
                    self._transport() as (read, write),
                    ClientSession(
                        read, write, client_info=Implementation(name="mercury", version="1")
                    ) as session,
                ):
                    await session.initialize()
                    self.tools = await _list_tools(session)
                    self.session = session
                    started = True
                    scope.deadline = math.inf  # started: from now on the run decides
                    self.ready.set()
                    await self._stop.wait()
            if not started and scope.cancelled_caught:
                self.error = f"no answer within {self._startup_timeout_s:g} s"
        except Exception as exc:  # whatever the server did, the run goes on without it
            if not started:
                self.error = _reason(exc)
            else:
                _log(f"mcp server {self.name} ended with an error: {_reason(exc)}")
        finally:
            self.session = None
            if not started and self.error is None:
                self.error = "it stopped during start-up"
            self.ready.set()

    async def close(self) -> None:
        self._stop.set()
        task = self._task
        if task is None or task.done():
            return
        try:
            await asyncio.wait_for(asyncio.shield(task), CLOSE_TIMEOUT_S)
        except TimeoutError:
            task.cancel()
            with contextlib.suppress(BaseException):
                await task


async def _list_tools(session: Any) -> list[Any]:
    """Every tool of the server (following pagination), at most MAX_TOOLS_PER_SERVER."""
    from mcp.types import PaginatedRequestParams

    tools: list[Any] = []
    cursor: str | None = None
    while True:
        params = PaginatedRequestParams(cursor=cursor) if cursor else None
        result = await session.list_tools(params=params)
        tools.extend(result.tools)
        cursor = result.next_cursor
        if not cursor or len(tools) >= MAX_TOOLS_PER_SERVER:
            return tools[:MAX_TOOLS_PER_SERVER]


# --------------------------------------------------------------------------- the hub


class McpHub:
    """The MCP servers of a run's extensions: started together, their tools, their calls.

    `env` is the environment of the run's child processes (a stdio server is one);
    `relay_url` and `token` reach remote servers through the host. Use as an async context
    manager; `tools` and `call` are valid inside it.
    """

    def __init__(
        self,
        extensions: Sequence[ExtensionInput],
        *,
        env: Mapping[str, str],
        relay_url: str | None = None,
        token: str | None = None,
        call_timeout_s: float = DEFAULT_CALL_TIMEOUT_S,
        startup_timeout_s: float = STARTUP_TIMEOUT_S,
        reserved: Iterable[str] = tuple(t.name for t in TOOLS),
        errlog: TextIO | None = None,
    ) -> None:
        self.call_timeout_s = call_timeout_s
        self._reserved = set(reserved)
        errlog = errlog if errlog is not None else _stderr()
        self._servers = [
            _Server(
                ext,
                spec,
                env=env,
                relay_url=relay_url,
                token=token,
                startup_timeout_s=startup_timeout_s,
                errlog=errlog,
            )
            for ext in extensions
            for spec in ext.mcp
        ]
        self._tools: dict[str, tuple[McpTool, _Server]] = {}

    @property
    def tools(self) -> list[ToolDef]:
        """The tools of the servers that started, in server order."""
        return [tool.definition for tool, _server in self._tools.values()]

    @property
    def names(self) -> list[str]:
        return list(self._tools)

    async def start(self) -> None:
        """Start every server at once and wait until each is up or left out."""
        if not self._servers:
            return
        try:
            for server in self._servers:
                server.start()
            await asyncio.gather(*(s.ready.wait() for s in self._servers))
        except BaseException:
            await self.close()
            raise
        taken = set(self._reserved)
        for server in self._servers:
            if server.error is not None:
                _log(f"mcp server {server.name} failed to start: {server.error}")
                await server.close()
                continue
            room = MAX_MCP_TOOLS - len(self._tools)
            if len(server.tools) > room:
                _log(
                    f"mcp server {server.name}: {len(server.tools) - room} of its tools left "
                    f"out (a run offers at most {MAX_MCP_TOOLS} tools of MCP servers)"
                )
                server.tools = server.tools[: max(0, room)]
            for tool in server.tools:
                name = tool_name(server.name, tool.name, taken)
                description = (tool.description or f"{tool.name} (MCP server {server.name})")[
                    :MAX_DESCRIPTION_CHARS
                ]
                definition = ToolDef(name, description, input_schema(tool.input_schema))
                self._tools[name] = (McpTool(definition, server.name, tool.name), server)
            listed = ", ".join(t.name for t in server.tools) or "none"
            _log(f"mcp server {server.name} started: {len(server.tools)} tools ({listed})")

    async def close(self) -> None:
        """Close every session and stop every server process."""
        await asyncio.gather(*(s.close() for s in self._servers), return_exceptions=True)

    async def __aenter__(self) -> Self:
        await self.start()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.close()

    async def call(
        self, name: str, args: Mapping[str, Any], timeout_s: float | None = None
    ) -> ToolOutcome:
        """Call the tool exposed as `name`; every failure is an is_error outcome."""
        entry = self._tools.get(name)
        if entry is None:
            return ToolOutcome(f"Error: unknown tool {name!r}", is_error=True)
        tool, server = entry
        session = server.session
        if session is None:
            return ToolOutcome(
                f"Error: the MCP server {server.name} is no longer running", is_error=True
            )
        timeout = self.call_timeout_s if timeout_s is None else timeout_s
        started = time.monotonic()
        try:
            result = await asyncio.wait_for(
                session.call_tool(tool.tool, dict(args), read_timeout_seconds=timeout),
                timeout + 5.0,  # a backstop: the SDK's own timeout ends the call first
            )
        except TimeoutError:
            return ToolOutcome(f"Error: {name} timed out after {timeout:g} s", is_error=True)
        except Exception as exc:
            elapsed = time.monotonic() - started
            reason = _reason(exc)
            if "timed out" in reason or elapsed >= timeout:
                return ToolOutcome(f"Error: {name} timed out after {timeout:g} s", is_error=True)
            return ToolOutcome(f"Error: MCP server {server.name}: {reason}", is_error=True)
        return ToolOutcome(
            render_content(result.content, getattr(result, "structured_content", None)),
            is_error=bool(result.is_error),
        )

    def handlers(self) -> dict[str, ToolHandler]:
        """name -> handler, for ToolContext.extra: the loop's way to these tools."""

        def handler(name: str) -> ToolHandler:
            async def run(args: Mapping[str, Any], timeout_s: float) -> ToolOutcome:
                return await self.call(name, args, timeout_s)

            return run

        return {name: handler(name) for name in self._tools}


def _stderr() -> TextIO:
    """Where servers' stderr goes: ours (the container log), if it is a real file."""
    try:
        sys.stderr.fileno()
    except (AttributeError, OSError, ValueError):
        return sys.__stderr__ or sys.stderr
    return sys.stderr
