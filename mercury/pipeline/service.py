"""The pipeline: inbound handler -> jobs table -> dispatcher -> run executor -> adapter."""

from __future__ import annotations

from collections.abc import Mapping

from mercury.adapters.base import Adapter
from mercury.api.runhost import RunHost
from mercury.config import Config, Secrets
from mercury.core.messages import Reply
from mercury.logging import get_logger
from mercury.pipeline.budget import BudgetBook
from mercury.pipeline.dispatcher import LEASE_S, Dispatcher
from mercury.pipeline.inbound import InboundHandler
from mercury.pipeline.payload import JobPayload, PayloadError
from mercury.pipeline.remote_runs import RemoteRuns
from mercury.pipeline.runs import RunExecutor
from mercury.sandbox.runner import ContainerRunner
from mercury.storage import Database
from mercury.storage.jobs import StaleJobs

log = get_logger("mercury.pipeline")

RESTART_NOTICE = (
    "Sorry — Mercury was restarted twice while working on your message, so it gave up on "
    "it. Please send it again."
)


def model_problem(config: Config, secrets: Secrets) -> str | None:
    """Why no run can reach a model, in words for the chat user; None when one can."""
    present = secrets.present()
    for leg in config.model.chain:
        if leg.base_url or f"{leg.provider}_api_key" in present:
            return None
    return (
        "Mercury has no model configured yet, so it cannot answer. The operator needs to set "
        "ANTHROPIC_API_KEY or OPENAI_API_KEY (in .env) or a base_url for a local model "
        "server in mercury.yaml, then restart Mercury."
    )


class Pipeline:
    def __init__(
        self,
        config: Config,
        secrets: Secrets,
        db: Database,
        runner: ContainerRunner | RemoteRuns,
        host: RunHost | None,
        adapters: Mapping[str, Adapter],
        *,
        owner: str | None = None,
        lease: float = LEASE_S,
    ) -> None:
        """`runner`: the container runner, or a gateway's `RemoteRuns` (it runs nothing,
        and has no host API: `host` None). `owner`: this process's id on its claims."""
        self.config = config
        self.db = db
        self.runner = runner
        self.adapters = adapters
        # Spending caps: every metered call is counted, every model call asked about.
        self.budget = BudgetBook(config, db)
        if host is not None:
            host.meter.add_hook(self.budget.count)
            host.set_call_guard(self.budget.refuse_call)
        self.executor = RunExecutor(
            config,
            db,
            runner,
            host,
            adapters,
            model_problem=model_problem(config, secrets),
            budget=self.budget,
        )
        self.dispatcher = Dispatcher(
            db,
            self.executor,
            max_concurrency=config.container.max_concurrency,
            # Nothing starts below disk.min_free, while the Docker engine is down (up to
            # container.engine_outage_limit) or while the agent image is being built:
            # queued messages wait.
            gate=runner.hold_reason,
            # Jobs another (dead) process held, recovered while this one runs.
            on_recovered=self._tell_failed,
            owner=owner,
            lease=lease,
        )
        self.inbound = InboundHandler(
            config, db, self.dispatcher, runner, adapters, budget=self.budget
        )

    async def start(self, *, claim: bool = True) -> None:
        """Load what the checks need; with `claim` (not on a gateway), recover dead
        processes' jobs and start claiming."""
        if claim:
            await self._tell_failed(await self.dispatcher.recover())
        await self.inbound.seed_ledger()
        await self.budget.load()
        if claim:
            self.dispatcher.start()

    async def _tell_failed(self, stale: StaleJobs) -> None:
        """Tell each chat whose message was failed after its runs were cut short twice."""
        for job in stale.failed:
            try:
                p = JobPayload.from_dict(job.payload)
            except PayloadError as exc:
                log.error("a failed job's payload is unreadable", job_id=job.id, error=str(exc))
                continue
            adapter = self.adapters.get(p.platform)
            if adapter is None:
                continue
            try:
                await adapter.send(Reply(p.conversation, RESTART_NOTICE, reply_to=p.reply_to))
            except Exception:
                log.exception("could not tell the user about a failed job", job_id=job.id)

    def adapters_started(self) -> None:
        """Adapters can send now: deliver the replies a dead process stored but did not send."""
        self.executor.outbox.resume()

    async def stop(self, grace: float) -> None:
        """Stop claiming; running runs get `grace` seconds, then are killed and requeued."""
        self.executor.stopping = True
        await self.executor.outbox.stop()
        await self.dispatcher.stop(grace, on_timeout=self.runner.kill_all)
        await self.budget.drain()
