"""What the chat's /tasks says: a space's scheduled tasks in a few lines (pure, no I/O).

One line per task: its id, how it repeats, the start of its prompt, when it runs next on
the space's clock, what became of its last run and what a run costs on average. The
pipeline (pipeline/commands.py) reads the tasks and hands them in as `TaskLine`s; the
operator's full view is `mercury tasks list`.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta, tzinfo

from mercury.core.budget import Spent, format_usd
from mercury.core.when import zone_name

# A chat message is no place for a hundred tasks: the rest is counted, not listed.
MAX_LINES = 15
PROMPT_CHARS = 40


@dataclass(frozen=True, slots=True)
class TaskLine:
    """One task as /tasks shows it (the storage record's fields that matter here)."""

    id: int
    prompt: str
    cron: str | None
    interval_s: int | None
    enabled: bool
    next_run_at: datetime | None
    last_outcome: str | None = None
    last_detail: str | None = None
    last_outcome_at: datetime | None = None
    silent: bool = False
    cost: Spent | None = None  # the average of its recent runs


def when_near(when: datetime, now: datetime, zone: tzinfo) -> str:
    """`today 09:00`, `tomorrow 09:00`, `yesterday 18:00`, `Mon 3 Feb 09:00`, or with the
    year when it is not this one - on the zone's clock, with its abbreviation."""
    local = when.astimezone(zone)
    today = now.astimezone(zone).date()
    clock = f"{local:%H:%M} {local.tzname() or zone_name(zone)}"
    days = {
        today: "today",
        today + timedelta(days=1): "tomorrow",
        today - timedelta(days=1): "yesterday",
    }
    day = days.get(local.date())
    if day is None:
        day = f"{local:%a} {local.day} {local:%b}"
        if local.year != today.year:
            day += f" {local.year}"
    return f"{day} {clock}"


def _every(seconds: int) -> str:
    for unit, size in (("d", 86400), ("h", 3600), ("m", 60)):
        if seconds % size == 0:
            return f"{seconds // size}{unit}"
    return f"{seconds}s"


def _schedule(task: TaskLine) -> str:
    if task.cron:
        return f"cron {task.cron}"
    if task.interval_s:
        return f"every {_every(task.interval_s)}"
    return "once"


def _prompt(text: str) -> str:
    flat = " ".join(text.split())
    return flat if len(flat) <= PROMPT_CHARS else flat[: PROMPT_CHARS - 1] + "…"


def task_line(task: TaskLine, now: datetime, zone: tzinfo) -> str:
    """`#3 every 30m "Check the build…" - next today 09:00 CET - last ok today 08:30 CET
    - about $0.01 a run`."""
    silent = " (silent)" if task.silent else ""
    parts = [f'#{task.id} {_schedule(task)}{silent} "{_prompt(task.prompt)}"']
    if not task.enabled:
        once_and_ran = not task.cron and not task.interval_s and task.next_run_at is None
        parts.append("done" if once_and_ran else "paused")
    elif task.next_run_at is not None:
        parts.append(f"next {when_near(task.next_run_at, now, zone)}")
    if task.last_outcome:
        last = f"last {task.last_outcome}"
        if task.last_outcome_at is not None:
            last += f" {when_near(task.last_outcome_at, now, zone)}"
        if task.last_detail and task.last_outcome != "ok":
            last += f" ({task.last_detail})"
        parts.append(last)
    if task.cost is not None and task.cost.usd:
        parts.append(f"about {format_usd(task.cost.usd)} a run")
    elif task.cost is not None:  # unpriced models: tokens are all there is
        parts.append(f"about {task.cost.tokens:,} tokens a run")
    return " - ".join(parts)


def tasks_text(tasks: Sequence[TaskLine], now: datetime, zone: tzinfo) -> str:
    """The /tasks reply: a heading with the zone, a line per task (at most MAX_LINES)."""
    if not tasks:
        return 'No scheduled tasks here. Ask me to schedule one ("every weekday at 9, ...").'
    head = f"Scheduled tasks here (times in {zone_name(zone)}):"
    lines = [task_line(t, now, zone) for t in tasks[:MAX_LINES]]
    if len(tasks) > MAX_LINES:
        lines.append(f"... and {len(tasks) - MAX_LINES} more.")
    return "\n".join([head, *lines])


__all__ = ["MAX_LINES", "TaskLine", "task_line", "tasks_text", "when_near"]
