"""The Runs pages: every container run, filterable, and one run's whole story.

/runs lists runs newest first, filtered in SQL by the query string (space, status,
reason, minimum duration, exit code: nothing secret, so a filtered view can be
bookmarked) and paged with a cursor (`before`, the last row's start and id), so a page
costs the same with ten runs or ten thousand. /runs/{id} shows what the run record keeps:
the prompt summary, outcome, attempts, model calls, tokens and cost, and for a failed
run the end of its container log (escaped by the template, like everything else).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import urlencode

from aiohttp import web

from mercury.dashboard.deps import deps
from mercury.dashboard.render import page, render
from mercury.storage import RunReason, list_spaces
from mercury.storage.runs import (
    ATTEMPT_KEYS,
    MODEL_CALL_KEYS,
    TOOL_CALL_KEYS,
    RunCursor,
    RunFilter,
    find_runs,
    get_run,
)

__all__ = ["PAGE_SIZE", "RunQuery", "parse_query", "reason_class", "routes", "table_rows"]

routes = web.RouteTableDef()

PAGE_SIZE = 50
FILTER_FIELDS = ("space", "status", "reason", "min_duration", "exit_code", "min_tokens", "min_cost")
STATUSES = ("ok", "failed")
MAX_SPACE_CHOICES = 500  # the filter's suggestions; any space id can still be typed


@dataclass(frozen=True)
class RunQuery:
    """The list's query string, read: the filter, the page, and what to show in the form."""

    filters: RunFilter
    before: RunCursor | None
    form: dict[str, str] = field(default_factory=dict)  # the fields as given, trimmed
    errors: list[str] = field(default_factory=list)

    def page_url(self, cursor: RunCursor | None = None) -> str:
        """/runs with the same filters, at the page after `cursor` (first page if None)."""
        params = {k: v for k, v in self.form.items() if v}
        if cursor is not None:
            params["before"] = cursor.token()
        return "/runs" + ("?" + urlencode(params) if params else "")


def parse_query(query: Mapping[str, str]) -> RunQuery:
    """Read the filters; a value that makes no sense is named in `errors`, not guessed."""
    form = {k: query.get(k, "").strip() for k in FILTER_FIELDS}
    errors: list[str] = []
    space = form["space"] or None
    if space is not None and len(space) > 255:
        errors.append("space: at most 255 characters")
        space = None
    failed: bool | None = None
    if form["status"]:
        if form["status"] in STATUSES:
            failed = form["status"] == "failed"
        else:
            errors.append("status: ok or failed")
    reason: RunReason | None = None
    if form["reason"]:
        try:
            reason = RunReason(form["reason"])
        except ValueError:
            errors.append("reason: one of " + ", ".join(r.value for r in RunReason))
    min_ms: int | None = None
    if form["min_duration"]:
        try:
            seconds = float(form["min_duration"])
            if not 0 <= seconds <= 10**7:
                raise ValueError(seconds)
            min_ms = round(seconds * 1000)
        except ValueError:
            errors.append("minimum duration: a number of seconds, 0 or more")
    exit_code: int | None = None
    if form["exit_code"]:
        try:
            exit_code = int(form["exit_code"])
            if not -(2**31) <= exit_code < 2**31:
                raise ValueError(exit_code)
        except ValueError:
            errors.append("exit code: a whole number")
            exit_code = None
    min_tokens: int | None = None
    if form["min_tokens"]:
        try:
            min_tokens = int(form["min_tokens"])
            if not 0 <= min_tokens < 2**62:
                raise ValueError(min_tokens)
        except ValueError:
            errors.append("minimum tokens: a whole number, 0 or more")
            min_tokens = None
    min_cost: float | None = None
    if form["min_cost"]:
        try:
            min_cost = float(form["min_cost"])
            if not 0 <= min_cost <= 10**9:
                raise ValueError(min_cost)
        except ValueError:
            errors.append("minimum cost: a number of US dollars, 0 or more")
            min_cost = None
    before: RunCursor | None = None
    token = query.get("before", "").strip()
    if token:
        before = RunCursor.parse(token)
        if before is None:
            errors.append("before: not a page of this list (start again from the first page)")
    filters = RunFilter(
        space_id=space,
        reason=reason,
        failed=failed,
        min_duration_ms=min_ms,
        exit_code=exit_code,
        min_tokens=min_tokens,
        min_cost_usd=min_cost,
    )
    return RunQuery(filters, before, form, errors)


def reason_class(reason: str) -> str:
    """The badge colour of an outcome: ok green, a /stop amber, any failure red."""
    if reason == RunReason.OK:
        return "ok"
    return "warn" if reason == RunReason.ABORTED else "bad"


def table_rows(
    entries: Sequence[Mapping[str, Any]] | None, keys: Sequence[str]
) -> list[dict[str, Any]]:
    """Stored entries with every key present (None where a run left one out).

    Attempts come from the agent and older records may lack a field; the template then
    tests values, never whether a key exists.
    """
    return [{k: entry.get(k) for k in keys} for entry in entries or ()]


@routes.get("/runs")
@page
async def runs_list(request: web.Request) -> web.Response:
    """The filtered, paged list (400 with the reasons when a filter makes no sense)."""
    db = deps(request).db
    query = parse_query(request.query)
    spaces = [s.id for s in (await list_spaces(db))[:MAX_SPACE_CHOICES]]
    common = {
        "query": query,
        "form": query.form,
        "reasons": [r.value for r in RunReason],
        "statuses": STATUSES,
        "spaces": spaces,
        "reason_class": reason_class,
    }
    if query.errors:
        return render(
            request, "runs.html", status=400, items=[], next_url=None, first_url=None, **common
        )
    result = await find_runs(db, query.filters, before=query.before, limit=PAGE_SIZE)
    return render(
        request,
        "runs.html",
        items=result.items,
        next_url=query.page_url(result.next) if result.next else None,
        first_url=query.page_url() if query.before else None,
        **common,
    )


@routes.get(r"/runs/{run_id:\d{1,18}}")
@page
async def run_detail(request: web.Request) -> web.Response:
    """One run: prompt summary, outcome, attempts, model calls, cost, log tail."""
    run = await get_run(deps(request).db, int(request.match_info["run_id"]))
    if run is None:
        return render(request, "runs_detail.html", status=404, run=None)
    return render(
        request,
        "runs_detail.html",
        run=run,
        failed=run.reason != RunReason.OK,
        attempts=table_rows(run.attempts, ATTEMPT_KEYS),
        model_calls=table_rows(run.model_calls, MODEL_CALL_KEYS),
        tool_calls=table_rows(run.tool_calls, TOOL_CALL_KEYS),
        reason_class=reason_class,
    )
