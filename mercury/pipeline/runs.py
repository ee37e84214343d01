"""One job -> one container run -> one reply: input.json, the run, delivery, the record."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Mapping
from dataclasses import replace
from pathlib import Path
from typing import Any

from mercury.adapters.base import Adapter
from mercury.api.runhost import RunHost
from mercury.api.stream_events import StreamEvent
from mercury.api.usage import MeteredCall
from mercury.config import Config
from mercury.core.messages import ConversationRef, Reply
from mercury.core.router import DISK_WAIT_NOTICE, failure_notice, unavailable_notice
from mercury.extensions.hooks import ExtensionHooks
from mercury.extensions.runtime import NONE as NO_EXTENSIONS
from mercury.extensions.runtime import ExtensionSet, RunExtensions
from mercury.logging import first_line, get_logger
from mercury.pipeline import ext_hooks
from mercury.pipeline.budget import BudgetBook
from mercury.pipeline.dispatcher import JobDeferred
from mercury.pipeline.indicator import indicate
from mercury.pipeline.outbox import ReplyOutbox, keep_files, reply_payload, until_stored
from mercury.pipeline.payload import JobPayload
from mercury.pipeline.preview import StreamPreview
from mercury.pipeline.run_input import build_run_input
from mercury.pipeline.run_record import dropped_note, job_status_of, record_run_outcome
from mercury.pipeline.standing import role_permissions_in
from mercury.pipeline.task_hook import TaskHook, task_silent, task_text
from mercury.sandbox.contract import RunInput
from mercury.sandbox.outputs import outputs_root, remove_outputs
from mercury.sandbox.runner import ContainerRunner
from mercury.sandbox.types import RunReason, RunRequest, RunResult
from mercury.storage import (
    Database,
    JobRecord,
    JobStatus,
    MessageRole,
    Store,
    replies,
    repo,
    utcnow,
)
from mercury.storage.replies import ReplyRecord

log = get_logger("mercury.runs")

MAX_RECORDED_CALLS = 200  # model calls kept per run for its record (storage's cap too)


class RunExecutor:
    """The dispatcher's job handler."""

    def __init__(
        self,
        config: Config,
        db: Database,
        runner: ContainerRunner,
        host: RunHost,
        adapters: Mapping[str, Adapter],
        *,
        model_problem: str | None = None,
        budget: BudgetBook | None = None,
    ) -> None:
        self.config = config
        self.db = db
        self.runner = runner
        self.host = host
        self.adapters = adapters
        # Set when no chain leg has a key or base URL: runs would fail, say what to fix.
        self.model_problem = model_problem
        # Spending caps: checked before a run starts; the cap that stopped a run, after.
        self.budget = budget
        self._budget_stops: dict[str, Any] = {}
        self.stopping = False
        # run_id -> conversation, for interim messages sent through the host API.
        self._conversations: dict[str, ConversationRef] = {}
        # run_id -> metered usage, from the run's end until it is recorded.
        self._last_usage: dict[str, Any] = {}
        # Jobs already told that the disk is too full to start them.
        self._disk_noticed: set[int] = set()
        # Scheduled tasks: retries, silent tasks, one report of a failure (set by them).
        self.tasks: TaskHook | None = None
        # Every answer goes out through the outbox: stored first, sent once.
        self.outbox = ReplyOutbox(db, adapters, config.data_dir)
        # A worker (docs/scale-out.md) only stores answers: the gateway sends them
        # (pipeline/delivery.py), and streams no preview (its adapters are relays).
        self.deliver_replies = True
        self.previews = True
        # run_id -> its metered model calls (from the meter's hook), for the run record.
        self._calls: dict[str, list[MeteredCall]] = {}
        # run_id -> the preview of its streamed answer, while it runs.
        self._previews: dict[str, StreamPreview] = {}
        # The enabled extensions (set by the App); each run gets what its caller may use,
        # and the host hooks of those it gets run around it.
        self.extensions: ExtensionSet | None = None
        self.hooks: ExtensionHooks | None = None
        # run_id -> the extensions it was granted, for its record.
        self._granted: dict[str, tuple[str, ...]] = {}
        if host is not None:
            host.meter.add_hook(self._keep_call)
            host.add_stream_hook(self._on_stream)

    def _keep_call(self, call: MeteredCall) -> None:
        """The usage meter's hook: a live run's model calls, kept for its record."""
        calls = self._calls.get(call.run_id)
        if calls is not None and len(calls) < MAX_RECORDED_CALLS:
            calls.append(call)

    def _on_stream(self, run_id: str, event: StreamEvent) -> None:
        """The model proxy's hook: what a run's model writes, for its preview."""
        preview = self._previews.get(run_id)
        if preview is not None:
            preview.on_event(event)

    def _preview_for(self, conv: ConversationRef) -> StreamPreview | None:
        """A preview for a run answering in `conv`, if its platform streams replies."""
        adapter = self.adapters.get(conv.platform)
        section = getattr(self.config.adapters, conv.platform, None)
        stream = getattr(section, "stream", None)
        if not self.previews or adapter is None or stream is None or not stream.enabled:
            return None
        return StreamPreview(adapter, conv, interval=stream.interval)

    async def send_interim(self, run_id: str, space_id: str, text: str) -> None:
        conv = self._conversations.get(run_id)
        if conv is None:
            raise LookupError("that run is not active")
        await self._send(Reply(conv, text))

    async def __call__(self, job: JobRecord) -> JobStatus:
        payload = JobPayload.from_dict(job.payload)
        conv = payload.conversation
        if self.model_problem:
            await self._answer(job, payload, self.model_problem, JobStatus.FAILED)
            return JobStatus.FAILED
        low = self.runner.disk_low()
        if low:
            # Claimed just as the disk ran low: back in the queue, unrun, and said so once.
            if job.id not in self._disk_noticed:
                self._disk_noticed.add(job.id)
                await self._send(Reply(conv, DISK_WAIT_NOTICE, reply_to=payload.reply_to))
            raise JobDeferred(low)
        self._disk_noticed.discard(job.id)
        held = self.runner.hold_reason()
        if held:
            # Claimed just as the engine went down or the agent image began a rebuild: back
            # in the queue, unrun, in silence (both are usually over in seconds).
            raise JobDeferred(held)
        unavailable = await self.runner.unavailable()
        if unavailable:
            # The engine has been down too long, or the image cannot be rebuilt: only the
            # operator can help, so the message fails with a notice instead of waiting.
            notice = unavailable_notice(unavailable)
            await self._answer(job, payload, notice, JobStatus.FAILED)
            return JobStatus.FAILED
        if self.budget is not None:
            # A cap reached while the message waited in the queue: said, not run.
            verdict = await self.budget.check(
                job.space_id, payload.user_key, task_id=payload.task_id
            )
            if not verdict.allowed:
                notice = self.budget.notice(verdict)
                await self._answer(job, payload, notice, JobStatus.FAILED, RunReason.BUDGET)
                return JobStatus.FAILED
        space = await repo.get_or_create_space(self.db, job.space_id)
        # The space's warm container's id when it has one waiting (sandbox/warm.py).
        run_id = await self.runner.next_run_id(job.space_id)
        started = utcnow()
        result: RunResult | None = None
        usage: Any = None
        deferred = False
        recorded = False
        quiet = await task_silent(self.tasks, payload)
        preview = None if quiet else self._preview_for(conv)
        try:
            data = await build_run_input(
                self.config, self.db, job, payload, run_id, space.profile, space.context_reset_at
            )
            permissions = await role_permissions_in(self.db, job.space_id, payload.role)
            # Only the extensions the caller's role may use: the others' hosts, services,
            # files and packages are absent from this run (extensions/runtime.py).
            share = self.extensions.for_run(permissions) if self.extensions else NO_EXTENSIONS
            hook_ctx = ext_hooks.run_context(payload, run_id, job.space_id)
            before = await ext_hooks.before_run(self.hooks, share.names, hook_ctx)
            if before.refused is not None:
                # An extension's before_run said no: its text is the answer, no run.
                await self._answer(job, payload, before.refused, JobStatus.DONE, RunReason.OK)
                recorded = True  # nothing ran: there is no run to record
                return JobStatus.DONE
            if before.prompt:
                data = replace(data, prompt=f"{data.prompt}\n\n{before.prompt}")
            if preview is not None:
                self._previews[run_id] = preview
            result = await self._run(
                job, payload, data, run_id, permissions, share, before.env, quiet=quiet
            )
            if preview is not None:
                await preview.stop()
            if result.retry:
                # Not run (low disk, engine down, image being rebuilt since our check) or cut
                # short by the engine: back in the queue, not counted as an attempt. A run
                # whose container started is still recorded below, with its model usage.
                deferred = result.container_name is None
                raise JobDeferred(result.error or "not run")
            if self.stopping and result.reason is RunReason.ABORTED:
                return JobStatus.ABORTED  # killed by shutdown: requeued, no notice
            result = self._budget_outcome(result)
            status = job_status_of(result)
            usage = self._last_usage.pop(run_id, None)
            text = self._reply_text(job, result)
            if result.ok and text is not None:
                text, result = await ext_hooks.after_reply(
                    self.hooks, share.names, hook_ctx, text, result, self.config.data_dir
                )
            answer = (text, await task_text(self.tasks, job, payload, result.reason, text))
            # The answer is stored with the run record before anything is sent: from here
            # on the job is never run again, and a crash only delays its delivery.
            stored = await until_stored(
                lambda: self._store_outcome(job, payload, result, usage, started, answer=answer),
                "run outcome",
            )
            recorded = True
            if stored is not None and self.deliver_replies:
                await self.outbox.deliver(stored)
            await self._budget_warnings(conv, job.space_id, payload.user_key, payload.author_name)
            return status
        finally:
            self._budget_stops.pop(run_id, None)
            self.runner.release_run_id(run_id)
            if preview is not None:
                # After the reply (or the notice) went out: it replaces the preview.
                self._previews.pop(run_id, None)
                with contextlib.suppress(Exception):
                    await asyncio.shield(preview.finish())
            # On any other way out (an exception, a cancellation, a shutdown abort) the run
            # and the model usage it caused are still recorded, and its file copies go.
            if not deferred and not recorded:
                usage = self._last_usage.pop(run_id, None) or usage
                record = result or RunResult(
                    run_id=run_id,
                    space_id=job.space_id,
                    reason=RunReason.CRASHED,
                    error="the host failed before the run ended",
                )
                with contextlib.suppress(Exception):
                    await self._record(self.db, job, record, usage, started, prompt=payload.prompt)
            self._calls.pop(run_id, None)
            self._granted.pop(run_id, None)
            if result is not None and result.files:
                await asyncio.to_thread(remove_outputs, self.config.data_dir, run_id)

    async def _run(
        self,
        job: JobRecord,
        payload: JobPayload,
        data: RunInput,
        run_id: str,
        permissions: frozenset[str],
        share: RunExtensions,
        env: Mapping[str, str],
        *,
        quiet: bool,
    ) -> RunResult:
        """One run with its own host API access; never raises for a failure of the run.

        `quiet` (a silent task): no typing indicator or status message while it runs."""
        conv = payload.conversation
        self._conversations[run_id] = conv
        self._calls[run_id] = []
        preview = self._previews.get(run_id)
        indicator = asyncio.get_running_loop().create_task(
            asyncio.sleep(0) if quiet else indicate(self.adapters.get(conv.platform), conv, preview)
        )
        if self.budget is not None:
            self.budget.begin_run(run_id)
        try:
            if share.names:
                self._granted[run_id] = share.names
            access = await self.host.open_run(
                run_id,
                job.space_id,
                payload.role,
                permissions,
                user_key=payload.user_key,
                task_id=payload.task_id,
                grants=share.grants,
            )
            data = replace(
                data,
                token=access.token,
                skills=(*data.skills, *share.skills),
                extensions=share.entries,
                egress=share.egress,
            )
            return await self.runner.run(
                RunRequest(
                    run_id=run_id,
                    space_id=job.space_id,
                    input=data.to_dict(),
                    api_socket_dir=access.socket_dir,
                    readonly_mounts=share.mounts,
                    extensions=share.names,
                    env=env,
                )
            )
        except Exception as exc:
            # A bug or a broken host resource, not the agent's doing: the user still gets a
            # short notice, the operator the details.
            log.exception("run could not be carried out", job_id=job.id, space_id=job.space_id)
            return RunResult(
                run_id=run_id,
                space_id=job.space_id,
                reason=RunReason.CRASHED,
                error=f"host error: {type(exc).__name__}: {first_line(exc)}",
            )
        finally:
            indicator.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await indicator
            self._conversations.pop(run_id, None)
            try:
                self._last_usage[run_id] = await self.host.close_run(run_id)
            except Exception:
                log.exception("closing the run's host access failed", run_id=run_id)
            if self.budget is not None:
                # After close_run: every call of the run is counted by now.
                stop = self.budget.end_run(run_id)
                if stop is not None:
                    self._budget_stops[run_id] = stop

    def _budget_outcome(self, result: RunResult) -> RunResult:
        """A run whose model call was refused for a cap ended for that reason, whatever
        the agent says (its result.json is its word; the refusal is the host's fact)."""
        stop = self._budget_stops.get(result.run_id)
        if stop is None or result.ok or result.reason is RunReason.ABORTED:
            return result
        cap = stop.cap.describe() if stop.cap else "?"
        scope = stop.scope.value if stop.scope else "?"
        return replace(
            result, reason=RunReason.BUDGET, error=f"spending cap {scope} ({cap}) reached"
        )

    async def _budget_warnings(
        self, conv: ConversationRef, space_id: str, user_key: str | None, who: str
    ) -> None:
        """Tell the space's admins, once per cap and period, that a cap is 80 % used."""
        if self.budget is None:
            return
        try:
            for text in await self.budget.warnings(space_id, user_key, who):
                await self._send(Reply(conv, text))
        except Exception:
            log.exception("budget warning failed", space_id=space_id)

    # ------------------------------------------------------------------ after it ran

    async def _store_outcome(
        self,
        job: JobRecord,
        payload: JobPayload,
        result: RunResult,
        usage: Any,
        started: Any,
        *,
        answer: tuple[str | None, str | None] | None = None,
    ) -> ReplyRecord | None:
        """In one transaction: the run record, the history entry and the outbox reply.

        Returns the stored reply, or None when there is nothing to say (a run stopped by
        /stop: the command itself answered; a silent task's reply, kept in history only).
        `answer`: (the reply or notice, what of it is posted), when already decided.
        """
        if answer is None:
            reply = self._reply_text(job, result)
            answer = (reply, reply)
        text, posted = answer
        files: list[tuple[Path, str]] = []
        if posted is not None and result.ok and result.files:
            outputs = outputs_root(self.config.data_dir) / result.run_id
            kept = await asyncio.to_thread(keep_files, self.config.data_dir, outputs, job.id)
            if kept is not None:
                files = [(kept / f.path.relative_to(outputs), f.name) for f in result.files]
        async with self.db.transaction() as s:
            await self._record(s, job, result, usage, started, prompt=payload.prompt)
            if text is None:
                return None
            if result.ok:
                await repo.add_message(
                    s,
                    space_id=job.space_id,
                    platform=payload.platform,
                    role=MessageRole.ASSISTANT,
                    text=text,
                    author_name="mercury",
                    is_bot=True,
                    attachments=[name for _, name in files],
                )
            if posted is None:
                return None
            return await replies.add_reply(
                s,
                job_id=job.id,
                space_id=job.space_id,
                job_status=job_status_of(result),
                payload=reply_payload(payload.conversation, posted, files, payload.reply_to),
            )

    def _reply_text(self, job: JobRecord, result: RunResult) -> str | None:
        """The answer for the chat: the agent's reply, or a plain notice of what went wrong."""
        if result.ok:
            text = result.reply or ("(sent a file)" if result.files else "(no reply)")
            if result.dropped_files:
                text += "\n\n" + dropped_note(result.dropped_files)
            return text
        log.warning(
            "run failed",
            job_id=job.id,
            space_id=job.space_id,
            reason=result.reason.value,
            exit_code=result.exit_code,
            error=result.error,
            log_tail=result.log_tail,
        )
        if result.reason is RunReason.ABORTED:
            return None  # /stop answered already ("Stopped the running request.")
        stop = self._budget_stops.get(result.run_id)
        if result.reason is RunReason.BUDGET and stop is not None and self.budget is not None:
            return self.budget.notice(stop)
        error_class = (result.result or {}).get("error_class")
        limits = {"budget": self.config.model.budget, "max_turns": self.config.model.max_turns}
        return failure_notice(
            result.reason.value,
            self._notice_detail(result, error_class),
            limit=limits.get(error_class) if isinstance(error_class, str) else None,
        )

    async def _answer(
        self,
        job: JobRecord,
        payload: JobPayload,
        text: str,
        status: JobStatus,
        reason: RunReason = RunReason.ERROR,
    ) -> None:
        """A job answered without a run (e.g. no model configured), through the outbox."""
        posted = await task_text(self.tasks, job, payload, reason, text)
        if posted is None:
            return
        text = posted
        reply = await until_stored(
            lambda: replies.add_reply(
                self.db,
                job_id=job.id,
                space_id=job.space_id,
                job_status=status,
                payload=reply_payload(payload.conversation, text, [], payload.reply_to),
            ),
            "notice",
        )
        if self.deliver_replies:
            await self.outbox.deliver(reply)

    def _notice_detail(self, result: RunResult, error_class: Any) -> Any:
        if result.reason is RunReason.TIMEOUT:
            return self.config.container.timeout
        if result.reason is RunReason.DISK:
            # Stopped for the host's free disk, or (the host has room) for its space's size.
            return "host" if self.runner.disk_low() else "space"
        if isinstance(error_class, str):
            return error_class
        return None

    async def _send(self, reply: Reply) -> None:
        adapter = self.adapters.get(reply.conversation.platform)
        if adapter is None:
            log.error("no adapter for platform", platform=reply.conversation.platform)
            return
        try:
            await adapter.send(reply)
        except Exception:
            log.exception("sending failed", platform=reply.conversation.platform)

    async def _record(
        self,
        store: Store,
        job: JobRecord,
        result: RunResult,
        usage: Any,
        started: Any,
        *,
        prompt: str | None = None,
    ) -> None:
        """The run record, with the model calls the meter kept for it."""
        calls = self._calls.get(result.run_id, ())
        await record_run_outcome(
            self.config,
            store,
            job,
            result,
            usage,
            started,
            calls,
            prompt=prompt,
            extensions=self._granted.get(result.run_id, ()),
        )
