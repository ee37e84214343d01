"""Login throttling per client address: a few free failures, then waits that double.

Without it the dashboard password can be guessed as fast as the server answers (1,400 to
2,000 guesses a second were measured). The rule:

- the first `free_failures` wrong passwords from an address cost nothing (typos happen);
- each further failure makes the address wait `base_delay_s`, then twice that, and so on,
  capped at `max_delay_s` (15 minutes by default);
- while an address must wait, its password is not checked at all, so guessing faster
  than the waits gains nothing;
- a right password resets the address; an address with no failure for `forget_after_s`
  is forgotten.

This module only decides; the caller passes the time in and does the I/O (answering 429
with Retry-After). Memory is bounded: at most `max_tracked` addresses are remembered, the
stalest dropped first. IPv6 addresses are grouped by /64, since one host usually holds a
whole /64 and could otherwise make up a fresh address for every guess.
"""

from __future__ import annotations

import ipaddress
from collections import OrderedDict
from dataclasses import dataclass

from mercury.core.timefmt import format_wait


@dataclass(frozen=True)
class ThrottlePolicy:
    """The numbers of the rule; the defaults suit one operator's dashboard password."""

    free_failures: int = 5
    base_delay_s: float = 1.0
    max_delay_s: float = 15 * 60.0
    forget_after_s: float = 3600.0
    max_tracked: int = 10_000

    def __post_init__(self) -> None:
        if self.free_failures < 0 or self.base_delay_s <= 0 or self.max_tracked < 1:
            raise ValueError("free_failures >= 0, base_delay_s > 0 and max_tracked >= 1")
        if self.max_delay_s < self.base_delay_s or self.forget_after_s < self.max_delay_s:
            # Forgetting an address before its wait is over would end the wait early.
            raise ValueError("base_delay_s <= max_delay_s <= forget_after_s")

    def delay_after(self, failures: int) -> float:
        """The wait imposed after `failures` consecutive failures (0 while still free)."""
        extra = failures - self.free_failures
        if extra <= 0:
            return 0.0
        # 2**extra overflows floats long after the cap applies: stop doubling at the cap.
        delay = self.base_delay_s
        for _ in range(extra - 1):
            delay *= 2
            if delay >= self.max_delay_s:
                return self.max_delay_s
        return min(delay, self.max_delay_s)


@dataclass(frozen=True)
class ThrottleVerdict:
    """Whether a password may be checked now; if not, how long to wait."""

    allowed: bool
    retry_after_s: float = 0.0
    failures: int = 0

    @property
    def wait_text(self) -> str:
        return format_wait(self.retry_after_s)


_ALLOWED = ThrottleVerdict(True)


@dataclass
class _Record:
    failures: int
    last_failure: float
    blocked_until: float


def throttle_key(address: str) -> str:
    """The bucket an address is counted in: itself for IPv4, its /64 for IPv6.

    Anything that is not an IP address (a unix socket peer, a test transport) is its own
    bucket, unchanged.
    """
    try:
        ip = ipaddress.ip_address(address.strip().strip("[]"))
    except ValueError:
        return address
    if isinstance(ip, ipaddress.IPv6Address):
        if ip.ipv4_mapped is not None:
            return str(ip.ipv4_mapped)
        return str(ipaddress.IPv6Network((ip, 64), strict=False))
    return str(ip)


class LoginThrottle:
    """Failure counts per address bucket; all times are passed in (monotonic seconds)."""

    def __init__(self, policy: ThrottlePolicy | None = None) -> None:
        self.policy = policy or ThrottlePolicy()
        # key -> record, oldest failure first: pruning pops from the front.
        self._records: OrderedDict[str, _Record] = OrderedDict()

    def __len__(self) -> int:
        return len(self._records)

    def check(self, key: str, now: float) -> ThrottleVerdict:
        """May a password from `key` be checked now?"""
        record = self._live(key, now)
        if record is None:
            return _ALLOWED
        if now < record.blocked_until:
            return ThrottleVerdict(False, record.blocked_until - now, record.failures)
        return ThrottleVerdict(True, 0.0, record.failures)

    def failure(self, key: str, now: float) -> ThrottleVerdict:
        """Count a wrong password from `key`; the verdict tells the wait it now has."""
        record = self._live(key, now)
        if record is None:
            record = _Record(0, now, now)
            self._records[key] = record
        record.failures += 1
        record.last_failure = now
        delay = self.policy.delay_after(record.failures)
        record.blocked_until = now + delay
        self._records.move_to_end(key)
        self._prune(now)
        return ThrottleVerdict(delay == 0, delay, record.failures)

    def success(self, key: str) -> None:
        """A right password: the address starts afresh."""
        self._records.pop(key, None)

    def _live(self, key: str, now: float) -> _Record | None:
        record = self._records.get(key)
        if record is not None and self._expired(record, now):
            del self._records[key]
            return None
        return record

    def _expired(self, record: _Record, now: float) -> bool:
        return now >= record.blocked_until and now - record.last_failure >= (
            self.policy.forget_after_s
        )

    def _prune(self, now: float) -> None:
        # Records are ordered by last failure, so the expired ones are at the front.
        while self._records:
            first = next(iter(self._records.values()))
            if not self._expired(first, now):
                break
            self._records.popitem(last=False)
        while len(self._records) > self.policy.max_tracked:
            self._records.popitem(last=False)


def refusal_message(verdict: ThrottleVerdict, policy: ThrottlePolicy) -> str:
    """The 429 text: how long, and why."""
    return (
        f"too many failed logins from your address ({verdict.failures} in a row): "
        f"wait {verdict.wait_text} before trying again; the password is not checked "
        f"until then, and each further failure doubles the wait "
        f"(up to {format_wait(policy.max_delay_s)})"
    )


def failure_message(verdict: ThrottleVerdict, refused: str = "wrong username or password") -> str:
    """The 401 text after a wrong password, saying when a wait now applies."""
    if verdict.allowed:
        return refused
    return (
        f"{refused}; after {verdict.failures} failed logins from your address "
        f"the next try must wait {verdict.wait_text}"
    )
