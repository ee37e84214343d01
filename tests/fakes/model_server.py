"""A scripted fake model server speaking the Anthropic Messages and OpenAI Chat wire formats.

    async with FakeModelServer() as fake:
        fake.script([ToolCall("bash", {"command": "ls"}), Text("done")])
        client = anthropic.AsyncAnthropic(base_url=fake.url, api_key="k", max_retries=0)
        openai.AsyncOpenAI(base_url=fake.url + "/v1", api_key="k", max_retries=0)

Every model request pops the next scripted turn: a per-model queue when one was scripted
for the request's "model", else the shared queue. A turn is

- `Text("...")` or `ToolCall(name, {args})`: one reply part;
- a list of parts, e.g. `[Text("let me look"), ToolCall(...), ToolCall(...)]`;
- `Turn(parts, input_tokens=, output_tokens=, delay=, event_delay=, body_delay=,
  first_token_delay=, tokens_per_second=)` for usage and timing (a long `delay` is a model
  that hangs);
- `Error(status)`: that status with the provider's error body (e.g. 529 overloaded).

A request with no turn left gets a 500 whose body says so. Streaming (`"stream": true`)
answers with each provider's exact SSE events.

A model's speed: `FakeModelServer(first_token_delay=0.3, tokens_per_second=50)` (or the
attributes of the same names, or per turn) makes every answer take the time a real model
takes. A token is one content delta as the fake streams it (a word of text, half a tool
call's arguments). A stream sends its opening events at once, its first content delta
`first_token_delay` seconds after the answer starts and each further one 1/rate later; a
non-streamed answer is sent when that stream would have sent its last delta.

Every model request is recorded in `fake.requests` (path, query, lower-cased headers,
JSON body, the monotonic time it arrived and its answer started, and for streams the
monotonic time each SSE event was written). A client that closes its connection before
the answer is complete (a proxy cancelling the call) is recorded too: the request's
`closed_at` is the monotonic time the fake saw it go, and `fake.wait_closed()` waits for it.

Other threads and processes: `FakeModelServer.start_in_thread()` serves from its own event
loop (scripting and `requests` are thread-safe); over HTTP, `POST /_fake/script`
(`{"turns": [...], "model": null}`, turns as in `turn_from_json`), `GET /_fake/requests`
and `POST /_fake/reset` drive it from another process, and
`python -m tests.fakes.model_server --port 8900` runs it standalone.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import json
import re
import threading
import time
import uuid
from collections import deque
from collections.abc import Awaitable, Callable, Iterable, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any, Self

from aiohttp import web

# --------------------------------------------------------------------------- script


@dataclass(frozen=True)
class Text:
    """A text reply part."""

    text: str


@dataclass(frozen=True)
class ToolCall:
    """A tool call part; `id` is generated in the provider's style when not given."""

    name: str
    arguments: dict[str, Any] = field(default_factory=dict)
    id: str | None = None


Part = Text | ToolCall


@dataclass(frozen=True)
class Turn:
    """One model response: its parts, usage, and timing.

    `delay`: seconds before the response starts. `event_delay`: seconds between SSE events
    when streaming (to observe that proxies pass events through as they come).
    `stop_reason`: defaults to tool_use/tool_calls if any part is a ToolCall, else end_turn/stop.
    `drop_after`: when streaming, cut the connection after that many SSE events (a dropped
    upstream mid-stream).
    `body_delay`: when not streaming, send the headers at once and the JSON body in pieces
    this many seconds apart, as gateways do that keep a slow call's connection alive (an
    answer the proxy is relaying when it is cut).
    `first_token_delay`, `tokens_per_second`: this turn's model speed (see the module
    docstring); None takes the server's setting, so one slow turn can sit among fast ones.
    """

    parts: Sequence[Part]
    input_tokens: int = 10
    output_tokens: int = 5
    delay: float = 0.0
    event_delay: float = 0.0
    stop_reason: str | None = None
    drop_after: int | None = None
    body_delay: float = 0.0
    first_token_delay: float | None = None
    tokens_per_second: float | None = None

    def __post_init__(self) -> None:
        _check_pacing(self.first_token_delay, self.tokens_per_second)


@dataclass(frozen=True)
class Error:
    """An error status with a provider-shaped body; `error_type` defaults by status."""

    status: int
    message: str | None = None
    error_type: str | None = None
    headers: dict[str, str] = field(default_factory=dict)
    delay: float = 0.0


ScriptItem = Text | ToolCall | Turn | Error | Sequence[Part]

_ANTHROPIC_ERROR_TYPES = {
    400: "invalid_request_error",
    401: "authentication_error",
    402: "billing_error",
    403: "permission_error",
    404: "not_found_error",
    413: "request_too_large",
    429: "rate_limit_error",
    500: "api_error",
    504: "timeout_error",
    529: "overloaded_error",
}
_OPENAI_ERROR_TYPES = {
    400: ("invalid_request_error", None),
    401: ("invalid_request_error", "invalid_api_key"),
    403: ("insufficient_permissions", None),
    404: ("invalid_request_error", "model_not_found"),
    429: ("rate_limit_exceeded", "rate_limit_exceeded"),
    500: ("server_error", None),
    503: ("server_error", None),
}


def _check_pacing(first_token_delay: float | None, tokens_per_second: float | None) -> None:
    """Refuse a speed that would make the fake hang forever or send tokens back in time."""
    if first_token_delay is not None and first_token_delay < 0:
        raise ValueError(f"first_token_delay must be >= 0, got {first_token_delay!r}")
    if tokens_per_second is not None and tokens_per_second <= 0:
        raise ValueError(
            f"tokens_per_second must be > 0 (None: no pacing), got {tokens_per_second!r}"
        )


def as_turn(item: ScriptItem) -> Turn | Error:
    """Normalise the shorthands accepted by `script`."""
    if isinstance(item, Turn | Error):
        return item
    if isinstance(item, Text | ToolCall):
        return Turn([item])
    if isinstance(item, Sequence) and not isinstance(item, str):
        parts = list(item)
        if not all(isinstance(p, Text | ToolCall) for p in parts):
            raise TypeError(f"a turn's parts must be Text or ToolCall, got {parts!r}")
        return Turn(parts)
    raise TypeError(f"cannot script {item!r}")


def turn_from_json(obj: dict[str, Any]) -> Turn | Error:
    """JSON form of a turn, for scripting over HTTP:

    {"text": "hi"} | {"tool_call": {"name", "arguments", "id"?}} |
    {"parts": [{"text"}|{"tool_call"}...], "input_tokens"?, "output_tokens"?, "delay"?,
     "event_delay"?, "stop_reason"?, "drop_after"?, "body_delay"?, "first_token_delay"?,
     "tokens_per_second"?} |
    {"error": 529, "message"?, "error_type"?, "delay"?}
    """
    if "error" in obj:
        return Error(
            status=int(obj["error"]),
            message=obj.get("message"),
            error_type=obj.get("error_type"),
            headers=dict(obj.get("headers") or {}),
            delay=float(obj.get("delay", 0.0)),
        )

    def part(p: dict[str, Any]) -> Part:
        if "text" in p:
            return Text(str(p["text"]))
        tc = p["tool_call"]
        return ToolCall(tc["name"], dict(tc.get("arguments") or {}), tc.get("id"))

    parts = [part(p) for p in obj["parts"]] if "parts" in obj else [part(obj)]
    return Turn(
        parts,
        input_tokens=int(obj.get("input_tokens", 10)),
        output_tokens=int(obj.get("output_tokens", 5)),
        delay=float(obj.get("delay", 0.0)),
        event_delay=float(obj.get("event_delay", 0.0)),
        stop_reason=obj.get("stop_reason"),
        drop_after=obj.get("drop_after"),
        body_delay=float(obj.get("body_delay", 0.0)),
        first_token_delay=_opt_float(obj.get("first_token_delay")),
        tokens_per_second=_opt_float(obj.get("tokens_per_second")),
    )


def _opt_float(value: Any) -> float | None:
    return None if value is None else float(value)


@dataclass
class RecordedRequest:
    """A model request as the fake received it."""

    method: str
    path: str
    query: dict[str, str]
    headers: dict[str, str]  # lower-cased names
    body: Any
    provider: str  # "anthropic" | "openai"
    model: str | None
    stream: bool
    # For streams: (time.monotonic() after the write, event name) of every SSE event sent.
    events: list[tuple[float, str]] = field(default_factory=list)
    # What was answered: "turn", "error" or "unscripted".
    outcome: str = ""
    # time.monotonic() when its client closed the connection before the answer was
    # complete (None: it was not, or not yet) - what a provider sees of a cancelled call.
    closed_at: float | None = None
    # time.monotonic() when the request's body had arrived, and when its answer started
    # (after the turn's `delay`; the model speed counts from here). None: not yet.
    received_at: float | None = None
    started_at: float | None = None
    # The model speed the answer was given (the turn's, else the server's), and for
    # streams the time.monotonic() each token (content delta) was written.
    first_token_delay: float = 0.0
    tokens_per_second: float | None = None
    token_times: list[float] = field(default_factory=list)


# --------------------------------------------------------------------------- server


class FakeModelServer:
    """Scripted Anthropic/OpenAI fake on 127.0.0.1 (random port unless given)."""

    def __init__(
        self,
        host: str = "127.0.0.1",
        port: int = 0,
        *,
        first_token_delay: float = 0.0,
        tokens_per_second: float | None = None,
    ) -> None:
        _check_pacing(first_token_delay, tokens_per_second)
        self.host = host
        self.port = port
        # The model speed of turns that set none (see the module docstring); 0 and None:
        # answer at once, as before there was pacing. May be changed between requests.
        self.first_token_delay = first_token_delay
        self.tokens_per_second = tokens_per_second
        self.requests: list[RecordedRequest] = []
        self._queue: deque[Turn | Error] = deque()
        self._by_model: dict[str, deque[Turn | Error]] = {}
        self._lock = threading.Lock()
        self._runner: web.AppRunner | None = None
        self._thread: threading.Thread | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._ids = itertools.count(1)
        # Answers requests nothing was scripted for (load tests: reply per prompt).
        self.responder: Callable[[dict[str, Any]], ScriptItem] | None = None

    # ----------------------------------------------------------------- scripting

    def script(self, turns: Iterable[ScriptItem], *, model: str | None = None) -> None:
        """Append turns to the shared queue, or to `model`'s own queue."""
        normal = [as_turn(t) for t in turns]
        with self._lock:
            queue = self._queue if model is None else self._by_model.setdefault(model, deque())
            queue.extend(normal)

    def remaining(self, model: str | None = None) -> int:
        """Turns not yet used (shared queue, or `model`'s queue)."""
        with self._lock:
            return len(self._queue if model is None else self._by_model.get(model, ()))

    def wait_closed(self, index: int = -1, timeout: float = 30.0) -> RecordedRequest:
        """Wait until the client of request `index` closed it before its answer was complete.

        Raises AssertionError after `timeout` seconds (the call went on: nobody cancelled it).
        """
        deadline = time.monotonic() + timeout
        while True:
            with self._lock:
                rec = self.requests[index] if self.requests else None
            if rec is not None and rec.closed_at is not None:
                return rec
            if time.monotonic() >= deadline:
                state = "no request" if rec is None else f"request to {rec.path} still open"
                raise AssertionError(f"fake model server: {state} after {timeout:g}s")
            time.sleep(0.02)

    def reset(self) -> None:
        """Forget the script and the recorded requests."""
        with self._lock:
            self._queue.clear()
            self._by_model.clear()
            self.requests.clear()

    def _pop(self, model: str | None) -> Turn | Error | None:
        with self._lock:
            queue = self._by_model.get(model) if model else None
            if queue:
                return queue.popleft()
            return self._queue.popleft() if self._queue else None

    # ----------------------------------------------------------------- lifecycle

    @property
    def url(self) -> str:
        """http://127.0.0.1:PORT (no trailing slash, no /v1)."""
        if not self.port:
            raise RuntimeError("FakeModelServer is not started")
        return f"http://{self.host}:{self.port}"

    def _app(self) -> web.Application:
        app = web.Application(client_max_size=64 * 1024**2)
        app.router.add_post("/v1/messages", self._anthropic)
        app.router.add_post("/v1/chat/completions", self._openai)
        app.router.add_post("/_fake/script", self._control_script)
        app.router.add_get("/_fake/requests", self._control_requests)
        app.router.add_post("/_fake/reset", self._control_reset)
        return app

    async def start(self) -> None:
        # handler_cancellation: a client that goes away cancels its handler at once, which
        # is how the fake sees (and records) a call cancelled by its client.
        self._runner = web.AppRunner(self._app(), access_log=None, handler_cancellation=True)
        await self._runner.setup()
        site = web.TCPSite(self._runner, self.host, self.port)
        await site.start()
        self.port = int(self._runner.addresses[0][1])

    async def stop(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None

    async def __aenter__(self) -> Self:
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.stop()

    def start_in_thread(self, timeout: float = 10.0) -> Self:
        """Serve from a daemon thread with its own event loop (for sync or other-loop users)."""
        started = threading.Event()
        errors: list[BaseException] = []

        def run() -> None:
            loop = asyncio.new_event_loop()
            self._loop = loop
            try:
                loop.run_until_complete(self.start())
            except BaseException as exc:
                errors.append(exc)
                started.set()
                return
            started.set()
            loop.run_forever()
            loop.run_until_complete(self.stop())
            loop.close()

        self._thread = threading.Thread(target=run, name="fake-model-server", daemon=True)
        self._thread.start()
        if not started.wait(timeout):
            raise RuntimeError("FakeModelServer did not start in time")
        if errors:
            raise errors[0]
        return self

    def stop_thread(self, timeout: float = 10.0) -> None:
        if self._loop is not None and self._thread is not None:
            self._loop.call_soon_threadsafe(self._loop.stop)
            self._thread.join(timeout)
            self._thread = None
            self._loop = None

    def __enter__(self) -> Self:
        return self.start_in_thread()

    def __exit__(self, *exc: object) -> None:
        self.stop_thread()

    # ----------------------------------------------------------------- handlers

    async def _receive(self, request: web.Request, provider: str) -> RecordedRequest:
        raw = await request.read()
        try:
            body: Any = json.loads(raw) if raw else None
        except ValueError:
            body = raw.decode("utf-8", errors="replace")
        model = body.get("model") if isinstance(body, dict) else None
        rec = RecordedRequest(
            method=request.method,
            path=request.path,
            query=dict(request.query),
            headers={k.lower(): v for k, v in request.headers.items()},
            body=body,
            provider=provider,
            model=model if isinstance(model, str) else None,
            stream=bool(isinstance(body, dict) and body.get("stream")),
            received_at=time.monotonic(),
        )
        with self._lock:
            self.requests.append(rec)
        return rec

    def _next_id(self, prefix: str) -> str:
        return f"{prefix}{next(self._ids):04d}{uuid.uuid4().hex[:12]}"

    async def _turn_for(self, rec: RecordedRequest) -> Turn | Error | web.Response:
        turn = self._pop(rec.model)
        if turn is None and self.responder is not None:
            turn = as_turn(self.responder(rec.body))
        if turn is None:
            rec.outcome = "unscripted"
            message = (
                f"fake model server: no scripted turn left for {rec.method} {rec.path} "
                f"(model {rec.model!r}); call fake.script([...]) first"
            )
            return _error_response(rec.provider, 500, message, "api_error", {})
        if turn.delay:
            await asyncio.sleep(turn.delay)
        rec.started_at = time.monotonic()
        if isinstance(turn, Error):
            rec.outcome = "error"
        else:
            rec.outcome = "turn"
            ftd = turn.first_token_delay
            rate = turn.tokens_per_second
            rec.first_token_delay = self.first_token_delay if ftd is None else ftd
            rec.tokens_per_second = self.tokens_per_second if rate is None else rate
        return turn

    async def _anthropic(self, request: web.Request) -> web.StreamResponse:
        rec = await self._receive(request, "anthropic")
        return await self._watched(rec, self._answer_anthropic(request, rec))

    async def _openai(self, request: web.Request) -> web.StreamResponse:
        rec = await self._receive(request, "openai")
        return await self._watched(rec, self._answer_openai(request, rec))

    async def _watched(
        self, rec: RecordedRequest, answer: Awaitable[web.StreamResponse]
    ) -> web.StreamResponse:
        """Answer, recording when the client goes away before the answer is complete."""
        try:
            return await answer
        except (asyncio.CancelledError, ConnectionError):
            # Cancelled: the client closed the connection (handler_cancellation); a
            # ConnectionError: a write found it closed. Either way the call was cut.
            rec.closed_at = time.monotonic()
            raise

    async def _answer_anthropic(
        self, request: web.Request, rec: RecordedRequest
    ) -> web.StreamResponse:
        turn = await self._turn_for(rec)
        if isinstance(turn, web.Response):
            return turn
        if isinstance(turn, Error):
            return _error_response(
                "anthropic", turn.status, turn.message, turn.error_type, turn.headers
            )
        model = rec.model or "claude-fake"
        has_tools = any(isinstance(p, ToolCall) for p in turn.parts)
        stop = turn.stop_reason or ("tool_use" if has_tools else "end_turn")
        msg_id = self._next_id("msg_")
        blocks: list[dict[str, Any]] = []
        for part in turn.parts:
            if isinstance(part, Text):
                blocks.append({"type": "text", "text": part.text})
            else:
                blocks.append(
                    {
                        "type": "tool_use",
                        "id": part.id or self._next_id("toolu_"),
                        "name": part.name,
                        "input": part.arguments,
                    }
                )
        usage = {
            "input_tokens": turn.input_tokens,
            "output_tokens": turn.output_tokens,
            "cache_creation_input_tokens": 0,
            "cache_read_input_tokens": 0,
        }
        headers = {"request-id": self._next_id("req_")}
        if not rec.stream:
            return await self._json(
                request,
                rec,
                turn,
                len(_token_pieces(turn.parts, joined=False)),
                {
                    "id": msg_id,
                    "type": "message",
                    "role": "assistant",
                    "model": model,
                    "content": blocks,
                    "stop_reason": stop,
                    "stop_sequence": None,
                    "usage": usage,
                },
                headers,
            )

        events: list[tuple[str, dict[str, Any]]] = [
            (
                "message_start",
                {
                    "type": "message_start",
                    "message": {
                        "id": msg_id,
                        "type": "message",
                        "role": "assistant",
                        "model": model,
                        "content": [],
                        "stop_reason": None,
                        "stop_sequence": None,
                        # The real API reports a provisional output count here.
                        "usage": {**usage, "output_tokens": min(1, turn.output_tokens)},
                    },
                },
            ),
            ("ping", {"type": "ping"}),
        ]
        for index, block in enumerate(blocks):
            if block["type"] == "text":
                events.append(
                    (
                        "content_block_start",
                        {
                            "type": "content_block_start",
                            "index": index,
                            "content_block": {"type": "text", "text": ""},
                        },
                    )
                )
                deltas = [{"type": "text_delta", "text": p} for p in _pieces(block["text"])]
            else:
                events.append(
                    (
                        "content_block_start",
                        {
                            "type": "content_block_start",
                            "index": index,
                            "content_block": {**block, "input": {}},
                        },
                    )
                )
                deltas = [
                    {"type": "input_json_delta", "partial_json": p}
                    for p in _halves(json.dumps(block["input"]))
                ]
            for delta in deltas:
                events.append(
                    (
                        "content_block_delta",
                        {"type": "content_block_delta", "index": index, "delta": delta},
                    )
                )
            events.append(("content_block_stop", {"type": "content_block_stop", "index": index}))
        events.append(
            (
                "message_delta",
                {
                    "type": "message_delta",
                    "delta": {"stop_reason": stop, "stop_sequence": None},
                    "usage": {"output_tokens": turn.output_tokens},
                },
            )
        )
        events.append(("message_stop", {"type": "message_stop"}))
        frames = [
            (name, f"event: {name}\ndata: {json.dumps(data)}\n\n".encode()) for name, data in events
        ]
        tokens = {i for i, (name, _) in enumerate(events) if name == "content_block_delta"}
        return await self._stream(request, rec, frames, turn, headers, tokens)

    async def _answer_openai(
        self, request: web.Request, rec: RecordedRequest
    ) -> web.StreamResponse:
        turn = await self._turn_for(rec)
        if isinstance(turn, web.Response):
            return turn
        if isinstance(turn, Error):
            return _error_response(
                "openai", turn.status, turn.message, turn.error_type, turn.headers
            )
        model = rec.model or "gpt-fake"
        texts = [p.text for p in turn.parts if isinstance(p, Text)]
        calls = [
            {
                "id": p.id or self._next_id("call_"),
                "type": "function",
                "function": {"name": p.name, "arguments": json.dumps(p.arguments)},
            }
            for p in turn.parts
            if isinstance(p, ToolCall)
        ]
        finish = turn.stop_reason or ("tool_calls" if calls else "stop")
        usage = {
            "prompt_tokens": turn.input_tokens,
            "completion_tokens": turn.output_tokens,
            "total_tokens": turn.input_tokens + turn.output_tokens,
        }
        cid = self._next_id("chatcmpl-")
        created = int(time.time())
        if not rec.stream:
            message: dict[str, Any] = {
                "role": "assistant",
                "content": "".join(texts) if texts else None,
                "refusal": None,
            }
            if calls:
                message["tool_calls"] = calls
            return await self._json(
                request,
                rec,
                turn,
                len(_token_pieces(turn.parts, joined=True)),
                {
                    "id": cid,
                    "object": "chat.completion",
                    "created": created,
                    "model": model,
                    "choices": [
                        {"index": 0, "message": message, "finish_reason": finish, "logprobs": None}
                    ],
                    "usage": usage,
                },
                {},
            )

        body = rec.body if isinstance(rec.body, dict) else {}
        include_usage = bool((body.get("stream_options") or {}).get("include_usage"))

        def chunk(delta: dict[str, Any], finish_reason: str | None = None) -> dict[str, Any]:
            out: dict[str, Any] = {
                "id": cid,
                "object": "chat.completion.chunk",
                "created": created,
                "model": model,
                "choices": [
                    {"index": 0, "delta": delta, "finish_reason": finish_reason, "logprobs": None}
                ],
            }
            if include_usage:
                out["usage"] = None  # as the real API: null on every chunk but the last
            return out

        chunks = [chunk({"role": "assistant", "content": ""})]
        chunks += [chunk({"content": p}) for p in _pieces("".join(texts))]
        tokens = set(range(1, len(chunks)))  # the text pieces
        for i, call in enumerate(calls):
            fn = call["function"]
            chunks.append(
                chunk(
                    {
                        "tool_calls": [
                            {
                                "index": i,
                                "id": call["id"],
                                "type": "function",
                                "function": {"name": fn["name"], "arguments": ""},
                            }
                        ]
                    }
                )
            )
            for piece in _halves(fn["arguments"]):
                tokens.add(len(chunks))
                chunks.append(
                    chunk({"tool_calls": [{"index": i, "function": {"arguments": piece}}]})
                )
        chunks.append(chunk({}, finish))
        if include_usage:
            chunks.append(
                {
                    "id": cid,
                    "object": "chat.completion.chunk",
                    "created": created,
                    "model": model,
                    "choices": [],
                    "usage": usage,
                }
            )
        frames = [("chunk", f"data: {json.dumps(c)}\n\n".encode()) for c in chunks]
        frames.append(("[DONE]", b"data: [DONE]\n\n"))
        return await self._stream(request, rec, frames, turn, {}, tokens)

    async def _json(
        self,
        request: web.Request,
        rec: RecordedRequest,
        turn: Turn,
        tokens: int,
        data: dict[str, Any],
        headers: dict[str, str],
    ) -> web.StreamResponse:
        """A JSON answer: whole, or (`body_delay`) headers first and the body in pieces.

        A paced model answers when its stream would have sent its last token: a client
        that does not stream sees the whole generation time before anything.
        """
        await _until(_token_due(rec, max(0, tokens - 1)))
        if not turn.body_delay:
            return web.json_response(data, headers=headers)
        body = json.dumps(data).encode()
        resp = web.StreamResponse(headers={"Content-Type": "application/json", **headers})
        await resp.prepare(request)
        size = max(1, len(body) // 8)
        for start in range(0, len(body), size):
            if start:
                await asyncio.sleep(turn.body_delay)
            await resp.write(body[start : start + size])
        await resp.write_eof()
        return resp

    async def _stream(
        self,
        request: web.Request,
        rec: RecordedRequest,
        frames: list[tuple[str, bytes]],
        turn: Turn,
        headers: dict[str, str],
        tokens: set[int],
    ) -> web.StreamResponse:
        """Send `frames`; those whose index is in `tokens` are paced at the model's speed.

        Token k is due at started_at + first_token_delay + k / rate, on an absolute schedule
        so a late write does not push the later ones back (a real model does not slow
        down because its reader was slow), and never sent before it is due.
        """
        sent_tokens = 0
        resp = web.StreamResponse(
            headers={"Content-Type": "text/event-stream", "Cache-Control": "no-cache", **headers}
        )
        await resp.prepare(request)
        for i, (name, frame) in enumerate(frames):
            if i == turn.drop_after and request.transport is not None:
                rec.outcome = "dropped"
                request.transport.close()  # no terminating chunk: the client sees a cut
                return resp
            if i and turn.event_delay:
                await asyncio.sleep(turn.event_delay)
            if i in tokens:
                await _until(_token_due(rec, sent_tokens))
                sent_tokens += 1
            await resp.write(frame)
            rec.events.append((time.monotonic(), name))
            if i in tokens:
                rec.token_times.append(rec.events[-1][0])
        await resp.write_eof()
        return resp

    # ----------------------------------------------------------------- control (HTTP)

    async def _control_script(self, request: web.Request) -> web.Response:
        data = await request.json()
        turns = [turn_from_json(t) for t in data.get("turns", [])]
        self.script(turns, model=data.get("model"))
        return web.json_response({"ok": True, "queued": len(turns)})

    async def _control_requests(self, _request: web.Request) -> web.Response:
        with self._lock:
            data = [asdict(r) for r in self.requests]
        return web.json_response(data)

    async def _control_reset(self, _request: web.Request) -> web.Response:
        self.reset()
        return web.json_response({"ok": True})


# --------------------------------------------------------------------------- helpers


def _pieces(text: str) -> list[str]:
    """Split text into word-sized deltas, as providers stream it."""
    return re.findall(r"\s*\S+\s*|\s+", text) if text else []


def _token_pieces(parts: Sequence[Part], *, joined: bool) -> list[str]:
    """The content deltas a stream of `parts` carries, i.e. the answer's tokens.

    `joined`: the texts are streamed as one (OpenAI's single content field), else each
    text part on its own (Anthropic's content blocks).
    """
    texts = [p.text for p in parts if isinstance(p, Text)]
    pieces = _pieces("".join(texts)) if joined else [w for t in texts for w in _pieces(t)]
    for p in parts:
        if isinstance(p, ToolCall):
            pieces += _halves(json.dumps(p.arguments))
    return pieces


def _token_due(rec: RecordedRequest, k: int) -> float:
    """The monotonic time token `k` (0-based) of `rec`'s answer may be sent."""
    start = rec.started_at if rec.started_at is not None else time.monotonic()
    rate = rec.tokens_per_second
    return start + rec.first_token_delay + (k / rate if rate else 0.0)


async def _until(due: float) -> None:
    """Sleep until time.monotonic() >= due (a loop: a timer may wake a hair early)."""
    while (wait := due - time.monotonic()) > 0:
        await asyncio.sleep(wait)


def _halves(s: str) -> list[str]:
    """Split JSON text in two, so clients must join partial_json / arguments deltas."""
    if len(s) < 2:
        return [s]
    mid = len(s) // 2
    return [s[:mid], s[mid:]]


def _error_response(
    provider: str,
    status: int,
    message: str | None,
    error_type: str | None,
    headers: dict[str, str],
) -> web.Response:
    """The provider's own error body shape for `status`."""
    if provider == "anthropic":
        kind = error_type or _ANTHROPIC_ERROR_TYPES.get(status, "api_error")
        body: dict[str, Any] = {
            "type": "error",
            "error": {"type": kind, "message": message or f"fake {kind} ({status})"},
        }
    else:
        kind, code = _OPENAI_ERROR_TYPES.get(status, ("server_error", None))
        kind = error_type or kind
        body = {
            "error": {
                "message": message or f"fake {kind} ({status})",
                "type": kind,
                "param": None,
                "code": code,
            }
        }
    return web.json_response(body, status=status, headers=headers)


def main(argv: Sequence[str] | None = None) -> None:
    """Run standalone; script it over HTTP (POST /_fake/script)."""
    import argparse

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=0)
    parser.add_argument("--first-token-delay", type=float, default=0.0, metavar="SECONDS")
    parser.add_argument("--tokens-per-second", type=float, default=None, metavar="RATE")
    args = parser.parse_args(argv)

    async def serve() -> None:
        async with FakeModelServer(
            args.host,
            args.port,
            first_token_delay=args.first_token_delay,
            tokens_per_second=args.tokens_per_second,
        ) as fake:
            print(fake.url, flush=True)
            await asyncio.Event().wait()

    with contextlib.suppress(KeyboardInterrupt):
        asyncio.run(serve())


if __name__ == "__main__":
    main()
