"""What each process role may do, on which database, and its run tag (mercury/core/roles.py).

A gateway and its workers are several processes on one database, which only PostgreSQL
serves; `mercury run` and `mercury worker` refuse to start otherwise with the line pinned
here. The run tag is what cleanup tells one process's leftovers from another's by.
"""

from __future__ import annotations

import uuid

import pytest

from mercury.core.roles import SCALE_OUT_DOC, Role, role_problem, run_tag
from mercury.sandbox.contract import run_tag_of

SQLITE = "sqlite+aiosqlite:////var/lib/mercury/mercury.db"
POSTGRES = "postgresql+asyncpg://mercury:secret@db.internal/mercury"


def test_the_roles_are_named_as_the_command_line_spells_them() -> None:
    assert [r.value for r in Role] == ["all", "gateway", "worker"]
    assert Role("gateway") is Role.GATEWAY
    with pytest.raises(ValueError):
        Role("scheduler")


@pytest.mark.parametrize(
    ("role", "runs_containers", "talks_to_chats"),
    [
        (Role.ALL, True, True),
        (Role.GATEWAY, False, True),
        (Role.WORKER, True, False),
    ],
)
def test_what_each_role_does(role: Role, runs_containers: bool, talks_to_chats: bool) -> None:
    assert role.runs_containers is runs_containers
    assert role.talks_to_chats is talks_to_chats


@pytest.mark.parametrize("url", [SQLITE, POSTGRES])
def test_everything_in_one_process_runs_on_either_database(url: str) -> None:
    assert role_problem(Role.ALL, url) is None


@pytest.mark.parametrize("role", [Role.GATEWAY, Role.WORKER])
def test_a_gateway_or_worker_runs_on_postgresql(role: Role) -> None:
    assert role_problem(role, POSTGRES) is None


@pytest.mark.parametrize(("role", "what"), [(Role.GATEWAY, "a gateway"), (Role.WORKER, "a worker")])
def test_a_gateway_or_worker_on_sqlite_is_refused_in_one_line(role: Role, what: str) -> None:
    problem = role_problem(role, SQLITE)
    assert problem is not None
    # One line, naming the key to change first (the config loader's convention), the role,
    # and both ways out: PostgreSQL, or one `mercury run`.
    assert "\n" not in problem
    assert problem.startswith("database_url: ")
    assert what in problem
    assert "PostgreSQL" in problem
    assert "docs/operations.md#moving-to-postgresql" in problem
    assert SCALE_OUT_DOC == "docs/scale-out.md"
    assert SCALE_OUT_DOC in problem
    assert "`mercury run`" in problem


def test_an_in_memory_or_relative_sqlite_url_is_refused_too() -> None:
    # Any URL that is not PostgreSQL's is one process's database.
    for url in ("sqlite+aiosqlite://", "sqlite+aiosqlite:///mercury.db"):
        assert role_problem(Role.WORKER, url) is not None


def test_the_run_tag_is_the_process_id_without_its_prefix() -> None:
    assert run_tag("mercury-0123456789ab") == "0123456789ab"
    # Only the one prefix goes, and only in front.
    assert run_tag("mercury-mercury-x") == "mercury-x"
    assert run_tag("worker-mercury-1") == "worker-mercury-1"
    assert run_tag("") == ""


def test_an_app_process_id_makes_a_tag_that_run_ids_carry_back() -> None:
    # The App's process ids are "mercury-<12 hex>" (mercury/app.py): their tag has no "-",
    # so the tag read back from a run id is the whole tag, not a part of it.
    process_id = f"mercury-{uuid.uuid4().hex[:12]}"
    tag = run_tag(process_id)
    assert "-" not in tag and len(tag) == 12
    assert run_tag_of(f"{tag}-0123456789abcdef") == tag
