"""`mercury.storage.repo` still offers every name it did before storage was split by aggregate.

Callers everywhere say `repo.enqueue_job(...)`; a name lost in the split would only show
up as an AttributeError at run time, on whatever path used it.
"""

from __future__ import annotations

import inspect

import pytest

from mercury import storage
from mercury.storage import repo

# Every public name repo.py defined or was used through before the split (not the
# typing and SQLAlchemy names it merely imported).
BEFORE_THE_SPLIT = [
    "DEFAULT_MAX_ATTEMPTS",
    "FINAL_JOB_STATUSES",
    "Database",
    "DuplicateMessage",
    "JobStatus",
    "MessageRole",
    "NotFound",
    "RunReason",
    "Store",
    "utcnow",
    "ConversationRecord",
    "JobRecord",
    "MessageRecord",
    "MuteRecord",
    "RoleRecord",
    "RunRecord",
    "SpaceRecord",
    "StaleJobs",
    "TaskRecord",
    "UsageRecord",
    "abort_queued_jobs",
    "add_message",
    "add_task",
    "add_usage",
    "cancel_task",
    "claim_next_jobs",
    "delete_preference",
    "due_tasks",
    "enqueue_job",
    "finish_job",
    "get_conversation",
    "get_conversation_by_id",
    "get_job",
    "get_or_create_space",
    "get_preferences",
    "get_role",
    "get_space",
    "grant_permission",
    "has_message",
    "is_muted",
    "latest_conversation",
    "link_conversation",
    "list_jobs",
    "list_mutes",
    "list_roles",
    "list_runs",
    "list_spaces",
    "list_tasks",
    "mark_task_ran",
    "mute",
    "pause_space",
    "recent_messages",
    "record_run",
    "remove_role",
    "requeue_job",
    "requeue_or_fail_stale_running",
    "reset_context",
    "revoke_permission",
    "role_permissions",
    "set_preference",
    "set_role",
    "set_space_profile",
    "space_for_conversation",
    "unlink_conversation",
    "unmute",
    "usage_for_space",
]


@pytest.mark.parametrize("name", BEFORE_THE_SPLIT)
def test_repo_still_offers(name: str) -> None:
    assert hasattr(repo, name), f"repo.{name} disappeared"
    assert name in repo.__all__


def test_repo_defines_nothing_of_its_own() -> None:
    """Each function lives in its aggregate module; repo only points at it."""
    for name in repo.__all__:
        obj = getattr(repo, name)
        if inspect.isfunction(obj) or inspect.isclass(obj):
            assert obj.__module__ != repo.__name__, name


def test_every_repo_function_is_also_on_the_package() -> None:
    """`from mercury.storage import enqueue_job` and `repo.enqueue_job` are one function."""
    for name in repo.__all__:
        if inspect.isfunction(getattr(repo, name)) and name != "utcnow":
            assert getattr(storage, name) is getattr(repo, name), name
