"""After a run: its record (what its dashboard page shows), the space's usage, and the
small decisions about a run's outcome (its job's status, the model it is recorded under,
the line about files not sent)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from mercury.api.usage import MeteredCall, UsageTotals
from mercury.config import Config
from mercury.sandbox.iodir import parse_tools
from mercury.sandbox.outputs import DroppedFile
from mercury.sandbox.types import RunReason, RunResult
from mercury.storage import JobRecord, JobStatus, Store, repo, utcnow

__all__ = ["call_row", "dropped_note", "job_status_of", "record_run_outcome", "recorded_model"]


async def record_run_outcome(
    config: Config,
    store: Store,
    job: JobRecord,
    result: RunResult,
    usage: UsageTotals | None,
    started: Any,
    calls: Sequence[MeteredCall] = (),
    *,
    prompt: str | None = None,
    extensions: Sequence[str] = (),
) -> None:
    """The run record (with what its dashboard page shows) and the space's usage."""
    model = recorded_model(config, (result.usage or {}).get("model"))
    if usage is None:
        usage = UsageTotals()
    await repo.record_run(
        store,
        space_id=job.space_id,
        reason=result.reason,
        job_id=job.id,
        exit_code=result.exit_code,
        duration_ms=result.duration_ms,
        image=result.image,
        container_name=result.container_name,
        input_tokens=usage.input_tokens,
        output_tokens=usage.output_tokens,
        cost_usd=usage.cost_usd,
        model=model,
        error=result.error,
        started_at=started,
        finished_at=utcnow(),
        prompt=prompt,
        attempts=(result.result or {}).get("attempts"),
        model_calls=[call_row(c) for c in calls],
        # The agent's word (result.json): checked by the same parser as the rest of it
        # (sizes, types, NULs), then bounded by storage.
        tool_calls=parse_tools((result.result or {}).get("tools")),
        extensions=extensions,
        log_tail=None if result.ok else result.log_tail,
    )
    if usage.requests:
        await repo.add_usage(
            store,
            job.space_id,
            model=model,
            input_tokens=usage.input_tokens,
            output_tokens=usage.output_tokens,
            cost_usd=usage.cost_usd or 0.0,
        )


def call_row(call: MeteredCall) -> dict[str, Any]:
    """One metered model call as the run record keeps it (storage bounds the list)."""
    return {
        "provider": call.provider,
        "model": call.model,
        "input_tokens": call.input_tokens,
        "output_tokens": call.output_tokens,
        "cost_usd": call.cost_usd,
        "status": call.status,
        "incomplete": call.incomplete,
        "at": call.at.isoformat(),
    }


def job_status_of(result: RunResult) -> JobStatus:
    """How a job ends after its run: done, aborted (/stop) or failed."""
    if result.ok:
        return JobStatus.DONE
    return JobStatus.ABORTED if result.reason is RunReason.ABORTED else JobStatus.FAILED


def recorded_model(config: Config, reported: Any) -> str:
    """The model a run is recorded under: the one result.json names, if runs may call it.

    result.json is the agent's word, and the name becomes a key of the usage table: any
    other value (a made-up name, a megabyte of text) records the chain's first model.
    """
    known = {leg.model for leg in config.model.chain} | set(config.model.allowed)
    return (
        reported if isinstance(reported, str) and reported in known else config.model.chain[0].model
    )


def dropped_note(dropped: list[DroppedFile]) -> str:
    """One plain line for the user about files the agent listed that were not sent."""
    reasons = sorted({d.why for d in dropped})
    count = sum(d.count for d in dropped)
    files = "file was" if count == 1 else "files were"
    return f"({count} {files} not sent: {'; '.join(reasons)}.)"
