"""The pure half of /metrics: a snapshot turned into Prometheus text, no database."""

from __future__ import annotations

from datetime import UTC, datetime

from prometheus_client.parser import text_string_to_metric_families

from mercury.adapters.base import AdapterState
from mercury.core.run_reason import RunReason
from mercury.dashboard.metrics import MetricsSnapshot, exposition, metrics_allowed
from mercury.storage.stats import (
    DURATION_BUCKETS_S,
    ReasonSummary,
    RunSummary,
    SpaceUsage,
    UsageTotals,
)

EMPTY_RUNS = RunSummary(
    by_reason=[], buckets=[(b, 0) for b in DURATION_BUCKETS_S], timed=0, duration_s=0.0
)


def _parse(snap: MetricsSnapshot) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    text = exposition(snap).decode()
    return {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for family in text_string_to_metric_families(text)
        for s in family.samples
    }


def test_running_containers_adapters_and_a_quiet_database() -> None:
    event = datetime(2026, 5, 1, 12, tzinfo=UTC)
    snap = MetricsSnapshot(
        runs=EMPTY_RUNS,
        running=3,
        waiting=2,
        adapters={
            "slack": AdapterState(connected=True, last_event_at=event),
            "discord": AdapterState(connected=False, last_error="send failed: x"),
        },
    )
    s = _parse(snap)
    assert s[("mercury_running_containers", ())] == 3
    assert s[("mercury_warm_containers", ())] == 2
    assert s[("mercury_adapter_up", (("platform", "slack"),))] == 1
    assert s[("mercury_adapter_up", (("platform", "discord"),))] == 0
    last = "mercury_adapter_last_event_timestamp_seconds"
    assert s[(last, (("platform", "slack"),))] == event.timestamp()
    assert (last, (("platform", "discord"),)) not in s  # never had an event
    assert s[("mercury_run_duration_seconds_count", ())] == 0
    assert s[("mercury_run_duration_seconds_bucket", (("le", "+Inf"),))] == 0
    assert not any(name == "mercury_runs_total" for name, _ in s)
    # Free text (the adapter's last error) is never a label or a value.
    assert "send failed" not in exposition(snap).decode()


def test_runs_and_usage_become_counters() -> None:
    runs = RunSummary(
        by_reason=[ReasonSummary(RunReason.OOM, 4, 12.5)],
        buckets=[(b, 4) for b in DURATION_BUCKETS_S],
        timed=4,
        duration_s=12.5,
    )
    snap = MetricsSnapshot(
        runs=runs,
        queue={"s1": 5},
        usage=[SpaceUsage("s1", UsageTotals(input_tokens=9, output_tokens=1, cost_usd=0.5))],
    )
    s = _parse(snap)
    assert s[("mercury_runs_total", (("reason", "oom"),))] == 4
    assert s[("mercury_run_duration_seconds_sum", ())] == 12.5
    assert s[("mercury_queue_depth", (("space", "s1"),))] == 5
    assert s[("mercury_tokens_total", (("direction", "input"), ("space", "s1")))] == 9
    assert s[("mercury_cost_usd_total", (("space", "s1"),))] == 0.5


def test_metrics_token_check() -> None:
    assert metrics_allowed("Bearer tok", "tok")
    assert metrics_allowed("bearer  tok ", "tok")
    assert not metrics_allowed("Bearer tok", None)  # no token configured: bearer never works
    assert not metrics_allowed("Bearer tok", "")
    assert not metrics_allowed("Bearer to", "tok")
    assert not metrics_allowed("Basic tok", "tok")
    assert not metrics_allowed(None, "tok")
