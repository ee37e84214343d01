"""`mercury usage`: tokens and cost per space and per UTC day, and today's spend against
the spending caps.

Read from the database (the usage table the dashboard's Usage page reads, and the
model_calls the caps count), so it works beside a running Mercury or without one. Cost
counts priced models only: the shipped resources/prices.yaml and `model.prices`.
"""

from __future__ import annotations

import asyncio
import json
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, timedelta
from typing import TYPE_CHECKING, Any

import click

from mercury.cli.common import config_option, fail, load_or_exit, out

if TYPE_CHECKING:
    from mercury.config import Config
    from mercury.pipeline.budget import CapStatus
    from mercury.storage import Database
    from mercury.storage.stats import UsageTotals

MAX_DAYS = 366
MAX_CAP_SPACES = 20  # today's caps are listed for at most this many (costliest) spaces


def parse_now(value: str | None) -> datetime | None:
    """`--now` (ISO 8601; naive = UTC): the moment "today" is taken at."""
    if value is None:
        return None
    try:
        when = datetime.fromisoformat(value)
    except ValueError:
        raise click.BadParameter(
            f'expected an ISO 8601 time like 2026-12-01T12:00, got "{value}"'
        ) from None
    return when.replace(tzinfo=UTC) if when.tzinfo is None else when.astimezone(UTC)


now_option = click.option(
    "--now",
    "now_text",
    default=None,
    hidden=True,  # for tests and replays: the moment "today" and the cap periods are taken at
    help="Take this ISO 8601 time as now.",
)


@dataclass
class UsageReport:
    """What `mercury usage` prints: the period's rows, totals and today's caps."""

    first: date
    last: date
    per_day: list[dict[str, Any]]
    per_space: list[dict[str, Any]]
    total: dict[str, Any]
    caps: dict[str, list[CapStatus]] = field(default_factory=dict)
    caps_set: bool = False


def totals_json(t: UsageTotals) -> dict[str, Any]:
    return {
        "runs": t.runs,
        "input_tokens": t.input_tokens,
        "output_tokens": t.output_tokens,
        "tokens": t.tokens,
        "cost_usd": round(t.cost_usd, 6),
    }


async def gather(
    db: Database, config: Config, *, space: str | None, days: int, now: datetime
) -> UsageReport:
    """The report's data: one aggregate query per table, caps for the listed spaces."""
    from mercury.core.budget import SCOPES, Caps
    from mercury.pipeline.budget import read_overrides
    from mercury.pipeline.budget_status import budget_statuses
    from mercury.storage.stats import UsageTotals, usage_by_space, usage_per_space_per_day
    from mercury.storage.usage_views import space_names

    last = now.date()
    first = last - timedelta(days=days - 1)
    ids = [space] if space else None
    day_rows = await usage_per_space_per_day(db, days=days, today=last, space_ids=ids)
    space_rows = [
        r
        for r in await usage_by_space(db, since=first, until=last)
        if space is None or r.space_id == space
    ]
    names = await space_names(db, {r.space_id for r in space_rows} | set(ids or []))
    total = UsageTotals(
        input_tokens=sum(r.totals.input_tokens for r in space_rows),
        output_tokens=sum(r.totals.output_tokens for r in space_rows),
        cost_usd=sum(r.totals.cost_usd for r in space_rows),
        runs=sum(r.totals.runs for r in space_rows),
    )
    report = UsageReport(
        first=first,
        last=last,
        per_day=[
            {"day": r.day.isoformat(), "space_id": r.space_id, "space_name": names.get(r.space_id)}
            | totals_json(r.totals)
            for r in day_rows
        ],
        per_space=[
            {"space_id": r.space_id, "space_name": names.get(r.space_id)} | totals_json(r.totals)
            for r in space_rows
        ],
        total=totals_json(total),
    )
    base = config.budgets.caps()
    listed = ids or [r.space_id for r in space_rows][:MAX_CAP_SPACES]
    for sid in listed:
        overrides = await read_overrides(db, sid)
        caps = base.with_overrides(overrides)
        if overrides or caps != Caps():
            report.caps[sid] = await budget_statuses(db, base, sid, None, now)
    report.caps_set = bool(report.caps) or any(base.get(s) is not None for s in SCOPES)
    return report


def _label(row: dict[str, Any]) -> str:
    name = row.get("space_name")
    return f"{name} ({row['space_id']})" if name and name != row["space_id"] else row["space_id"]


def report_json(report: UsageReport, now: datetime) -> dict[str, Any]:
    from mercury.core.budget_text import status_json

    return {
        "from": report.first.isoformat(),
        "to": report.last.isoformat(),
        "per_day": report.per_day,
        "per_space": report.per_space,
        "total": report.total,
        "caps": [
            {"space_id": sid, "caps": [status_json(s, now, user_known=False) for s in statuses]}
            for sid, statuses in report.caps.items()
        ],
    }


def print_report(report: UsageReport, now: datetime) -> None:
    from rich.table import Table

    from mercury.core.budget import Scope, format_usd
    from mercury.core.budget_text import cap_line

    period = f"{report.first} .. {report.last} (UTC days)"
    if not report.per_day:
        out.print(f"No usage recorded {period}.")
    else:
        days = Table(title=f"Usage per day, {period}")
        for col in ("day", "space", "runs", "input tokens", "output tokens", "cost"):
            days.add_column(col, justify="left" if col in ("day", "space") else "right")
        for r in report.per_day:
            days.add_row(
                r["day"],
                _label(r),
                f"{r['runs']:,}",
                f"{r['input_tokens']:,}",
                f"{r['output_tokens']:,}",
                format_usd(r["cost_usd"]),
            )
        out.print(days)
        spaces = Table(title="Per space")
        for col in ("space", "runs", "tokens", "cost"):
            spaces.add_column(col, justify="left" if col == "space" else "right")
        for r in report.per_space:
            spaces.add_row(
                _label(r), f"{r['runs']:,}", f"{r['tokens']:,}", format_usd(r["cost_usd"])
            )
        out.print(spaces)
        t = report.total
        out.print(
            f"Total: {t['runs']:,} runs, {t['tokens']:,} tokens ({t['input_tokens']:,} in, "
            f"{t['output_tokens']:,} out), {format_usd(t['cost_usd'])}. Cost counts models "
            "with a price (resources/prices.yaml, model.prices).",
            soft_wrap=True,
        )
    if not report.caps_set:
        out.print(
            "No spending caps are set (budgets in mercury.yaml; per space: /budget or "
            "`mercury budget set`; see docs/budgets.md)."
        )
        return
    out.print(f"\nToday ({report.last}) against the caps:")
    instance_shown = False
    for sid, statuses in report.caps.items():
        for s in statuses:
            if s.scope is Scope.INSTANCE_DAY and not instance_shown and s.cap is not None:
                out.print(f"  {cap_line(s, now, user_known=False)}", soft_wrap=True)
                instance_shown = True
        lines = [
            cap_line(s, now, user_known=False).replace("This space", f"Space {sid}", 1)
            for s in statuses
            if s.scope in (Scope.SPACE_DAY, Scope.SPACE_MONTH) and s.cap is not None
        ]
        for line in lines:
            out.print(f"  {line}", soft_wrap=True)
    out.print("`mercury budget show SPACE` lists every cap of a space.")


@click.command("usage")
@click.option("--space", default=None, help="Only this space (its id).")
@click.option(
    "--days",
    type=click.IntRange(1, MAX_DAYS),
    default=30,
    show_default=True,
    help="UTC days to show, today included.",
)
@click.option("--json", "as_json", is_flag=True, help="Print the report as JSON.")
@now_option
@config_option
def usage(space: str | None, days: int, as_json: bool, now_text: str | None) -> None:
    """Tokens and cost per space and per day, and today's spend against the caps."""
    from mercury.cli.sitedb import SiteDbError, existing_space, site_database
    from mercury.storage import utcnow

    loaded = load_or_exit()
    now = parse_now(now_text) or utcnow()

    async def main() -> UsageReport:
        async with site_database(loaded.config) as db:
            if space is not None:
                await existing_space(db, space)
            return await gather(db, loaded.config, space=space, days=days, now=now)

    try:
        report = asyncio.run(main())
    except SiteDbError as exc:
        fail(str(exc))
    if as_json:
        click.echo(json.dumps(report_json(report, now), indent=2))
        return
    print_report(report, now)


__all__ = ["gather", "parse_now", "usage"]
