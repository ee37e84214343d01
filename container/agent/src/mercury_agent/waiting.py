"""The waiting mode of a warm container: everything imported, then wait for input.json.

While a space is active the host keeps its next container created, started and waiting
(`mercury-agent --wait`), so the next message does not pay for starting Python and
importing the SDKs. Nothing of a run is in the container while it waits - no token, no
message: at hand-over the host writes input.json into the io dir atomically (a temporary
file in the same directory, then a rename), so its mere presence means it is complete,
and from then on it is an ordinary run.

    MERCURY_PRELOAD   comma list of the providers of the configured model chain
                      ("anthropic,openai"), whose SDKs are imported before waiting

Before waiting it imports everything a run needs and makes one model call per preloaded
provider to a canned server of its own (warm_up), so the run that follows imports nothing
and its first model call is as fast as its second.

Waiting polls with os.stat and time.sleep: a stat of a missing file costs microseconds and
needs no inotify (which misses changes made through some file-sharing layers, e.g. Docker
Desktop's). A hand-over is seen within one poll interval: POLL_FAST_S during the first
second, when one is likeliest (the host starts the next container while the next message
may already be coming), then POLL_SLOW_S, which bounds the latency while waking an idle
container less often.
"""

from __future__ import annotations

import asyncio
import gc
import json
import os
import signal
import sys
import time
import traceback
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path
from types import FrameType

from mercury_agent.iodir import INPUT_NAME

PRELOAD_ENV = "MERCURY_PRELOAD"
DEFAULT_WAIT_TIMEOUT_S = 3600.0
POLL_FAST_S = 0.002
POLL_SLOW_S = 0.005
FAST_PHASE_S = 1.0
# Signals that end a wait: `docker stop` sends SIGTERM (and the agent is PID 1 of its
# container, which ignores a signal it has no handler for); SIGINT is Ctrl-C by hand.
_STOP_SIGNALS = (signal.SIGTERM, signal.SIGINT)


class Stopped(BaseException):
    """A stop signal arrived while waiting. A BaseException, so that no `except
    Exception` in an import or in the poll loop can swallow it."""


def _log(message: str) -> None:
    print(f"mercury-agent: {message}", file=sys.stderr, flush=True)


def preload_names(env: Mapping[str, str]) -> set[str]:
    """The providers named in $MERCURY_PRELOAD (lower-cased; empty entries dropped)."""
    return {p.strip().lower() for p in env.get(PRELOAD_ENV, "").split(",") if p.strip()}


def preload(env: Mapping[str, str]) -> list[str]:
    """Import what a run needs, so that nothing is imported after the hand-over: the agent
    (and everything it imports) and the SDKs named in $MERCURY_PRELOAD, then warm them up
    with one model call each (see warm_up). Returns the providers loaded (unknown names are
    ignored)."""
    import mercury_agent.agent  # noqa: F401  (main imports it too; explicit on purpose)
    from mercury_agent import providers

    loaded = providers.preload(preload_names(env))
    if loaded:
        try:
            asyncio.run(warm_up(loaded))
        except Exception as exc:  # best effort: the run works without it, only slower
            _log(f"warming up the model clients failed: {type(exc).__name__}: {exc}")
    # What is loaded now lives as long as the process: keep the collector from scanning it
    # again and again during the run.
    gc.collect()
    gc.freeze()
    return loaded


# --------------------------------------------------------------------------- warm-up

# A first model call costs far more than the next one, beyond imports: the SDKs build
# pydantic models of generic types on first use, the HTTP stack imports its transport and
# connection code on the first connection. Measured on the fake model server, the first
# call of a run took 70-110 ms against 10 ms for the second. So before waiting, each
# preloaded backend makes one streamed call, through make_backend as a run does, to a
# canned server on 127.0.0.1 that answers with a text and a tool call in the provider's
# wire format (the same paths a run's relay serves).
_WARM_UP_TOKEN = "warm-up"


def _sse(events: list[tuple[str | None, object]]) -> bytes:
    return b"".join(
        (f"event: {name}\n" if name else "").encode()
        + b"data: "
        + json.dumps(data).encode()
        + b"\n\n"
        for name, data in events
    )


def _anthropic_answer() -> bytes:
    usage = {"input_tokens": 1, "output_tokens": 1}
    message = {"id": "msg_warm", "type": "message", "role": "assistant", "model": "warm-up"}
    tool = {"type": "tool_use", "id": "toolu_warm", "name": "list_files", "input": {}}
    events: list[tuple[str | None, object]] = [
        (
            "message_start",
            {"type": "message_start", "message": {**message, "content": [], "usage": usage}},
        ),
        (
            "content_block_start",
            {
                "type": "content_block_start",
                "index": 0,
                "content_block": {"type": "text", "text": ""},
            },
        ),
        (
            "content_block_delta",
            {
                "type": "content_block_delta",
                "index": 0,
                "delta": {"type": "text_delta", "text": "ok"},
            },
        ),
        ("content_block_stop", {"type": "content_block_stop", "index": 0}),
        ("content_block_start", {"type": "content_block_start", "index": 1, "content_block": tool}),
        (
            "content_block_delta",
            {
                "type": "content_block_delta",
                "index": 1,
                "delta": {"type": "input_json_delta", "partial_json": "{}"},
            },
        ),
        ("content_block_stop", {"type": "content_block_stop", "index": 1}),
        (
            "message_delta",
            {
                "type": "message_delta",
                "usage": {"output_tokens": 2},
                "delta": {"stop_reason": "tool_use", "stop_sequence": None},
            },
        ),
        ("message_stop", {"type": "message_stop"}),
    ]
    return _sse(events)


def _openai_answer() -> bytes:
    head = {
        "id": "chatcmpl-warm",
        "object": "chat.completion.chunk",
        "created": 0,
        "model": "warm-up",
    }
    call = {
        "index": 0,
        "id": "call_warm",
        "type": "function",
        "function": {"name": "list_files", "arguments": "{}"},
    }
    deltas: list[tuple[dict[str, object], str | None]] = [
        ({"role": "assistant", "content": "ok"}, None),
        ({"tool_calls": [call]}, None),
        ({}, "tool_calls"),
    ]
    chunks: list[tuple[str | None, object]] = [
        (None, {**head, "choices": [{"index": 0, "delta": d, "finish_reason": f}]})
        for d, f in deltas
    ]
    usage = {"prompt_tokens": 1, "completion_tokens": 1, "total_tokens": 2}
    chunks.append((None, {**head, "choices": [], "usage": usage}))
    return _sse(chunks) + b"data: [DONE]\n\n"


async def warm_up(loaded: list[str]) -> None:
    """One streamed call per provider in `loaded`, to a canned server on 127.0.0.1."""
    from aiohttp import web

    from mercury_agent.conversation import Message, ModelRequest, TextBlock
    from mercury_agent.providers import make_backend
    from mercury_agent.tools import TOOLS

    answers = {"anthropic": _anthropic_answer(), "openai": _openai_answer()}

    async def answer(request: web.Request) -> web.Response:
        await request.read()
        body = answers[request.match_info["provider"]]
        return web.Response(body=body, content_type="text/event-stream")

    app = web.Application()
    app.router.add_post("/model/{provider}/v1/{tail:.*}", answer)
    runner = web.AppRunner(app, access_log=None, handle_signals=False)
    await runner.setup()
    try:
        await web.TCPSite(runner, "127.0.0.1", 0).start()
        url = f"http://127.0.0.1:{runner.addresses[0][1]}"
        request = ModelRequest("warm-up", [Message("user", [TextBlock("warm-up")])], TOOLS, 16)
        for provider in loaded:
            backend = make_backend(provider, "warm-up", url, _WARM_UP_TOKEN)
            try:
                await backend.complete(request, 10.0)
            finally:
                await backend.close()
    finally:
        await runner.cleanup()


def _stop(signum: int, _frame: FrameType | None) -> None:
    raise Stopped(signal.Signals(signum).name)


@contextmanager
def stop_on_signals() -> Iterator[None]:
    """Turn SIGTERM/SIGINT into Stopped inside the block; the previous handlers after it,
    so that a run behaves exactly as a run started without --wait."""
    previous = {sig: signal.signal(sig, _stop) for sig in _STOP_SIGNALS}
    try:
        yield
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)


def poll_for(
    path: Path,
    timeout_s: float,
    *,
    clock: Callable[[], float] = time.monotonic,
    sleep: Callable[[float], None] = time.sleep,
) -> bool:
    """True as soon as `path` exists, False once `timeout_s` passed without it.

    Any error but "not found" (a permission problem, say) ends the wait as if the file
    were there: the run then reports why input.json cannot be read, in result.json.
    """
    started = clock()
    deadline = started + timeout_s
    while True:
        try:
            os.stat(path)
            return True
        except FileNotFoundError:
            pass
        except OSError:
            return True
        now = clock()
        if now >= deadline:
            return False
        interval = POLL_FAST_S if now - started < FAST_PHASE_S else POLL_SLOW_S
        sleep(min(interval, deadline - now))


def wait_for_input(io_dir: Path, timeout_s: float, env: Mapping[str, str]) -> bool:
    """Preload, then wait for `io_dir`/input.json. True: it is there, run it now; False:
    the wait ended without input (timeout or a stop signal), which is logged."""
    try:
        with stop_on_signals():
            try:
                loaded = preload(env)
            except Exception:
                # Wait anyway: the run then fails as a cold one would, with a result.json.
                traceback.print_exc(file=sys.stderr)
                loaded = []
            _log(f"waiting for {INPUT_NAME} (preloaded: {', '.join(loaded) or 'none'})")
            if poll_for(io_dir / INPUT_NAME, timeout_s):
                return True
    except Stopped as stop:
        _log(f"stopped by {stop} while waiting for {INPUT_NAME}; no run")
        return False
    _log(f"no {INPUT_NAME} in {io_dir} after {timeout_s:g} s; exiting without a run")
    return False
