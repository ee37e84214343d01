"""The warm pool's decisions (sandbox/warm.py) as plain functions: no Docker involved."""

from __future__ import annotations

import asyncio
from pathlib import Path

from mercury.sandbox.types import RunRequest
from mercury.sandbox.warm import (
    UsualExtensions,
    WarmSlot,
    expired,
    oldest,
    plain_request,
    should_warm,
)


def slot(space: str, made_at: float, ready: bool = True) -> WarmSlot:
    s = WarmSlot(
        run_id=f"r-{space}",
        space_id=space,
        name=f"mercury-x-r-{space}",
        image="img",
        io_dir=Path("/nowhere"),
        socket_dir=Path("/nowhere"),
        made_at=made_at,
    )
    if ready:
        s.ready.set()
    return s


def test_a_space_gets_a_waiting_container_unless_it_has_one_or_runs_are_held() -> None:
    assert should_warm(enabled=True, limit=4, has_slot=False, blocked=None)
    assert not should_warm(enabled=False, limit=4, has_slot=False, blocked=None)
    assert not should_warm(enabled=True, limit=0, has_slot=False, blocked=None)
    assert not should_warm(enabled=True, limit=4, has_slot=True, blocked=None)
    assert not should_warm(enabled=True, limit=4, has_slot=False, blocked="disk low")


def test_idle_past_the_time_to_live_expires() -> None:
    assert not expired(100.0, 699.9, 600.0)
    assert expired(100.0, 700.0, 600.0)


async def test_the_oldest_ready_one_makes_room() -> None:
    slots = {"a": slot("a", 50.0), "b": slot("b", 10.0), "c": slot("c", 5.0, ready=False)}
    assert oldest(slots) == "b"  # c is older but still being made
    assert oldest({"c": slots["c"]}) is None
    await asyncio.sleep(0)


def test_only_a_run_with_the_configs_container_may_use_a_warm_one() -> None:
    base = RunRequest(run_id="r", space_id="s", input={})
    assert plain_request(base)
    for changed in (
        {"image": "other:latest"},
        {"memory": 64 * 1024**2},
        {"network": "bridge"},
        {"env": {"TZ": "UTC"}},
        {"readonly_mounts": {Path("/ext"): "/opt/ext"}},
        {"timeout_s": 5.0},
    ):
        assert not plain_request(RunRequest(run_id="r", space_id="s", input={}, **changed))


def test_a_run_granted_the_usual_extensions_may_use_a_warm_one() -> None:
    """Warm containers are made with the default role's extensions mounted: a run granted
    exactly those fits, one granted more or fewer (an admin, a stranger) does not."""
    usual = UsualExtensions({Path("/ext/web"): "/opt/mercury/ext/web"}, ("web",))
    member = RunRequest(run_id="r", space_id="s", input={}, readonly_mounts=dict(usual.mounts),
                        extensions=("web",))  # fmt: skip
    assert plain_request(member, usual)
    assert not plain_request(member)  # no usual extensions: only an ungranted run fits
    admin = RunRequest(
        run_id="r", space_id="s", input={},
        readonly_mounts={**usual.mounts, Path("/ext/vault"): "/opt/mercury/ext/vault"},
        extensions=("vault", "web"),
    )  # fmt: skip
    assert not plain_request(admin, usual)
    assert not plain_request(RunRequest(run_id="r", space_id="s", input={}), usual)
