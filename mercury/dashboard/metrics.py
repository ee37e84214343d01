"""GET /metrics: Mercury's numbers in the Prometheus text format, for a scraper.

Why a fresh registry per scrape: every value is read from the database (storage.stats)
and the live objects (runner, adapters) at scrape time, so there is no process-global
registry to keep in step, and two Mercury processes on one database report the same
numbers. Collection is split in two: `snapshot` does the async reads, `families` turns a
snapshot into metric families without I/O (tested on its own), `exposition` writes them
with prometheus-client's own encoder.

Auth: `Authorization: Bearer <MERCURY_METRICS_TOKEN>` (compared in constant time) when
that secret is set, or a dashboard login session; otherwise 401. No label carries a
secret or free text (adapter errors are on the Overview, not here).
"""

from __future__ import annotations

import hmac
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from aiohttp import web
from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
    Metric,
)
from prometheus_client.registry import Collector

from mercury.dashboard.deps import deps
from mercury.storage import stats

if TYPE_CHECKING:
    from mercury.adapters.base import AdapterState
    from mercury.storage import Database

__all__ = ["MetricsSnapshot", "exposition", "families", "metrics_allowed", "routes", "snapshot"]

PATH = "/metrics"
# The classic text format: what every Prometheus version and most scrapers read.
CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"
MAX_SPACES = 1000  # label values per per-space family: bounded, whatever the database holds

routes = web.RouteTableDef()


@dataclass(frozen=True, slots=True)
class MetricsSnapshot:
    """Everything one scrape reports, read once."""

    runs: stats.RunSummary
    queue: Mapping[str, int] = field(default_factory=dict)
    running: int = 0
    waiting: int = 0  # warm containers waiting for a message
    usage: list[stats.SpaceUsage] = field(default_factory=list)
    adapters: Mapping[str, AdapterState] = field(default_factory=dict)


async def snapshot(
    db: Database, *, running: int, adapters: Mapping[str, AdapterState], waiting: int = 0
) -> MetricsSnapshot:
    """Read the stored numbers (cumulative, all time) and join the live ones."""
    return MetricsSnapshot(
        runs=await stats.run_summary(db),
        queue=await stats.queue_depth(db, limit=MAX_SPACES),
        running=running,
        waiting=waiting,
        usage=await stats.usage_by_space(db, limit=MAX_SPACES),
        adapters=adapters,
    )


def families(snap: MetricsSnapshot) -> list[Metric]:
    """The metric families of a snapshot (pure: no I/O)."""
    runs = CounterMetricFamily(
        "mercury_runs", "Container runs stored, by how they ended.", labels=["reason"]
    )
    for r in snap.runs.by_reason:
        runs.add_metric([r.reason.value], r.count)
    duration = HistogramMetricFamily(
        "mercury_run_duration_seconds", "How long container runs took (runs with a duration)."
    )
    duration.add_metric(
        [],
        buckets=[(_le(b), float(n)) for b, n in snap.runs.buckets]
        + [("+Inf", float(snap.runs.timed))],
        sum_value=snap.runs.duration_s,
    )
    queue = GaugeMetricFamily(
        "mercury_queue_depth", "Jobs waiting in the queue, per space.", labels=["space"]
    )
    for space, depth in sorted(snap.queue.items()):
        queue.add_metric([space], depth)
    running = GaugeMetricFamily("mercury_running_containers", "Agent containers running now.")
    running.add_metric([], snap.running)
    waiting = GaugeMetricFamily(
        "mercury_warm_containers",
        "Warm agent containers waiting for a space's next message (container.warm).",
    )
    waiting.add_metric([], snap.waiting)
    tokens = CounterMetricFamily(
        "mercury_tokens", "Model tokens used, per space.", labels=["space", "direction"]
    )
    cost = CounterMetricFamily(
        "mercury_cost_usd", "Model cost in USD, per space.", labels=["space"]
    )
    for u in sorted(snap.usage, key=lambda u: u.space_id):
        tokens.add_metric([u.space_id, "input"], u.totals.input_tokens)
        tokens.add_metric([u.space_id, "output"], u.totals.output_tokens)
        cost.add_metric([u.space_id], u.totals.cost_usd)
    up = GaugeMetricFamily(
        "mercury_adapter_up", "1 while the platform adapter is connected.", labels=["platform"]
    )
    last_event = GaugeMetricFamily(
        "mercury_adapter_last_event_timestamp_seconds",
        "When the adapter last handed over an inbound event (Unix time).",
        labels=["platform"],
    )
    for platform, state in sorted(snap.adapters.items()):
        up.add_metric([platform], 1 if state.connected else 0)
        if state.last_event_at is not None:
            last_event.add_metric([platform], state.last_event_at.timestamp())
    return [runs, duration, queue, running, waiting, tokens, cost, up, last_event]


def _le(bound: float) -> str:
    """A bucket bound as Prometheus writes it ("1.0", "0.5")."""
    return str(float(bound))


class _Families(Collector):
    """A collector over families computed before the scrape."""

    def __init__(self, found: Iterable[Metric]) -> None:
        self._found = list(found)

    def collect(self) -> Iterator[Metric]:
        return iter(self._found)


def exposition(snap: MetricsSnapshot) -> bytes:
    """The snapshot in the Prometheus text format, through a registry of its own."""
    registry = CollectorRegistry(auto_describe=False)
    registry.register(_Families(families(snap)))
    return generate_latest(registry)


def metrics_allowed(authorization: str | None, token: str | None) -> bool:
    """Whether the Authorization header carries the metrics token (constant-time)."""
    if not token or not authorization or authorization[:7].lower() != "bearer ":
        return False
    return hmac.compare_digest(authorization[7:].strip().encode(), token.encode())


@routes.get(PATH)
async def metrics(request: web.Request) -> web.Response:
    """The scrape: the bearer token or a login session, else 401."""
    d = deps(request)
    secret = d.loaded.secrets.metrics_token
    token = secret.get_secret_value().strip() if secret is not None else None
    bearer_ok = metrics_allowed(request.headers.get("Authorization"), token)
    if not bearer_ok and await d.auth.session(request) is None:
        raise web.HTTPUnauthorized(
            text="/metrics needs Authorization: Bearer $MERCURY_METRICS_TOKEN or a dashboard login",
            headers={"WWW-Authenticate": 'Bearer realm="mercury metrics"'},
        )
    running = len(d.runner.active_spaces()) if d.runner is not None else 0
    waiting = d.runner.waiting_containers() if d.runner is not None else 0
    adapters = {name: adapter.state for name, adapter in d.adapters.items()}
    body = exposition(await snapshot(d.db, running=running, adapters=adapters, waiting=waiting))
    return web.Response(
        body=body, headers={"Content-Type": CONTENT_TYPE, "Cache-Control": "no-store"}
    )
