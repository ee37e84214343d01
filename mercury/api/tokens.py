"""Per-run tokens: minted by the host for one run, bound to its space and caller role.

A token is the only credential an agent holds. It is random (32 bytes, URL-safe), lives in
memory only, and dies with the run (`revoke`). Tokens are never logged: `RunGrant` carries
everything a handler needs to know about the caller, without the token itself.
"""

from __future__ import annotations

import secrets
import threading
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime

from mercury.core.permissions import permissions_of

TOKEN_BYTES = 32


@dataclass(frozen=True)
class ServiceGrant:
    """One credentialed endpoint the run may call through the host (api/routes/services.py).

    `name` is the service's name, or the MCP server's for a remote MCP server. `headers`
    are templates: `${VAR}` is filled from the host's environment at call time, so the
    secret never enters the container nor this record."""

    extension: str
    name: str
    base_url: str
    # Not hashed (a dict is not hashable); compared all the same.
    headers: Mapping[str, str] = field(default_factory=dict, hash=False)


@dataclass(frozen=True)
class RunGrants:
    """What a run's granted extensions let it reach: hosts through the egress proxy
    (api/egress.py; patterns as in extension.yaml `network`) and credentialed services.
    The default grants nothing: every egress connection is refused."""

    hosts: tuple[str, ...] = ()
    services: tuple[ServiceGrant, ...] = ()

    def service(self, extension: str, name: str) -> ServiceGrant | None:
        """The grant for `extension`'s service (or remote MCP server) `name`, if any."""
        for svc in self.services:
            if svc.extension == extension and svc.name == name:
                return svc
        return None


NO_GRANTS = RunGrants()


@dataclass(frozen=True)
class RunGrant:
    """What a valid token grants: acting for one run, in one space, with the caller's role."""

    run_id: str
    space_id: str
    role: str
    # What the role may do in this space, resolved by core.permissions when the run began
    # (a custom role's set comes from the space); None = the built-in role's permissions.
    permissions: frozenset[str] | None = None
    # Who the run's spending counts against (pipeline/budget.py): the sender's
    # "platform:user_id" (None for a scheduled task) and the task that queued the run.
    user_key: str | None = None
    task_id: int | None = None
    # The hosts and services of the extensions the run was granted (none by default).
    grants: RunGrants = NO_GRANTS
    created_at: datetime = field(default_factory=lambda: datetime.now(UTC))

    def may(self, permission: str) -> bool:
        """Whether the run's caller holds `permission` (never a comparison of role names)."""
        granted = self.permissions if self.permissions is not None else permissions_of(self.role)
        return permission in granted


class TokenStore:
    """In-memory token -> grant map. Thread-safe, so a runner thread may mint or revoke."""

    def __init__(self) -> None:
        self._grants: dict[str, RunGrant] = {}
        self._lock = threading.Lock()

    def mint(
        self,
        run_id: str,
        space_id: str,
        role: str,
        permissions: frozenset[str] | None = None,
        *,
        user_key: str | None = None,
        task_id: int | None = None,
        grants: RunGrants | None = None,
    ) -> str:
        """A fresh random token for `run_id`; a run may hold several (all die on revoke).

        `permissions`: the caller's, from core.permissions (needed for a custom role).
        `grants`: the hosts and services of its granted extensions (None = nothing)."""
        if not run_id or not space_id or not role:
            raise ValueError("run_id, space_id and role must be non-empty")
        token = secrets.token_urlsafe(TOKEN_BYTES)
        grant = RunGrant(
            run_id=run_id,
            space_id=space_id,
            role=role,
            permissions=permissions,
            user_key=user_key,
            task_id=task_id,
            grants=grants if grants is not None else NO_GRANTS,
        )
        with self._lock:
            self._grants[token] = grant
        return token

    def lookup(self, token: str | None) -> RunGrant | None:
        """The grant of a live token, else None (unknown, revoked, empty)."""
        if not token:
            return None
        with self._lock:
            return self._grants.get(token)

    def revoke(self, run_id: str) -> int:
        """Invalidate every token of `run_id`; returns how many there were."""
        with self._lock:
            dead = [t for t, g in self._grants.items() if g.run_id == run_id]
            for t in dead:
                del self._grants[t]
        return len(dead)

    def active_runs(self) -> set[str]:
        """Run ids that currently hold at least one token."""
        with self._lock:
            return {g.run_id for g in self._grants.values()}

    def __len__(self) -> int:
        with self._lock:
            return len(self._grants)

    def __repr__(self) -> str:
        # Never the tokens themselves.
        return f"<TokenStore tokens={len(self)}>"
