"""Carrying out chat commands (stop, /pause, /resume, /status, /model, clear, /budget, /tasks,
/memory, /forget, /help).

The inbound handler parses and routes a message (`core.router`); when the router says
COMMAND, it hands the parsed `core.commands.Command` here and sends back the text this
returns. Each command is a storage change (or a runner call) plus one line for the chat;
how a pause "until /resume" is stored is the storage layer's business, not ours.
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime, timedelta
from typing import Protocol

from mercury.config import Config, ModelLeg
from mercury.core.budget import Caps
from mercury.core.budget_text import BudgetSetting, caps_text, setting_text
from mercury.core.commands import HELP_TEXT, MODEL_PREF, Command, CommandKind
from mercury.core.router import status_text
from mercury.core.task_text import TaskLine, tasks_text
from mercury.core.when import space_timezone
from mercury.pipeline.budget import BudgetBook, read_overrides, write_override
from mercury.pipeline.budget_status import budget_statuses
from mercury.pipeline.task_gate import task_cost_estimate
from mercury.storage import JobStatus, Store, repo, utcnow

NO_NOTES = "I have no notes about you."


class RunControl(Protocol):
    """What the commands need of the container runner (`sandbox.runner.ContainerRunner`)."""

    async def abort(self, space_id: str) -> bool: ...

    def active_spaces(self) -> set[str]: ...


def find_leg(chain: Sequence[ModelLeg], wanted: str) -> ModelLeg | None:
    """The chain leg `/model switch <wanted>` means: a 1-based number, a model name, or
    "provider/model"; None when nothing matches."""
    wanted = wanted.strip()
    if wanted.isdigit() and 1 <= int(wanted) <= len(chain):
        return chain[int(wanted) - 1]
    return next(
        (leg for leg in chain if wanted in (leg.model, f"{leg.provider}/{leg.model}")), None
    )


def model_list_text(chain: Sequence[ModelLeg], current: str) -> str:
    """The /model list reply: the chain, numbered, the space's current model marked."""
    return "Models:\n" + "\n".join(
        f"{i + 1}. {leg.provider}/{leg.model}" + (" (current)" if leg.model == current else "")
        for i, leg in enumerate(chain)
    )


class ChatCommands:
    """Carries out one command in one space and says what it did, in one line or few."""

    def __init__(
        self,
        config: Config,
        db: Store,
        runner: RunControl,
        *,
        budget: BudgetBook | None = None,
    ) -> None:
        self.config = config
        self.db = db
        self.runner = runner
        # The running spending counters (pipeline/budget.py); without them /budget reads
        # the spend from the database.
        self.budget = budget

    async def run(self, cmd: Command, space_id: str, user_key: str | None = None) -> str:
        """Do `cmd` in the space; the text for the chat.

        `user_key`: who sent it ("platform:user_id"), for /budget's "you: ... used" and
        whose note /memory and /forget mean.
        Every command is safe to do twice (the inbound handler may, when storing the
        message failed after the command was done and the sender retries)."""
        kind = cmd.kind
        if kind is CommandKind.BUDGET:
            return await self.show_budget(space_id, user_key)
        if kind is CommandKind.BUDGET_SET and cmd.budget is not None:
            return await self.set_budget(space_id, cmd.budget)
        if kind is CommandKind.STOP:
            return await self.stop(space_id)
        if kind is CommandKind.PAUSE:
            return await self.pause(space_id, cmd.duration_s)
        if kind is CommandKind.RESUME:
            return await self.resume(space_id)
        if kind is CommandKind.CLEAR:
            return await self.clear(space_id)
        if kind is CommandKind.STATUS:
            return await self.status(space_id)
        if kind is CommandKind.TASKS:
            return await self.tasks(space_id)
        if kind is CommandKind.MODEL_LIST:
            return model_list_text(self.config.model.chain, await self._model(space_id))
        if kind is CommandKind.MODEL_SWITCH:
            return await self.switch_model(space_id, cmd.model or "")
        if kind is CommandKind.MEMORY:
            return await self.memory(space_id, user_key)
        if kind is CommandKind.FORGET:
            return await self.forget(space_id, user_key)
        if kind is CommandKind.FORGET_OTHER and cmd.user is not None:
            return await self.forget(space_id, cmd.user, own=False)
        return HELP_TEXT

    async def stop(self, space_id: str) -> str:
        """Drop the space's queue, then abort its running run (if any)."""
        cleared = await repo.abort_queued_jobs(self.db, space_id, "stopped by /stop")
        stopped = await self.runner.abort(space_id)
        parts = ["Stopped the running request." if stopped else "Nothing was running."]
        if cleared:
            parts.append(f"Cleared {cleared} waiting message(s).")
        return " ".join(parts)

    async def pause(self, space_id: str, duration_s: float | None) -> str:
        """Pause for `duration_s` seconds, or (None) until /resume; survives restarts."""
        if not duration_s:
            await repo.pause_until_resumed(self.db, space_id)
            return "Paused. Send /resume to continue."
        until = utcnow() + timedelta(seconds=duration_s)
        await repo.pause_space(self.db, space_id, until)
        return f"Paused until {until:%Y-%m-%d %H:%M} UTC. /resume to continue sooner."

    async def resume(self, space_id: str) -> str:
        await repo.resume_space(self.db, space_id)
        return "Resumed."

    async def clear(self, space_id: str) -> str:
        """A context boundary: the next run's history starts after this moment."""
        await repo.reset_context(self.db, space_id)
        return "Cleared: the next message starts a fresh conversation."

    async def status(self, space_id: str, now: datetime | None = None) -> str:
        now = now or utcnow()
        space = await repo.get_space(self.db, space_id)
        queued = await repo.count_jobs(self.db, status=JobStatus.QUEUED, space_id=space_id)
        paused = space is not None and space.is_paused(now)
        return status_text(
            running=space_id in self.runner.active_spaces(),
            queue_length=queued,
            model=await self._model(space_id),
            paused=paused,
            paused_until=space.pause_ends if space is not None and paused else None,
            now=now,
        )

    async def switch_model(self, space_id: str, wanted: str) -> str:
        leg = find_leg(self.config.model.chain, wanted)
        if leg is None:
            return f"No model {wanted.strip()!r} in the chain; /model list shows them."
        await repo.set_preference(self.db, space_id, MODEL_PREF, leg.model)
        return f"This space now uses {leg.provider}/{leg.model} first."

    async def show_budget(self, space_id: str, user_key: str | None = None) -> str:
        """/budget: every cap in force here and what is used (the instance's too)."""
        now = self.budget.clock() if self.budget is not None else utcnow()
        statuses = await budget_statuses(
            self.db, self._base_caps(), space_id, user_key, now, book=self.budget
        )
        return caps_text(statuses, now, user_known=user_key is not None)

    async def set_budget(self, space_id: str, setting: BudgetSetting) -> str:
        """/budget <cap> <value>: store the space's own cap; the running checks see it at once."""
        await repo.get_or_create_space(self.db, space_id)
        await write_override(self.db, space_id, setting.scope, setting.cap, reset=setting.reset)
        if self.budget is not None:
            self.budget.forget_overrides(space_id)
        caps = self._base_caps().with_overrides(await read_overrides(self.db, space_id))
        return setting_text(setting, caps.get(setting.scope))

    async def memory(self, space_id: str, user_key: str | None) -> str:
        """/memory: the sender's own note here, as their runs are given it (nobody else's)."""
        note = await repo.get_note(self.db, space_id, user_key) if user_key else None
        if note is None:
            return NO_NOTES
        return f"What I remember about you here:\n{note.text}\n\n/forget clears it."

    async def forget(self, space_id: str, user_key: str | None, *, own: bool = True) -> str:
        """/forget: clear the sender's own note; `own=False`: an admin's /forget <user key>."""
        cleared = await repo.clear_note(self.db, space_id, user_key) if user_key else False
        if own:
            return "Done: I no longer remember anything about you here." if cleared else NO_NOTES
        if cleared:
            return f"Done: I no longer remember anything about {user_key} here."
        return f"I have no notes about {user_key} here."

    def _base_caps(self) -> Caps:
        """The config's caps (the running book's, which read the same config)."""
        return self.budget.base if self.budget is not None else self.config.budgets.caps()

    async def tasks(self, space_id: str, now: datetime | None = None) -> str:
        """/tasks: the space's tasks, next runs on its clock, last results, average costs."""
        now = now or utcnow()
        zone = space_timezone(
            await repo.get_preferences(self.db, space_id), self.config.scheduler.timezone
        )
        lines = [
            TaskLine(
                id=t.id,
                prompt=t.prompt,
                cron=t.cron,
                interval_s=t.interval_s,
                enabled=t.enabled,
                next_run_at=t.next_run_at,
                last_outcome=t.last_outcome,
                last_detail=t.last_detail,
                last_outcome_at=t.last_outcome_at,
                silent=t.silent,
                cost=await task_cost_estimate(self.db, t.id),
            )
            for t in await repo.list_tasks(self.db, space_id)
        ]
        return tasks_text(lines, now, zone)

    async def _model(self, space_id: str) -> str:
        """The model the space's runs try first: its /model switch choice, else the chain's."""
        prefs = await repo.get_preferences(self.db, space_id)
        return prefs.get(MODEL_PREF) or self.config.model.chain[0].model


__all__ = ["NO_NOTES", "ChatCommands", "RunControl", "find_leg", "model_list_text"]
