"""Runs, one aggregate: the record of each container execution (exit, duration, tokens)."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime

from sqlalchemy import select

from mercury.storage.models import Run, RunReason, utcnow
from mercury.storage.session import Store, to_record, tx


@dataclass(frozen=True, slots=True)
class RunRecord:
    id: int
    job_id: int | None
    space_id: str
    reason: RunReason
    exit_code: int | None
    duration_ms: int | None
    image: str | None
    container_name: str | None
    input_tokens: int
    output_tokens: int
    cost_usd: float | None
    model: str | None
    error: str | None
    started_at: datetime
    finished_at: datetime | None


async def record_run(
    store: Store,
    *,
    space_id: str,
    reason: RunReason,
    job_id: int | None = None,
    exit_code: int | None = None,
    duration_ms: int | None = None,
    image: str | None = None,
    container_name: str | None = None,
    input_tokens: int = 0,
    output_tokens: int = 0,
    cost_usd: float | None = None,
    model: str | None = None,
    error: str | None = None,
    started_at: datetime | None = None,
    finished_at: datetime | None = None,
) -> RunRecord:
    """Store the outcome of one container execution."""
    async with tx(store) as s:
        run = Run(
            space_id=space_id,
            reason=RunReason(reason),
            job_id=job_id,
            exit_code=exit_code,
            duration_ms=duration_ms,
            image=image,
            container_name=container_name,
            input_tokens=input_tokens,
            output_tokens=output_tokens,
            cost_usd=cost_usd,
            model=model,
            error=error,
            started_at=started_at or utcnow(),
            finished_at=finished_at,
        )
        s.add(run)
        await s.flush()
        return to_record(RunRecord, run)


async def list_runs(
    store: Store, *, space_id: str | None = None, limit: int = 50
) -> list[RunRecord]:
    """The most recent runs, newest first."""
    q = select(Run)
    if space_id is not None:
        q = q.where(Run.space_id == space_id)
    async with tx(store) as s:
        rows = await s.scalars(q.order_by(Run.started_at.desc(), Run.id.desc()).limit(limit))
        return [to_record(RunRecord, r) for r in rows]


__all__ = ["RunRecord", "list_runs", "record_run"]
