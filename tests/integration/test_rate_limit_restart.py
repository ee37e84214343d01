"""The daily cap counts requests accepted before a restart (seeded from the job queue).

A real `mercury run` on a tmp site: two requests are answered, the process stops, a new
one starts and refuses the third request of the day. Without seeding it would answer.
"""

from __future__ import annotations

import time
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from tests.fakes.model_server import FakeModelServer
from tests.integration.mercury_site import echo_responder

pytestmark = pytest.mark.docker


def _clear_of_midnight(margin_s: float = 180) -> None:
    """The cap resets at 00:00 UTC: start this test well inside one UTC day."""
    now = datetime.now(UTC)
    midnight = (now + timedelta(days=1)).replace(hour=0, minute=0, second=0, microsecond=0)
    left = (midnight - now).total_seconds()
    if left < margin_s:
        time.sleep(left + 1)


def test_daily_cap_survives_a_restart(site: Any, fake: FakeModelServer) -> None:
    _clear_of_midnight()
    # The web chat's operator is an admin: the cap under test is the admin role's.
    m = site(rate_limits={"burst": 100, "burst_window": 60, "daily": {"admin": 2, "member": 2}})
    fake.responder = echo_responder()
    m.start()
    m.post("cap", "one")
    m.wait_replies("cap", 1)
    m.post("cap", "two")
    assert [r["text"] for r in m.wait_replies("cap", 2)] == ["re: one", "re: two"]
    assert m.stop() == 0

    m.start()
    m.post("cap", "three")
    # The web chat lists what this process saw: only the third request and its refusal.
    (refusal,) = m.wait_replies("cap", 1)
    assert "Daily limit of 2" in refusal["text"], refusal
    assert len(fake.requests) == 2  # the third never reached the model
    assert m.stop() == 0
