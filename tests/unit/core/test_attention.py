"""core/attention.py: each rule of `mercury status`'s verdict, with a fixed `now`."""

from __future__ import annotations

from dataclasses import replace
from datetime import UTC, datetime, timedelta

from mercury.core.attention import (
    AdapterFacts,
    CapFacts,
    Facts,
    Liveness,
    ProcessFacts,
    RunningFacts,
    Thresholds,
    attention,
    is_fresh,
    liveness,
)

NOW = datetime(2027, 3, 1, 12, 0, tzinfo=UTC)
GIB = 1024**3


def proc(
    *,
    beat_ago: float = 5,
    stopped: bool = False,
    interval: float = 15,
    adapters: tuple[AdapterFacts, ...] = (),
    pid: int = 42,
    pid_id: str = "mercury-aaa",
) -> ProcessFacts:
    at = NOW - timedelta(seconds=beat_ago)
    return ProcessFacts(
        id=pid_id,
        instance="main",
        host="box",
        pid=pid,
        interval_s=interval,
        started_at=NOW - timedelta(hours=2),
        updated_at=at,
        stopped_at=at if stopped else None,
        adapters=adapters,
    )


def facts(**kw: object) -> Facts:
    base = Facts(
        now=NOW,
        instance="main",
        processes=[proc(adapters=(AdapterFacts("web", True, NOW - timedelta(minutes=1)),))],
        run_timeout_s=600,
        free_bytes=100 * GIB,
        min_free=GIB,
    )
    return replace(base, **kw)  # type: ignore[arg-type]


def kinds(f: Facts, th: Thresholds | None = None) -> list[str]:
    return [c.kind for c in attention(f, th or Thresholds())[1]]


def test_a_running_instance_with_nothing_wrong_is_fine() -> None:
    state, concerns = attention(facts())
    assert state is Liveness.RUNNING
    assert concerns == []


def test_heartbeat_freshness_follows_the_process_interval() -> None:
    # 4 intervals of 15 s = 60 s: fresh at 60, stale just after.
    assert is_fresh(proc(beat_ago=60), NOW)
    assert not is_fresh(proc(beat_ago=61), NOW)
    # A slow writer (interval 60 s) is allowed 4 minutes.
    assert is_fresh(proc(beat_ago=200, interval=60), NOW)
    # Never less than min_stale_s, however short the interval.
    assert is_fresh(proc(beat_ago=50, interval=1), NOW)
    assert not is_fresh(proc(beat_ago=5, stopped=True), NOW)


def test_a_silent_process_is_not_running_and_named() -> None:
    state, concerns = attention(facts(processes=[proc(beat_ago=600, pid=77)]))
    assert state is Liveness.SILENT
    assert [c.kind for c in concerns] == ["not_running"]
    text = concerns[0].text
    assert "not running or is stuck" in text and "10 m" in text and "pid 77 on box" in text


def test_a_cleanly_stopped_process_says_when_it_stopped() -> None:
    state, concerns = attention(facts(processes=[proc(beat_ago=3600, stopped=True)]))
    assert state is Liveness.STOPPED
    assert concerns[0].kind == "not_running"
    assert "stopped at 11:00 UTC" in concerns[0].text


def test_no_heartbeat_at_all_is_its_own_state() -> None:
    state, concerns = attention(facts(processes=[]))
    assert state is Liveness.NEVER
    assert "never written a heartbeat" in concerns[0].text


def test_one_live_process_among_dead_ones_is_running() -> None:
    old = proc(beat_ago=7200, stopped=True, pid_id="mercury-old")
    new = proc(beat_ago=3, pid_id="mercury-new")
    state, live = liveness([old, new], NOW)
    assert state is Liveness.RUNNING
    assert [p.id for p in live] == ["mercury-new"]


def test_a_process_outlived_by_a_restart_is_dead_before_min_stale() -> None:
    # Killed 20 s ago (fresh by min_stale_s alone), restarted since: the new one beat
    # more than 4 of the old one's intervals (4 * 1 s) after the old one's last beat.
    killed = proc(beat_ago=20, interval=1, pid_id="killed")
    restarted = proc(beat_ago=1, interval=1, pid_id="restarted")
    state, live = liveness([killed, restarted], NOW)
    assert state is Liveness.RUNNING and [p.id for p in live] == ["restarted"]
    # Side by side (a gateway and a worker): a few seconds apart, both live.
    worker = proc(beat_ago=10, pid_id="worker")
    gateway = proc(beat_ago=1, pid_id="gateway")
    assert [p.id for p in liveness([worker, gateway], NOW)[1]] == ["gateway", "worker"]


def test_the_newest_process_decides_between_stopped_and_silent() -> None:
    crashed_later = proc(beat_ago=100, pid_id="b")
    stopped_earlier = proc(beat_ago=5000, stopped=True, pid_id="a")
    assert liveness([stopped_earlier, crashed_later], NOW)[0] is Liveness.SILENT


def test_adapters_of_a_dead_process_are_not_flagged_twice() -> None:
    dead = proc(beat_ago=600, adapters=(AdapterFacts("slack", False, last_error="boom"),))
    assert kinds(facts(processes=[dead])) == ["not_running"]


def test_a_disconnected_adapter_needs_attention_with_its_error() -> None:
    a = AdapterFacts("telegram", False, last_error="401 Unauthorized", last_error_at=NOW)
    state, concerns = attention(facts(processes=[proc(adapters=(a,))]))
    assert state is Liveness.RUNNING
    assert [c.kind for c in concerns] == ["adapter_disconnected"]
    assert concerns[0].text == "adapter telegram is not connected: 401 Unauthorized"


def test_a_recent_adapter_error_counts_an_old_one_does_not() -> None:
    recent = AdapterFacts(
        "slack", True, last_error="send failed", last_error_at=NOW - timedelta(minutes=14)
    )
    old = replace(recent, last_error_at=NOW - timedelta(minutes=16))
    assert kinds(facts(processes=[proc(adapters=(recent,))])) == ["adapter_error"]
    assert kinds(facts(processes=[proc(adapters=(old,))])) == []


def test_a_run_far_past_the_timeout_is_overdue() -> None:
    # timeout 600 s: overdue past 600 * 1.5 + 60 = 960 s.
    ok = RunningFacts("s1", NOW - timedelta(seconds=959))
    stuck = RunningFacts("s2", NOW - timedelta(seconds=961))
    assert kinds(facts(running=[ok, RunningFacts("s3", None)])) == []
    _, concerns = attention(facts(running=[ok, stuck]))
    assert [c.kind for c in concerns] == ["run_overdue"]
    assert "space s2" in concerns[0].text and "container.timeout (10 m)" in concerns[0].text


def test_overdue_runs_are_not_judged_when_mercury_is_down() -> None:
    stuck = RunningFacts("s2", NOW - timedelta(hours=5))
    assert kinds(facts(processes=[proc(beat_ago=900)], running=[stuck])) == ["not_running"]


def test_a_deep_queue_needs_attention_per_space() -> None:
    assert kinds(facts(queue={"a": 19, "b": 3})) == []
    _, concerns = attention(facts(queue={"a": 20, "b": 25}))
    assert [c.text for c in concerns] == [
        "25 messages wait in space b (at least 20)",
        "20 messages wait in space a (at least 20)",
    ]
    assert kinds(facts(queue={"a": 5}), Thresholds(queue_deep=5)) == ["queue_deep"]


def test_failures_count_from_the_threshold_without_aborted_and_budget() -> None:
    assert kinds(facts(failures={"timeout": 1, "crashed": 1})) == []
    assert kinds(facts(failures={"aborted": 9, "budget": 9, "error": 2})) == []
    _, concerns = attention(facts(failures={"timeout": 2, "crashed": 1, "aborted": 4}))
    assert [c.text for c in concerns] == ["3 runs failed in the last hour (2 timeout, 1 crashed)"]
    assert kinds(facts(failures={"oom": 1}), Thresholds(failures=1)) == ["failures"]


def test_free_disk_under_and_near_min_free() -> None:
    under = attention(facts(free_bytes=GIB // 2))[1]
    assert [c.kind for c in under] == ["disk_low"]
    assert "under disk.min_free" in under[0].text and "no run starts" in under[0].text
    near = attention(facts(free_bytes=int(1.5 * GIB)))[1]
    assert "close to disk.min_free" in near[0].text
    assert kinds(facts(free_bytes=2 * GIB)) == []
    assert kinds(facts(free_bytes=None)) == ["disk_unknown"]


def test_spending_caps_near_and_reached() -> None:
    caps = [
        CapFacts("budgets.instance_day", 0.79, "$3.95 of $5.00"),
        CapFacts("space_day cap of space a", 0.8, "$0.80 of $1.00"),
        CapFacts("space_month cap of space b", 1.2, "$12.00 of $10.00"),
    ]
    _, concerns = attention(facts(caps=caps))
    assert [c.text for c in concerns] == [
        "space_day cap of space a is 80% used ($0.80 of $1.00)",
        "space_month cap of space b is reached ($12.00 of $10.00): runs are refused",
    ]


def test_not_running_comes_first() -> None:
    f = facts(processes=[proc(beat_ago=900)], free_bytes=GIB // 2, queue={"a": 50})
    assert kinds(f) == ["not_running", "disk_low", "queue_deep"]
