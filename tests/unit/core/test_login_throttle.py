"""The login throttle's rule, as tables: free failures, doubling waits, reset, bounds."""

from __future__ import annotations

import pytest

from mercury.core.login_throttle import (
    LoginThrottle,
    ThrottlePolicy,
    failure_message,
    refusal_message,
    throttle_key,
)

POLICY = ThrottlePolicy(free_failures=3, base_delay_s=1.0, max_delay_s=60.0, forget_after_s=600)


@pytest.mark.parametrize(
    ("failures", "delay"),
    [(0, 0), (1, 0), (3, 0), (4, 1), (5, 2), (6, 4), (7, 8), (9, 32), (10, 60), (500, 60)],
)
def test_delay_doubles_after_the_free_failures_and_is_capped(failures: int, delay: float) -> None:
    assert POLICY.delay_after(failures) == delay


def test_the_default_policy_caps_at_fifteen_minutes() -> None:
    policy = ThrottlePolicy()
    assert policy.delay_after(policy.free_failures) == 0
    assert policy.delay_after(policy.free_failures + 1) == 1
    assert policy.delay_after(10_000) == 15 * 60


# Each step: (time, event, expected (allowed, retry_after_s, failures) after the event).
# "fail" records a wrong password, "check" asks whether one may be checked, "ok" a right one.
SCENARIO = [
    (0.0, "fail", (True, 0, 1)),
    (0.0, "fail", (True, 0, 2)),
    (0.1, "fail", (True, 0, 3)),
    (0.2, "check", (True, 0, 3)),
    (0.2, "fail", (False, 1.0, 4)),  # the first failure past the free ones: wait 1 s
    (0.7, "check", (False, 0.5, 4)),  # half of it left; the password is not checked
    (1.2, "check", (True, 0, 4)),  # waited: may try again
    (1.2, "fail", (False, 2.0, 5)),  # and the wait doubles
    (3.2, "fail", (False, 4.0, 6)),
    (7.2, "fail", (False, 8.0, 7)),
    (15.2, "ok", (True, 0, 0)),  # a right password resets the address
    (15.2, "fail", (True, 0, 1)),
]


def test_a_sequence_of_failures_checks_and_a_success() -> None:
    throttle = LoginThrottle(POLICY)
    for now, event, expected in SCENARIO:
        if event == "fail":
            verdict = throttle.failure("198.51.100.7", now)
        elif event == "check":
            verdict = throttle.check("198.51.100.7", now)
        else:
            throttle.success("198.51.100.7")
            verdict = throttle.check("198.51.100.7", now)
        got = (verdict.allowed, round(verdict.retry_after_s, 6), verdict.failures)
        assert got == expected, (now, event)


def test_addresses_are_counted_apart() -> None:
    throttle = LoginThrottle(POLICY)
    for _ in range(6):
        throttle.failure("198.51.100.7", 0.0)
    assert not throttle.check("198.51.100.7", 0.0).allowed
    assert throttle.check("198.51.100.8", 0.0).allowed


def test_an_address_is_forgotten_after_a_quiet_while_but_never_mid_wait() -> None:
    policy = ThrottlePolicy(free_failures=0, base_delay_s=100, max_delay_s=100, forget_after_s=100)
    throttle = LoginThrottle(policy)
    throttle.failure("a", 0.0)
    assert throttle.check("a", 99.9).retry_after_s == pytest.approx(0.1)
    verdict = throttle.check("a", 100.0)
    assert verdict.allowed and verdict.failures == 0  # forgotten: counts start again
    assert len(throttle) == 0


def test_memory_is_bounded_stalest_first() -> None:
    policy = ThrottlePolicy(free_failures=0, max_tracked=3)
    throttle = LoginThrottle(policy)
    for i, address in enumerate("abcd"):
        throttle.failure(address, float(i))
    assert len(throttle) == 3
    assert throttle.check("a", 4.0).failures == 0  # the stalest was dropped
    assert not throttle.check("d", 3.5).allowed


def test_expired_addresses_are_pruned_when_others_fail() -> None:
    policy = ThrottlePolicy(free_failures=5, forget_after_s=900)
    throttle = LoginThrottle(policy)
    for i in range(100):
        throttle.failure(f"10.0.0.{i}", 0.0)
    throttle.failure("10.0.1.1", 1000.0)
    assert len(throttle) == 1


@pytest.mark.parametrize(
    "kwargs",
    [
        {"free_failures": -1},
        {"base_delay_s": 0},
        {"max_tracked": 0},
        {"base_delay_s": 10, "max_delay_s": 5},
        {"max_delay_s": 900, "forget_after_s": 60},  # forgetting would end a wait early
    ],
)
def test_inconsistent_policies_are_refused(kwargs: dict[str, float]) -> None:
    with pytest.raises(ValueError):
        ThrottlePolicy(**kwargs)  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("address", "key"),
    [
        ("203.0.113.9", "203.0.113.9"),
        ("2001:db8:1:2:aaaa::1", "2001:db8:1:2::/64"),
        ("2001:db8:1:2:bbbb::2", "2001:db8:1:2::/64"),  # same /64: same bucket
        ("2001:db8:1:3::1", "2001:db8:1:3::/64"),
        ("::ffff:203.0.113.9", "203.0.113.9"),
        ("[::1]", "::/64"),
        ("not-an-ip", "not-an-ip"),
    ],
)
def test_throttle_key_groups_ipv6_by_64(address: str, key: str) -> None:
    assert throttle_key(address) == key


def test_messages_say_how_long_and_why() -> None:
    throttle = LoginThrottle(POLICY)
    for _ in range(4):
        verdict = throttle.failure("a", 0.0)
    assert failure_message(verdict) == (
        "wrong username or password; after 4 failed logins from your address "
        "the next try must wait 1 s"
    )
    waiting = throttle.check("a", 0.0)
    text = refusal_message(waiting, POLICY)
    assert text.startswith("too many failed logins from your address (4 in a row): wait 1 s")
    assert "not checked" in text and "up to 1 m" in text
    assert failure_message(throttle.check("b", 0.0)) == "wrong username or password"
