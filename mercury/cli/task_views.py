"""What `mercury tasks list` shows: each task with its space's clock, usual cost and cap.

Kept apart from the commands (cli/tasks.py) so each stays short; the JSON is the host
API's task JSON (api/routes/tasks.py) plus what only the operator sees.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import tzinfo
from typing import TYPE_CHECKING, Any

from mercury.cli.common import out

if TYPE_CHECKING:  # imported where used: `mercury --help` need not load storage
    from mercury.config import Config
    from mercury.core.budget import Cap, Spent
    from mercury.storage import Database, TaskRecord

PROMPT_SHOWN = 48  # characters of a prompt in the list


async def space_zone(db: Database, config: Config, space_id: str) -> tzinfo:
    """The zone the space's times are read and shown in."""
    from mercury.core.when import space_timezone
    from mercury.storage import get_preferences

    return space_timezone(await get_preferences(db, space_id), config.scheduler.timezone)


def describe(task: TaskRecord) -> str:
    """The schedule in a few words: `every 1h30m`, `cron 0 9 * * 1-5`, `once`."""
    if task.cron:
        return f"cron {task.cron}"
    if task.interval_s:
        return f"every {duration_text(task.interval_s)}"
    return "once"


def duration_text(seconds: int) -> str:
    """Seconds in the duration grammar, as `--every` takes it: 5400 -> `1h30m`."""
    parts = []
    for unit, size in (("d", 86400), ("h", 3600), ("m", 60), ("s", 1)):
        count, seconds = divmod(seconds, size)
        if count:
            parts.append(f"{count}{unit}")
    return "".join(parts) or "0s"


@dataclass(frozen=True, slots=True)
class TaskView:
    """One task as `list` shows it: the record, its zone, its recent cost, its cap."""

    task: TaskRecord
    zone: tzinfo
    cost: Spent | None
    cap: Cap | None
    cap_source: str  # "config" or "space"


async def task_views(db: Database, config: Config, space_id: str | None) -> list[TaskView]:
    from mercury.core.budget import Scope
    from mercury.pipeline.budget import read_overrides
    from mercury.pipeline.scheduler import task_cost_estimate
    from mercury.storage.tasks import list_tasks

    base = config.budgets.caps()
    views = []
    zones: dict[str, tzinfo] = {}
    caps: dict[str, tuple[Cap | None, str]] = {}
    for task in await list_tasks(db, space_id):
        sid = task.space_id
        if sid not in zones:
            zones[sid] = await space_zone(db, config, sid)
            own = await read_overrides(db, sid)
            caps[sid] = (
                base.with_overrides(own).get(Scope.TASK_RUN),
                "space" if Scope.TASK_RUN in own else "config",
            )
        cap, source = caps[sid]
        cost = await task_cost_estimate(db, task.id)
        views.append(TaskView(task, zones[sid], cost, cap, source))
    return views


def state(task: TaskRecord) -> str:
    """enabled / paused / done (a one-shot that ran), with its flags."""
    if task.enabled:
        words = "enabled"
    elif task.run_at is not None and task.next_run_at is None:
        words = "done"
    else:
        words = "paused"
    if task.silent:
        words += ", silent"
    if task.catch_up == "skip":
        words += ", catch-up skip"
    return words


def last_result(task: TaskRecord, zone: tzinfo) -> str:
    """`ok 2030-01-31 09:00 CET: why`, or `never run`."""
    from mercury.core.when import format_local

    if task.last_outcome is None:
        return "never run"
    when = f" {format_local(task.last_outcome_at, zone)}" if task.last_outcome_at else ""
    detail = f": {task.last_detail}" if task.last_detail else ""
    return f"{task.last_outcome}{when}{detail}"


def cost_text(view: TaskView) -> str:
    """`$0.012, 1,234 tokens a run (cap $0.50)`; `-` before the first metered run."""
    from mercury.core.budget import format_usd

    cap = f" (cap {view.cap.describe()})" if view.cap is not None else ""
    if view.cost is None:
        return "-" + cap
    return f"{format_usd(view.cost.usd)}, {view.cost.tokens:,} tokens{cap}"


def view_json(view: TaskView) -> dict[str, Any]:
    """The host API's task JSON, plus what only the operator sees."""
    from mercury.api.routes.tasks import task_json
    from mercury.core.when import format_local, zone_name

    task = view.task
    data = task_json(task, view.cost)
    data.update(
        space_id=task.space_id,
        conversation_id=task.conversation_id,
        state=state(task).split(",")[0],
        timezone=zone_name(view.zone),
        next_run_local=(
            format_local(task.next_run_at, view.zone) if task.next_run_at is not None else None
        ),
        task_run_cap=view.cap.to_text() if view.cap is not None else None,
        task_run_cap_source=view.cap_source,
    )
    return data


def print_table(views: list[TaskView]) -> None:
    from rich.table import Table
    from rich.text import Text

    from mercury.core.when import format_both

    table = Table(box=None, pad_edge=False, header_style="bold")
    table.add_column("ID", no_wrap=True)
    table.add_column("SPACE", overflow="fold", min_width=5)
    for name in ("SCHEDULE", "STATE", "NEXT RUN", "LAST RESULT", "COST/RUN"):
        table.add_column(name, overflow="fold", min_width=8)
    # The prompt gives way first on a narrow terminal: its start is enough to recognise it.
    table.add_column("PROMPT", no_wrap=True, overflow="ellipsis", max_width=PROMPT_SHOWN, ratio=1)
    for view in views:
        task = view.task
        nxt = task.next_run_at
        table.add_row(
            *(
                Text(cell)
                for cell in (
                    str(task.id),
                    task.space_id,
                    describe(task),
                    state(task),
                    format_both(nxt, view.zone) if nxt is not None and task.enabled else "-",
                    last_result(task, view.zone),
                    cost_text(view),
                    " ".join(task.prompt.split()),
                )
            )
        )
    out.print(table)


__all__ = [
    "TaskView",
    "cost_text",
    "describe",
    "duration_text",
    "last_result",
    "print_table",
    "space_zone",
    "state",
    "task_views",
    "view_json",
]
