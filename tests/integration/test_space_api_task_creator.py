"""Who a task created through the host API acts for (POST /spaces/{id}/tasks): the run's
sender, or for a run of a scheduled task that task's creator. Real socket, real SQLite
(the fixtures of test_space_api.py)."""

from __future__ import annotations

from mercury.storage import add_task, list_tasks
from tests.integration.test_space_api import Api, api, db

__all__ = ["api", "db"]  # fixtures shared with test_space_api.py


async def test_a_task_acts_for_the_runs_sender(api: Api) -> None:
    token = api.tokens.mint("run-alice", "space-a", "member", user_key="web:alice")
    status, body = await api.call(
        "POST", "/spaces/space-a/tasks", token, {"prompt": "digest", "every": "1h"}
    )
    assert status == 201, body
    assert body["task"]["created_by"] == "web:alice"
    (task,) = await list_tasks(api.db, "space-a")
    assert task.created_by == "web:alice"


async def test_a_task_made_by_a_tasks_run_acts_for_that_tasks_creator(api: Api) -> None:
    parent = await add_task(api.db, "space-a", "plan the week", interval_s=3600,
                            created_by="operator")  # fmt: skip
    token = api.tokens.mint("run-task", "space-a", "admin", task_id=parent.id)
    status, body = await api.call(
        "POST", "/spaces/space-a/tasks", token, {"prompt": "monday", "every": "1h"}
    )
    assert status == 201, body
    assert body["task"]["created_by"] == "operator"
