"""The Health page: `mercury doctor`'s checks, run when the page is opened, each with its fix.

Why a cache: the checks talk to the Docker engine, the database and each chat platform.
A reload, a second tab or the page's own refresh every 30 seconds must not turn into a
stream of calls to them, so one run's rows are kept for CACHE_S seconds and shared by
every request in that time; requests that arrive while a run is under way wait for that
same run. The Refresh button asks for a new run, but not more often than every
MIN_FRESH_S seconds. A run that takes longer than TIMEOUT_S answers one failed row
instead of a page that never loads.

The checks are the CLI's own (mercury.doctor.run_checks) over the configuration and role
the server is running with (a gateway has no Docker engine to check); details are
scrubbed of anything credential-shaped before they are shown.
"""

from __future__ import annotations

import asyncio
import time
import weakref
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime

from aiohttp import web

from mercury.checks import CheckResult, Status
from mercury.dashboard.deps import DashboardDeps, deps
from mercury.dashboard.render import fragment, page, render
from mercury.logging import first_line, get_logger, scrub_text

__all__ = ["CheckRow", "HealthCache", "HealthReport", "check_rows", "routes", "summary"]

log = get_logger(__name__)

routes = web.RouteTableDef()

CACHE_S = 10.0
MIN_FRESH_S = 2.0
TIMEOUT_S = 30.0
REFRESH_EVERY_S = 30


@dataclass(frozen=True, slots=True)
class CheckRow:
    """One check as the page shows it (scrubbed text, a badge class)."""

    name: str
    status: str
    badge: str
    detail: str
    fix: str
    required: bool


@dataclass(frozen=True, slots=True)
class HealthReport:
    rows: tuple[CheckRow, ...]
    checked_at: datetime
    took_s: float


_BADGE = {Status.OK: "ok", Status.WARN: "warn", Status.FAIL: "bad", Status.SKIP: ""}


def check_rows(results: Sequence[CheckResult]) -> tuple[CheckRow, ...]:
    """The doctor's results as page rows; a failed optional check shows as a warning."""
    rows = []
    for r in results:
        badge = _BADGE.get(r.status, "")
        if r.status is Status.FAIL and not r.required:
            badge = "warn"
        rows.append(
            CheckRow(
                name=r.name,
                status=r.status.value,
                badge=badge,
                detail=scrub_text(r.detail),
                fix=scrub_text(r.hint),
                required=r.required,
            )
        )
    return tuple(rows)


def summary(rows: Sequence[CheckRow]) -> dict[str, int]:
    """How many rows have each status, in the order ok, warn, fail, skip."""
    counts = {s.value: 0 for s in (Status.OK, Status.WARN, Status.FAIL, Status.SKIP)}
    for row in rows:
        counts[row.status] = counts.get(row.status, 0) + 1
    return counts


Runner = Callable[[], Awaitable[list[CheckResult]]]


@dataclass
class HealthCache:
    """The last run's report, and the run under way (shared by concurrent requests)."""

    run: Runner
    cache_s: float = CACHE_S
    min_fresh_s: float = MIN_FRESH_S
    timeout_s: float = TIMEOUT_S
    clock: Callable[[], float] = time.monotonic
    runs: int = 0  # how many times the checks ran (tests count them)
    _report: HealthReport | None = None
    _at: float = 0.0
    _pending: asyncio.Task[HealthReport] | None = field(default=None, repr=False)

    async def get(self, *, fresh: bool = False) -> HealthReport:
        """The cached report while young enough, else a new run's (joined if one is under way)."""
        age = self.clock() - self._at
        limit = self.min_fresh_s if fresh else self.cache_s
        if self._report is not None and age < limit:
            return self._report
        if self._pending is None or self._pending.done():
            self._pending = asyncio.create_task(self._run())
        # shield: a browser that gives up does not cancel the run other requests share.
        return await asyncio.shield(self._pending)

    async def _run(self) -> HealthReport:
        started = self.clock()
        self.runs += 1
        try:
            results = await asyncio.wait_for(self.run(), timeout=self.timeout_s)
        except TimeoutError:
            results = [
                CheckResult(
                    "checks finished",
                    Status.FAIL,
                    f"the checks took longer than {self.timeout_s:g} s",
                    "run `mercury doctor` on the server to see which one hangs",
                )
            ]
        except Exception as exc:  # a check that crashes is a row, not a 500
            log.warning("health checks failed", error=first_line(exc))
            results = [
                CheckResult(
                    "checks ran",
                    Status.FAIL,
                    first_line(exc),
                    "run `mercury doctor` on the server for the full output",
                )
            ]
        report = HealthReport(
            rows=check_rows(results),
            checked_at=datetime.now(UTC),
            took_s=self.clock() - started,
        )
        self._report, self._at = report, self.clock()
        return report


# One cache per dashboard (per DashboardDeps), made on first use: the foundation's
# DashboardDeps is frozen and shared, so the cache lives beside it, not in it.
_caches: dict[int, tuple[weakref.ref[DashboardDeps], HealthCache]] = {}


def _doctor(d: DashboardDeps) -> Runner:
    async def run() -> list[CheckResult]:
        from mercury.doctor import run_checks  # the doctor imports most of Mercury

        loaded = d.loaded
        results = await run_checks(lambda: loaded, d.role)
        live = ext_image_row(d)
        return [live if live and r.name == live.name else r for r in results]

    return run


def ext_image_row(d: DashboardDeps) -> CheckResult | None:
    """The derived image as this `mercury run` sees it: a build under way (with its step)
    or failed (with why) says more than the doctor's look at the engine."""
    images = getattr(d.runner, "images", None)
    status = images.build_status() if images is not None else None
    state = getattr(status, "state", None)
    if state == "building":
        step = getattr(status, "step", None) or "starting"
        return CheckResult(
            "extension image", Status.WARN, f"building: {step}",
            "runs use the plain agent image until it is built", required=False,
        )  # fmt: skip
    if state == "failed":
        return CheckResult(
            "extension image", Status.FAIL, f"build failed: {getattr(status, 'error', '')}",
            "fix the extension named, then restart Mercury (runs use the plain agent image)",
            required=False,
        )  # fmt: skip
    return None


def health_cache(d: DashboardDeps) -> HealthCache:
    """The cache for this dashboard, created on first use."""
    key = id(d)
    entry = _caches.get(key)
    if entry is not None and entry[0]() is d:
        return entry[1]
    for k, (ref, _) in list(_caches.items()):
        if ref() is None:
            del _caches[k]
    cache = HealthCache(_doctor(d))
    _caches[key] = (weakref.ref(d), cache)
    return cache


def _context(report: HealthReport) -> dict[str, object]:
    counts = summary(report.rows)
    failing = any(r.status == Status.FAIL.value and r.required for r in report.rows)
    return {
        "report": report,
        "counts": counts,
        "failing": failing,
        "refresh_every": REFRESH_EVERY_S,
    }


@routes.get("/health")
@page
async def health_page(request: web.Request) -> web.Response:
    report = await health_cache(deps(request)).get(fresh="fresh" in request.query)
    return render(request, "health.html", **_context(report))


@routes.get("/health/checks")
@page
async def health_checks(request: web.Request) -> web.Response:
    """The checks as an htmx fragment (the Refresh button and the periodic refresh)."""
    report = await health_cache(deps(request)).get(fresh="fresh" in request.query)
    return fragment(request, "_health_checks.html", **_context(report))
