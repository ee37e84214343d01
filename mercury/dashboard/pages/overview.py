"""The Overview page: what Mercury is doing now, live, and a Stop button for each run.

One snapshot (`OverviewData`) holds everything the page shows: each adapter's state, the
containers running now, queue depth per space, runs per hour and failures by reason over
the last 24 hours, tokens and cost today. `collect` reads it with one bounded query set
(storage.stats aggregates with limits) plus the live objects (runner, adapters).

Live: the page opens /overview/events (server-sent events, htmx-ext-sse). One
`OverviewFeed` per server collects a snapshot every `interval` seconds while at least one
page is open and hands it to every open stream; each stream renders the fragments with
its own session's context (the Stop forms carry that session's CSRF token). The feed's
task stops when the last page closes, and `close()` (on server shutdown) ends every
stream so the server is not held up by open pages.

Stop (POST /overview/spaces/{id}/stop, CSRF) does what the chat's /stop does, through
the same code (pipeline.commands.ChatCommands.stop): clear the space's queue, abort its
run.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING

from aiohttp import web

from mercury.dashboard.deps import DashboardDeps, deps
from mercury.dashboard.render import fragment, page, render, require_login
from mercury.dashboard.svgchart import Chart, Series, stacked_bars
from mercury.logging import get_logger
from mercury.pipeline.commands import ChatCommands
from mercury.storage import RunReason, stats

if TYPE_CHECKING:
    from mercury.adapters.base import AdapterState
    from mercury.sandbox.runner import RunningContainer

__all__ = [
    "FEED",
    "OverviewData",
    "OverviewFeed",
    "collect",
    "install",
    "routes",
    "runs_chart",
    "sse_event",
]

log = get_logger("mercury.dashboard.overview")

routes = web.RouteTableDef()

QUEUE_ROWS = 20  # spaces shown in the queue table (deepest first)
QUEUE_SPACES_MAX = 1000  # spaces counted in the queue's total (one row each, bounded)
TOP_SPACES = 5  # spaces shown under today's usage
HOURS = 24
TICK_S = 2.0
# An open page's session is looked up again this often (a logout ends its stream).
SESSION_RECHECK_S = 30.0
# The fragments the stream pushes: SSE event name -> template (also included by the page).
FRAGMENTS: dict[str, str] = {
    "adapters": "_overview_adapters.html",
    "running": "_overview_running.html",
    "queue": "_overview_queue.html",
    "activity": "_overview_activity.html",
}
OK_COLOR = "#0072B2"
FAILED_COLOR = "#D55E00"


# --------------------------------------------------------------------------- data


@dataclass(frozen=True, slots=True)
class OverviewData:
    """Everything the page shows, read at `now`."""

    now: datetime
    adapters: Mapping[str, AdapterState]
    running: Sequence[RunningContainer] | None  # None: no container runner in this process
    queue: Mapping[str, int]
    queued_total: int
    queued_spaces: int
    hours: Sequence[stats.HourCount]
    failures: Mapping[RunReason, int]
    today: stats.TodayUsage
    pipeline_running: bool = False
    chart: Chart | None = field(default=None)

    @property
    def queue_truncated(self) -> bool:
        """Whether more spaces wait than the queue table shows."""
        return self.queued_spaces > len(self.queue)

    def elapsed_s(self, run: RunningContainer) -> float:
        """How long `run` has been going at `now` (never negative)."""
        return max(0.0, (self.now - run.started_at).total_seconds())

    @property
    def runs_24h(self) -> int:
        return sum(h.runs for h in self.hours)

    @property
    def failed_24h(self) -> int:
        return sum(h.failed for h in self.hours)


def runs_chart(hours: Sequence[stats.HourCount]) -> Chart:
    """Runs per hour as stacked bars: those that ended ok, and those that did not."""
    categories = [h.hour.astimezone(UTC).strftime("%H:00") for h in hours]
    ok = tuple(float(h.runs - h.failed) for h in hours)
    failed = tuple(float(h.failed) for h in hours)
    return stacked_bars(
        categories,
        [Series("ok", ok, OK_COLOR), Series("failed", failed, FAILED_COLOR)],
        title="Runs per hour, last 24 hours (UTC)",
        description=f"{int(sum(ok) + sum(failed))} runs, {int(sum(failed))} failed",
        unit=lambda v: f"{int(v)} run" + ("" if v == 1 else "s"),
        height=220,
        max_labels=8,
    )


async def collect(d: DashboardDeps, now: datetime | None = None) -> OverviewData:
    """One snapshot: a bounded set of aggregate queries plus the live objects."""
    now = (now or datetime.now(UTC)).astimezone(UTC)
    hours = await stats.runs_per_hour(d.db, hours=HOURS, now=now)
    depths = await stats.queue_depth(d.db, limit=QUEUE_SPACES_MAX)  # deepest first
    return OverviewData(
        now=now,
        adapters={name: d.adapters[name].state for name in sorted(d.adapters)},
        running=d.runner.active_runs() if d.runner is not None else None,
        queue=dict(list(depths.items())[:QUEUE_ROWS]),
        queued_total=sum(depths.values()),
        queued_spaces=len(depths),
        hours=hours,
        failures=await stats.failures_by_reason(d.db, since=now - timedelta(hours=HOURS)),
        today=await stats.usage_today(d.db, today=now.date(), top=TOP_SPACES),
        pipeline_running=d.pipeline is not None,
        chart=runs_chart(hours),
    )


# --------------------------------------------------------------------------- live feed


class OverviewFeed:
    """One snapshot per tick, shared by every open Overview page (see module docstring)."""

    def __init__(self, dashboard: DashboardDeps, interval: float = TICK_S) -> None:
        self.deps = dashboard
        self.interval = interval
        self._streams: set[asyncio.Queue[OverviewData | None]] = set()
        self._task: asyncio.Task[None] | None = None
        self._closed = False

    @property
    def open_streams(self) -> int:
        return len(self._streams)

    @property
    def ticking(self) -> bool:
        return self._task is not None and not self._task.done()

    def subscribe(self) -> asyncio.Queue[OverviewData | None]:
        """A queue that receives each new snapshot (the latest only), then None at close."""
        queue: asyncio.Queue[OverviewData | None] = asyncio.Queue(maxsize=1)
        if self._closed:
            queue.put_nowait(None)
            return queue
        self._streams.add(queue)
        if not self.ticking:
            self._task = asyncio.get_running_loop().create_task(self._tick())
        return queue

    def unsubscribe(self, queue: asyncio.Queue[OverviewData | None]) -> None:
        """Forget a stream; the tick task ends by itself once none is left."""
        self._streams.discard(queue)

    async def close(self, _app: web.Application | None = None) -> None:
        """End every stream and the tick task (server shutdown)."""
        self._closed = True
        for queue in list(self._streams):
            _latest(queue, None)
        self._streams.clear()
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None

    async def _tick(self) -> None:
        while self._streams:
            await asyncio.sleep(self.interval)
            if not self._streams:
                break
            try:
                data = await collect(self.deps)
            except Exception:  # the database may be away for a moment: try again next tick
                log.exception("overview snapshot failed")
                continue
            for queue in list(self._streams):
                _latest(queue, data)


def _latest(queue: asyncio.Queue[OverviewData | None], item: OverviewData | None) -> None:
    """Put `item`, dropping an older snapshot a slow page has not taken yet."""
    with contextlib.suppress(asyncio.QueueEmpty):
        if queue.full():
            queue.get_nowait()
    queue.put_nowait(item)


FEED = web.AppKey("mercury_dashboard_overview_feed", OverviewFeed)


def install(app: web.Application, dashboard: DashboardDeps) -> None:
    """Give `app` its overview feed, closed when the server shuts down."""
    feed = OverviewFeed(dashboard)
    app[FEED] = feed
    app.on_shutdown.append(feed.close)


def sse_event(event: str, html: str) -> bytes:
    """One server-sent event carrying an HTML fragment (one `data:` line per line)."""
    lines = html.splitlines() or [""]
    body = "".join(f"data: {line}\n" for line in lines)
    return f"event: {event}\n{body}\n".encode()


# --------------------------------------------------------------------------- handlers


def _context(data: OverviewData) -> dict[str, object]:
    return {"data": data}


@routes.get("/overview")
@page
async def overview(request: web.Request) -> web.Response:
    data = await collect(deps(request))
    return render(request, "overview.html", notice=None, **_context(data))


@routes.get("/overview/events")
async def overview_events(request: web.Request) -> web.StreamResponse:
    """The page's live parts: every tick, each fragment as an SSE event of its name."""
    await require_login(request)
    feed = request.config_dict[FEED]
    queue = feed.subscribe()
    resp = web.StreamResponse(
        headers={
            "Content-Type": "text/event-stream",
            "Cache-Control": "no-store",
            "X-Accel-Buffering": "no",  # nginx: do not buffer the stream
            "X-Content-Type-Options": "nosniff",
        }
    )
    checked = time.monotonic()
    try:
        await resp.prepare(request)
        await resp.write(b"retry: 5000\n: connected\n\n")
        while (data := await queue.get()) is not None:
            if time.monotonic() - checked > SESSION_RECHECK_S:
                # The session may have ended (logout, expiry) while the page stayed open.
                if await deps(request).auth.session(request) is None:
                    break
                checked = time.monotonic()
            for event, template in FRAGMENTS.items():
                html = fragment(request, template, **_context(data)).text or ""
                await resp.write(sse_event(event, html))
    except ConnectionError:
        pass  # the page went away
    finally:
        feed.unsubscribe(queue)
    return resp


@routes.post("/overview/spaces/{space_id}/stop")
@page
async def stop(request: web.Request) -> web.StreamResponse:
    """The chat's /stop for one space: clear its queue, abort its run."""
    d = deps(request)
    if d.runner is None:
        raise web.HTTPServiceUnavailable(text="the container runner is not running")
    space_id = request.match_info["space_id"]
    notice = await ChatCommands(d.config, d.db, d.runner).stop(space_id)
    log.info("dashboard.stop", space_id=space_id)
    if "HX-Request" not in request.headers:
        raise web.HTTPSeeOther("/overview", headers={"Cache-Control": "no-store"})
    data = await collect(d)
    return fragment(
        request, "_overview_stopped.html", notice=f"{space_id}: {notice}", **_context(data)
    )
