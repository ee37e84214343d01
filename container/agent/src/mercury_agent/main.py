"""Entry point: one run, from input.json to result.json, with meaningful exit codes.

Exit codes: 0 answered, 1 the agent or the model failed (auth, budget, chain exhausted,
max turns, agent CLI, internal error), 2 bad input. Whatever happens, the runtime tries to
leave a result.json behind, because the host reads the error from there; stderr (the
container log) gets the details an operator needs.

`--wait` is a warm container's mode (waiting.py): import everything, wait for input.json,
then the same run. A wait that ends without input (timeout, SIGTERM) exits 0 and leaves no
result.json: there was no run to report on.
"""

from __future__ import annotations

import argparse
import math
import os
import sys
import traceback
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from mercury_agent import __version__
from mercury_agent.agent import respond
from mercury_agent.contract import (
    BAD_INPUT,
    INTERNAL,
    AgentError,
    InputError,
    error_result,
    ok_result,
    parse_input,
)
from mercury_agent.iodir import IO_DIR_ENV, read_input, resolve_io_dir, write_result
from mercury_agent.waiting import DEFAULT_WAIT_TIMEOUT_S, PRELOAD_ENV, wait_for_input

EXIT_OK = 0
EXIT_INTERNAL = 1  # also every agent/model failure: the host reads error_class
EXIT_BAD_INPUT = 2


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="mercury-agent",
        description="Answer one Mercury run: read input.json, write result.json.",
    )
    p.add_argument(
        "--io-dir",
        metavar="DIR",
        help=f"directory holding input.json (default: ${IO_DIR_ENV}, else /run/mercury-io)",
    )
    p.add_argument(
        "--wait",
        action="store_true",
        help=f"a warm container: preload (${PRELOAD_ENV}), wait for input.json, then run",
    )
    p.add_argument(
        "--wait-timeout",
        type=_seconds,
        default=DEFAULT_WAIT_TIMEOUT_S,
        metavar="SECONDS",
        help="with --wait: exit 0 without a run after this long (default: %(default)g)",
    )
    p.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    return p


def _seconds(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a number of seconds: {text!r}") from None
    if not math.isfinite(value) or value < 0:
        raise argparse.ArgumentTypeError(f"must be a finite number >= 0, got {text!r}")
    return value


def _log(message: str) -> None:
    print(f"mercury-agent: {message}", file=sys.stderr, flush=True)


def _finish(io_dir: Path, result: Mapping[str, Any], code: int) -> int:
    try:
        write_result(io_dir, result)
    except OSError as exc:
        # Nowhere to report it but the log; the host sees a crash with this line in the tail.
        _log(f"cannot write result.json in {io_dir}: {exc}")
        return EXIT_INTERNAL
    return code


def run(io_dir: Path) -> int:
    """One run against `io_dir`; returns the process exit code."""
    try:
        inp = parse_input(read_input(io_dir))
    except InputError as exc:
        _log(f"bad input: {exc}")
        return _finish(io_dir, error_result(f"bad input: {exc}", BAD_INPUT), EXIT_BAD_INPUT)
    # Filled as model calls finish, so a failure still reports what was tried.
    attempts: list[dict[str, Any]] = []
    # The echo has no model calls, and its result keeps the original shape.
    report = None if inp.echo_mode else attempts
    try:
        reply = respond(inp, attempts)
        result = ok_result(reply.text, reply.usage, reply.files, reply.attempts, reply.tools)
    except AgentError as exc:
        _log(f"run failed ({exc.error_class}): {exc}")
        result = error_result(str(exc), exc.error_class, report, exc.usage, exc.tools)
        return _finish(io_dir, result, EXIT_INTERNAL)
    except Exception as exc:
        traceback.print_exc(file=sys.stderr)
        error = f"internal error: {type(exc).__name__}: {exc}"
        return _finish(io_dir, error_result(error, INTERNAL, report), EXIT_INTERNAL)
    return _finish(io_dir, result, EXIT_OK)


def main(argv: Sequence[str] | None = None, env: Mapping[str, str] | None = None) -> int:
    """The `mercury-agent` console script."""
    args = _parser().parse_args(argv)
    environ = os.environ if env is None else env
    io_dir = resolve_io_dir(args.io_dir, environ)
    if args.wait and not wait_for_input(io_dir, args.wait_timeout, environ):
        return EXIT_OK
    try:
        return run(io_dir)
    except Exception as exc:  # a bug outside the guarded steps: still leave a result behind
        traceback.print_exc(file=sys.stderr)
        error = f"internal error: {type(exc).__name__}: {exc}"
        return _finish(io_dir, error_result(error, INTERNAL), EXIT_INTERNAL)
