"""Optional backend: an installed agent CLI answers instead of the built-in loop.

input.json `agent.command` is its argv, e.g.

    ["claude", "-p", "--output-format", "json"]       # Claude Code
    ["pi", "--print", "--mode", "json", "{prompt}"]   # pi

The prompt (system prompt + chat history + the message, as one text) is passed on stdin,
unless an argv element contains the placeholder `{prompt}`: then it is substituted there
and stdin is empty. stdin is the default because a long history can exceed the kernel's
limit for one argument (128 KiB).

The CLI runs in the space dir with the relay environment (ANTHROPIC_BASE_URL,
OPENAI_BASE_URL, the run token as both API keys, a writable HOME) and the run's budget as
its timeout. Its stdout is read as:

- Claude Code `--output-format json` (one object; `stream-json` JSONL works too: its last
  `{"type": "result"}` line): reply `result`, usage, `total_cost_usd`. Failure when
  `is_error` is true, when the exit code is not 0, or when `subtype` is not "success" -
  Claude Code can print `subtype: "success"` with `is_error: true` and exit 1.
- pi `--mode json` (JSONL events): the reply is the final assistant message's text,
  usage is summed over assistant messages. pi exits 0 even when the model call failed, so
  the final assistant message's `stopReason` decides: "error"/"aborted" is a failure
  (an earlier error that pi retried successfully is not).
- anything else: plain text, the reply when the exit code is 0.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import signal
import sys
import time
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from mercury_agent.contract import AGENT_CLI, BUDGET, AgentError, Usage

PROMPT_PLACEHOLDER = "{prompt}"
MAX_STDOUT_BYTES = 32 * 1024**2
STDERR_TAIL_BYTES = 8192


@dataclass(frozen=True)
class CliOutcome:
    """What a CLI run produced: the reply or the error, and what it spent."""

    ok: bool
    reply: str
    usage: Usage
    error: str | None = None
    format: str = "text"  # claude | pi | text


def build_invocation(command: list[str], prompt: str) -> tuple[list[str], bytes | None]:
    """(argv, stdin bytes): the prompt replaces `{prompt}` in argv, else goes to stdin."""
    if any(PROMPT_PLACEHOLDER in arg for arg in command):
        return [arg.replace(PROMPT_PLACEHOLDER, prompt) for arg in command], None
    return list(command), prompt.encode("utf-8")


def _int(value: Any) -> int:
    return int(value) if isinstance(value, int | float) and not isinstance(value, bool) else 0


def _float(value: Any) -> float | None:
    if isinstance(value, int | float) and not isinstance(value, bool):
        return float(value)
    return None


# --------------------------------------------------------------------------- Claude Code


def parse_claude(data: Mapping[str, Any], exit_code: int, default_model: str = "") -> CliOutcome:
    """A Claude Code `result` object -> CliOutcome (error flag AND exit code checked)."""
    usage = data.get("usage") if isinstance(data.get("usage"), Mapping) else {}
    input_tokens = (
        _int(usage.get("input_tokens"))
        + _int(usage.get("cache_creation_input_tokens"))
        + _int(usage.get("cache_read_input_tokens"))
    )
    model = default_model
    model_usage = data.get("modelUsage")
    if isinstance(model_usage, Mapping) and model_usage:
        # The model that did most of the work (Claude Code also uses a small one).
        model = max(
            model_usage,
            key=lambda k: (
                _int((model_usage[k] or {}).get("outputTokens"))
                if isinstance(model_usage[k], Mapping)
                else 0
            ),
        )
    result = data.get("result")
    text = result if isinstance(result, str) else ""
    subtype = data.get("subtype")
    is_error = data.get("is_error") is True
    used = Usage(
        input_tokens=input_tokens,
        output_tokens=_int(usage.get("output_tokens")),
        model=model or "claude-code",
        cost_usd=_float(data.get("total_cost_usd")),
    )
    if is_error or exit_code != 0 or subtype not in (None, "success"):
        detail = text.strip() or "no message"
        error = (
            f"Claude Code reported a failure (is_error={str(is_error).lower()}, "
            f"subtype={subtype}, exit code {exit_code}): {detail}"
        )
        return CliOutcome(False, "", used, error, "claude")
    return CliOutcome(True, text.strip(), used, None, "claude")


# --------------------------------------------------------------------------- pi


def _pi_text(message: Mapping[str, Any]) -> str:
    content = message.get("content")
    if isinstance(content, str):
        return content
    if not isinstance(content, list):
        return ""
    return "".join(
        str(c.get("text") or "")
        for c in content
        if isinstance(c, Mapping) and c.get("type") == "text"
    )


def _pi_assistant_messages(events: list[Mapping[str, Any]]) -> list[Mapping[str, Any]]:
    ends = [
        e["message"]
        for e in events
        if e.get("type") == "message_end"
        and isinstance(e.get("message"), Mapping)
        and e["message"].get("role") == "assistant"
    ]
    if ends:
        return ends
    # Older versions or a cut stream: fall back to turn_end / agent_end.
    found: list[Mapping[str, Any]] = []
    for e in events:
        if e.get("type") == "turn_end" and isinstance(e.get("message"), Mapping):
            candidates = [e["message"]]
        elif e.get("type") == "agent_end" and isinstance(e.get("messages"), list):
            candidates = [m for m in e["messages"] if isinstance(m, Mapping)]
        else:
            continue
        found.extend(m for m in candidates if m.get("role") == "assistant")
    return found


def parse_pi(
    events: list[Mapping[str, Any]], exit_code: int, default_model: str = ""
) -> CliOutcome:
    """pi `--mode json` events -> CliOutcome (stopReason checked, not only the exit code)."""
    messages = _pi_assistant_messages(events)
    input_tokens = output_tokens = 0
    cost = 0.0
    has_cost = False
    for m in messages:
        usage = m.get("usage") if isinstance(m.get("usage"), Mapping) else {}
        input_tokens += (
            _int(usage.get("input")) + _int(usage.get("cacheRead")) + _int(usage.get("cacheWrite"))
        )
        output_tokens += _int(usage.get("output"))
        total = (
            _float((usage.get("cost") or {}).get("total"))
            if isinstance(usage.get("cost"), Mapping)
            else None
        )
        if total is not None:
            cost += total
            has_cost = True
    final = messages[-1] if messages else None
    model = str(final.get("model")) if final and final.get("model") else default_model or "pi"
    used = Usage(input_tokens, output_tokens, model, cost if has_cost else None)
    if final is None:
        return CliOutcome(
            False, "", used, f"pi printed no assistant message (exit code {exit_code})", "pi"
        )
    stop = final.get("stopReason")
    if stop in ("error", "aborted"):
        detail = final.get("errorMessage") or "no message"
        return CliOutcome(False, "", used, f"pi reported stopReason={stop}: {detail}", "pi")
    if exit_code != 0:
        return CliOutcome(False, "", used, f"pi exited with code {exit_code}", "pi")
    reply = _pi_text(final)
    if not reply.strip():
        # A final tool-call turn without text: the last thing it said is the answer.
        reply = next((t for t in (_pi_text(m) for m in reversed(messages)) if t.strip()), "")
    return CliOutcome(True, reply.strip(), used, None, "pi")


# --------------------------------------------------------------------------- detection


def _json_lines(text: str) -> list[Mapping[str, Any]]:
    events = []
    for line in text.splitlines():
        line = line.strip()
        if not line.startswith("{"):
            continue
        try:
            value = json.loads(line)
        except ValueError:
            continue
        if isinstance(value, Mapping):
            events.append(value)
    return events


_PI_EVENTS = frozenset(
    {"session", "agent_start", "agent_end", "turn_start", "turn_end", "message_end"}
)


def parse_output(stdout: str, exit_code: int, default_model: str = "") -> CliOutcome:
    """Recognise the CLI's output format and read reply, usage and failure from it."""
    stripped = stdout.strip()
    try:
        whole = json.loads(stripped) if stripped.startswith("{") else None
    except ValueError:
        whole = None
    if isinstance(whole, Mapping) and (
        whole.get("type") == "result" or "is_error" in whole or "subtype" in whole
    ):
        return parse_claude(whole, exit_code, default_model)
    events = _json_lines(stdout)
    results = [e for e in events if e.get("type") == "result" and "is_error" in e]
    if results:  # Claude Code --output-format stream-json
        return parse_claude(results[-1], exit_code, default_model)
    if any(e.get("type") in _PI_EVENTS for e in events):
        return parse_pi(events, exit_code, default_model)
    usage = Usage(model=default_model or "cli")
    if exit_code != 0:
        return CliOutcome(False, "", usage, f"the agent CLI exited with code {exit_code}")
    if not stripped:
        return CliOutcome(False, "", usage, "the agent CLI printed nothing")
    return CliOutcome(True, stripped, usage, None, "text")


# --------------------------------------------------------------------------- running


def _log(message: str) -> None:
    print(f"mercury-agent: {message}", file=sys.stderr, flush=True)


async def run_cli(
    command: list[str],
    prompt: str,
    *,
    cwd: Path,
    env: Mapping[str, str],
    timeout_s: float | None,
    default_model: str = "",
    attempts: list[dict[str, Any]] | None = None,
) -> CliOutcome:
    """Run the agent CLI once; AgentError when it cannot run or fails."""
    argv, stdin = build_invocation(command, prompt)
    started = time.monotonic()
    record: dict[str, Any] = {
        "leg": 0,
        "provider": "cli",
        "model": default_model,
        "command": os.path.basename(argv[0]),
        "turn": 1,
        "outcome": "fail",
        "status": None,
        "duration_ms": 0,
    }

    def finish(outcome: str, status: int | None, error: str | None = None) -> None:
        record.update(outcome=outcome, status=status)
        record["duration_ms"] = int((time.monotonic() - started) * 1000)
        if error:
            record["error"] = error
        if attempts is not None:
            attempts.append(record)

    try:
        proc = await asyncio.create_subprocess_exec(
            *argv,
            cwd=cwd,
            env=dict(env),
            stdin=asyncio.subprocess.PIPE if stdin is not None else asyncio.subprocess.DEVNULL,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE,
            start_new_session=True,
        )
    except OSError as exc:
        finish("fail", None, str(exc))
        raise AgentError(
            f"agent.command {argv[0]!r} cannot be started: {exc.strerror or exc}", AGENT_CLI
        ) from None

    try:
        stdout, stderr = await asyncio.wait_for(proc.communicate(stdin), timeout_s)
    except TimeoutError:
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(proc.pid, signal.SIGKILL)
        await proc.wait()
        finish("budget", None, "timed out")
        raise AgentError(
            f"the agent CLI did not finish within the time budget of {timeout_s:g} s", BUDGET
        ) from None
    finally:
        if proc.returncode is None:
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(proc.pid, signal.SIGKILL)
    code = proc.returncode if proc.returncode is not None else -1
    if stderr:
        tail = stderr[-STDERR_TAIL_BYTES:].decode("utf-8", errors="replace")
        _log(f"agent CLI stderr (last {len(tail)} chars):\n{tail}")
    outcome = parse_output(
        stdout[:MAX_STDOUT_BYTES].decode("utf-8", errors="replace"), code, default_model
    )
    record["model"] = outcome.usage.model
    if not outcome.ok:
        finish("fail", code, outcome.error)
        raise AgentError(outcome.error or "the agent CLI failed", AGENT_CLI, outcome.usage)
    finish("ok", code)
    return outcome
