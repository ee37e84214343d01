"""Every storage function under one name, so `repo.enqueue_job(...)` keeps working.

Why this module exists: storage is split by aggregate (spaces.py, conversations.py,
messages.py, jobs.py, runs.py, usage.py, roles.py, mutes.py, preferences.py, tasks.py,
replies.py, person_notes.py; recall.py searches messages), one module per kind of row,
with the shared plumbing in session.py. Code written before the split says
`from mercury.storage import repo`; this re-export keeps it working unchanged. New code
may import the aggregate module it needs.
Nothing is defined here.
"""

from __future__ import annotations

from mercury.storage.conversations import (
    ConversationRecord,
    get_conversation,
    get_conversation_by_id,
    latest_conversation,
    link_conversation,
    space_for_conversation,
    unlink_conversation,
)
from mercury.storage.db import Database
from mercury.storage.errors import DuplicateMessage, NotFound
from mercury.storage.jobs import (
    DEFAULT_MAX_ATTEMPTS,
    JobRecord,
    StaleJobs,
    UserJob,
    abort_queued_jobs,
    claim_next_jobs,
    count_jobs,
    enqueue_job,
    finish_job,
    get_job,
    list_jobs,
    requeue_job,
    requeue_or_fail_stale_running,
    user_jobs_since,
)
from mercury.storage.messages import MessageRecord, add_message, has_message, recent_messages
from mercury.storage.models import FINAL_JOB_STATUSES, JobStatus, MessageRole, RunReason, utcnow
from mercury.storage.mutes import MuteRecord, is_muted, list_mutes, mute, unmute
from mercury.storage.person_notes import (
    NoteError,
    PersonNoteRecord,
    append_note,
    clear_note,
    get_note,
    list_notes,
    set_note,
)
from mercury.storage.preferences import delete_preference, get_preferences, set_preference
from mercury.storage.recall import RecallHit, search_messages
from mercury.storage.roles import (
    RoleRecord,
    get_role,
    grant_permission,
    list_roles,
    remove_role,
    revoke_permission,
    role_permissions,
    set_role,
)
from mercury.storage.runs import RunRecord, list_runs, record_run
from mercury.storage.session import Store
from mercury.storage.spaces import (
    SpaceRecord,
    get_or_create_space,
    get_space,
    list_spaces,
    pause_space,
    pause_until_resumed,
    reset_context,
    resume_space,
    set_space_profile,
)
from mercury.storage.stats import (
    failures_by_reason,
    last_activity,
    queue_depth,
    run_summary,
    runs_per_hour,
    usage_by_space,
    usage_per_space_per_day,
    usage_today,
    usage_total,
)
from mercury.storage.tasks import (
    TaskRecord,
    add_task,
    cancel_task,
    due_tasks,
    list_tasks,
    mark_task_ran,
)
from mercury.storage.usage import UsageRecord, add_usage, usage_for_space

__all__ = [
    "DEFAULT_MAX_ATTEMPTS",
    "FINAL_JOB_STATUSES",
    "ConversationRecord",
    "Database",
    "DuplicateMessage",
    "JobRecord",
    "JobStatus",
    "MessageRecord",
    "MessageRole",
    "MuteRecord",
    "NotFound",
    "NoteError",
    "PersonNoteRecord",
    "RecallHit",
    "RoleRecord",
    "RunReason",
    "RunRecord",
    "SpaceRecord",
    "StaleJobs",
    "Store",
    "TaskRecord",
    "UsageRecord",
    "UserJob",
    "abort_queued_jobs",
    "add_message",
    "add_task",
    "add_usage",
    "append_note",
    "cancel_task",
    "claim_next_jobs",
    "clear_note",
    "count_jobs",
    "delete_preference",
    "due_tasks",
    "enqueue_job",
    "failures_by_reason",
    "finish_job",
    "get_conversation",
    "get_conversation_by_id",
    "get_job",
    "get_note",
    "get_or_create_space",
    "get_preferences",
    "get_role",
    "get_space",
    "grant_permission",
    "has_message",
    "is_muted",
    "last_activity",
    "latest_conversation",
    "link_conversation",
    "list_jobs",
    "list_mutes",
    "list_notes",
    "list_roles",
    "list_runs",
    "list_spaces",
    "list_tasks",
    "mark_task_ran",
    "mute",
    "pause_space",
    "pause_until_resumed",
    "queue_depth",
    "recent_messages",
    "record_run",
    "remove_role",
    "requeue_job",
    "requeue_or_fail_stale_running",
    "reset_context",
    "resume_space",
    "revoke_permission",
    "role_permissions",
    "run_summary",
    "runs_per_hour",
    "search_messages",
    "set_note",
    "set_preference",
    "set_role",
    "set_space_profile",
    "space_for_conversation",
    "unlink_conversation",
    "unmute",
    "usage_by_space",
    "usage_for_space",
    "usage_per_space_per_day",
    "usage_today",
    "usage_total",
    "user_jobs_since",
    "utcnow",
]
