"""Runs, one aggregate: the record of each container execution (exit, duration, tokens).

A record also keeps what the run's dashboard page shows — a prompt summary, the model
attempts result.json listed, the model calls the host metered and, for a failed run, the
end of the container log. Those come from the agent, the user and the container, so each
is cut to a fixed size here, whoever the caller: a run cannot grow the table without
bound. The dashboard's list reads only the short columns (`find_runs`, filtered and paged
in SQL); the details are read one run at a time (`get_run`).
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, fields
from datetime import UTC, datetime, timedelta
from typing import Any

from sqlalchemy import and_, or_, select
from sqlalchemy.sql.elements import ColumnElement

from mercury.storage.models import Run, RunReason, utcnow
from mercury.storage.session import Store, to_record, tx

PROMPT_SUMMARY_CHARS = 300
LOG_TAIL_CHARS = 8000
MAX_ATTEMPTS = 50
MAX_MODEL_CALLS = 200
ENTRY_TEXT_CHARS = 300  # any one text value inside an attempt or a model call
# What an attempt (the agent's chain.Attempt, or its CLI backend's) and a model call
# (the host's metered call) may keep; anything else the agent wrote is dropped.
ATTEMPT_KEYS = (
    "leg",
    "provider",
    "model",
    "command",
    "turn",
    "outcome",
    "status",
    "duration_ms",
    "error",
    "error_class",
)
# A tool call of the run (result.json `tools`: built-in tools and extensions' MCP tools).
TOOL_CALL_KEYS = ("name", "ok", "ms", "input", "output")
MAX_TOOL_CALLS = 200
TOOL_TEXT_CHARS = 1000  # a tool call's input and output, each
MODEL_CALL_KEYS = (
    "provider",
    "model",
    "input_tokens",
    "output_tokens",
    "cost_usd",
    "status",
    "incomplete",
    "at",
)
_CONTROL = re.compile(r"[\x00-\x08\x0b\x0c\x0e-\x1f\x7f]")
_SPACES = re.compile(r"\s+")
_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
_DROP = object()  # a value bound_entries does not keep


@dataclass(frozen=True, slots=True)
class RunRecord:
    id: int
    job_id: int | None
    space_id: str
    reason: RunReason
    exit_code: int | None
    duration_ms: int | None
    image: str | None
    container_name: str | None
    input_tokens: int
    output_tokens: int
    cost_usd: float | None
    model: str | None
    error: str | None
    started_at: datetime
    finished_at: datetime | None
    prompt_summary: str | None = None
    attempts: list[dict[str, Any]] | None = None
    model_calls: list[dict[str, Any]] | None = None
    log_tail: str | None = None
    tool_calls: list[dict[str, Any]] | None = None
    extensions: list[str] | None = None


# --------------------------------------------------------------------------- bounds


def summarize_prompt(text: str | None, limit: int = PROMPT_SUMMARY_CHARS) -> str | None:
    """The prompt's start on one plain line: whitespace folded, control characters gone."""
    if not text:
        return None
    plain = _SPACES.sub(" ", _CONTROL.sub("", text)).strip()
    if not plain:
        return None
    return plain if len(plain) <= limit else plain[: limit - 1].rstrip() + "…"


def bound_log_tail(text: str | None, limit: int = LOG_TAIL_CHARS) -> str | None:
    """The last `limit` characters of a log, starting on a whole line when it was cut."""
    if not text:
        return None
    if len(text) <= limit:
        return text
    tail = text[-limit:]
    newline = tail.find("\n")
    return tail[newline + 1 :] if 0 <= newline < len(tail) - 1 else tail


def _value(value: Any, text_chars: int = ENTRY_TEXT_CHARS) -> Any:
    """A JSON scalar kept as it is (text cut to size); anything else is not kept."""
    if value is None or isinstance(value, bool | int | float):
        return value
    if isinstance(value, str):
        return value if len(value) <= text_chars else value[: text_chars - 1] + "…"
    return _DROP


def bound_entries(
    entries: Any, keys: Sequence[str], limit: int, *, text_chars: int = ENTRY_TEXT_CHARS
) -> list[dict[str, Any]] | None:
    """At most `limit` mappings, each with only `keys` and scalar values (text cut).

    None for anything that is not a list (result.json is the agent's word: it may send a
    string, a number or nothing); non-mapping items are skipped.
    """
    if not isinstance(entries, list | tuple):
        return None
    out: list[dict[str, Any]] = []
    for entry in entries:
        if len(out) >= limit:
            break
        if not isinstance(entry, Mapping):
            continue
        kept = {k: _value(entry[k], text_chars) for k in keys if k in entry}
        out.append({k: v for k, v in kept.items() if v is not _DROP})
    return out


# --------------------------------------------------------------------------- writes


async def record_run(
    store: Store,
    *,
    space_id: str,
    reason: RunReason,
    job_id: int | None = None,
    exit_code: int | None = None,
    duration_ms: int | None = None,
    image: str | None = None,
    container_name: str | None = None,
    input_tokens: int = 0,
    output_tokens: int = 0,
    cost_usd: float | None = None,
    model: str | None = None,
    error: str | None = None,
    started_at: datetime | None = None,
    finished_at: datetime | None = None,
    prompt: str | None = None,
    attempts: Any = None,
    model_calls: Iterable[Mapping[str, Any]] | None = None,
    log_tail: str | None = None,
    tool_calls: Any = None,
    extensions: Sequence[str] | None = None,
) -> RunRecord:
    """Store the outcome of one container execution.

    `prompt` is kept as its summary; `attempts`, `model_calls` and `log_tail` are cut to
    the sizes above.
    """
    async with tx(store) as s:
        run = Run(
            space_id=space_id,
            reason=RunReason(reason),
            job_id=job_id,
            exit_code=exit_code,
            duration_ms=duration_ms,
            image=image,
            container_name=container_name,
            input_tokens=input_tokens,
            output_tokens=output_tokens,
            cost_usd=cost_usd,
            model=model,
            error=error,
            started_at=started_at or utcnow(),
            finished_at=finished_at,
            prompt_summary=summarize_prompt(prompt),
            attempts=bound_entries(attempts, ATTEMPT_KEYS, MAX_ATTEMPTS),
            model_calls=bound_entries(
                list(model_calls) if model_calls is not None else None,
                MODEL_CALL_KEYS,
                MAX_MODEL_CALLS,
            ),
            log_tail=bound_log_tail(log_tail),
            tool_calls=bound_entries(
                tool_calls, TOOL_CALL_KEYS, MAX_TOOL_CALLS, text_chars=TOOL_TEXT_CHARS
            ),
            extensions=list(extensions) if extensions else None,
        )
        s.add(run)
        await s.flush()
        return to_record(RunRecord, run)


# --------------------------------------------------------------------------- reads


async def list_runs(
    store: Store, *, space_id: str | None = None, limit: int = 50
) -> list[RunRecord]:
    """The most recent runs, newest first."""
    q = select(Run)
    if space_id is not None:
        q = q.where(Run.space_id == space_id)
    async with tx(store) as s:
        rows = await s.scalars(q.order_by(Run.started_at.desc(), Run.id.desc()).limit(limit))
        return [to_record(RunRecord, r) for r in rows]


async def get_run(store: Store, run_id: int) -> RunRecord | None:
    """One run with all its details, or None."""
    async with tx(store) as s:
        run = await s.get(Run, run_id)
        return to_record(RunRecord, run) if run is not None else None


@dataclass(frozen=True, slots=True)
class RunFilter:
    """Which runs a list shows; None means any. `failed`: True for every reason but ok."""

    space_id: str | None = None
    reason: RunReason | None = None
    failed: bool | None = None
    min_duration_ms: int | None = None
    exit_code: int | None = None
    min_tokens: int | None = None  # input + output
    min_cost_usd: float | None = None


@dataclass(frozen=True, slots=True)
class RunCursor:
    """Where a page of the newest-first list ends: the last run's start and id.

    `token()` is its form for a URL (no secret in it: a time and a row id).
    """

    started_at: datetime
    id: int

    def token(self) -> str:
        delta = self.started_at - _EPOCH
        micros = (delta.days * 86_400 + delta.seconds) * 1_000_000 + delta.microseconds
        return f"{micros}.{self.id}"

    @classmethod
    def parse(cls, token: str) -> RunCursor | None:
        """The cursor a `token()` named, or None for anything else."""
        micros, dot, run_id = token.partition(".")
        if not dot or not micros.lstrip("-").isdigit() or not run_id.isdigit():
            return None
        if len(micros) > 20 or len(run_id) > 19:
            return None
        try:
            return cls(_EPOCH + timedelta(microseconds=int(micros)), int(run_id))
        except OverflowError:
            return None


@dataclass(frozen=True, slots=True)
class RunListItem:
    """One row of the runs list: the short columns only."""

    id: int
    job_id: int | None
    space_id: str
    reason: RunReason
    exit_code: int | None
    duration_ms: int | None
    input_tokens: int
    output_tokens: int
    cost_usd: float | None
    started_at: datetime


@dataclass(frozen=True, slots=True)
class RunPage:
    items: list[RunListItem]
    next: RunCursor | None  # None on the last page


_LIST_COLUMNS = tuple(getattr(Run, f.name) for f in fields(RunListItem))


def _conditions(f: RunFilter, before: RunCursor | None) -> list[ColumnElement[bool]]:
    where: list[ColumnElement[bool]] = []
    if f.space_id is not None:
        where.append(Run.space_id == f.space_id)
    if f.reason is not None:
        where.append(Run.reason == f.reason)
    if f.failed is True:
        where.append(Run.reason != RunReason.OK)
    elif f.failed is False:
        where.append(Run.reason == RunReason.OK)
    if f.min_duration_ms is not None:
        where.append(Run.duration_ms >= f.min_duration_ms)
    if f.exit_code is not None:
        where.append(Run.exit_code == f.exit_code)
    if f.min_tokens is not None:
        where.append(Run.input_tokens + Run.output_tokens >= f.min_tokens)
    if f.min_cost_usd is not None:
        where.append(Run.cost_usd >= f.min_cost_usd)
    if before is not None:
        where.append(
            or_(
                Run.started_at < before.started_at,
                and_(Run.started_at == before.started_at, Run.id < before.id),
            )
        )
    return where


async def find_runs(
    store: Store,
    filters: RunFilter | None = None,
    *,
    before: RunCursor | None = None,
    limit: int = 50,
) -> RunPage:
    """Runs matching `filters`, newest first, at most `limit`, after the cursor `before`."""
    q = (
        select(*_LIST_COLUMNS)
        .where(*_conditions(filters or RunFilter(), before))
        .order_by(Run.started_at.desc(), Run.id.desc())
        .limit(limit + 1)
    )
    async with tx(store) as s:
        rows = (await s.execute(q)).all()
    items = [to_record(RunListItem, r) for r in rows[:limit]]
    if len(rows) <= limit or not items:
        return RunPage(items, None)
    return RunPage(items, RunCursor(items[-1].started_at, items[-1].id))


__all__ = [
    "RunCursor",
    "RunFilter",
    "RunListItem",
    "RunPage",
    "RunRecord",
    "bound_entries",
    "bound_log_tail",
    "find_runs",
    "get_run",
    "list_runs",
    "record_run",
    "summarize_prompt",
]
