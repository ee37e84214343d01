"""`mercury status`: what Mercury is doing now, on one screen, from the database.

Why from the database and not the HTTP server: it must answer when Mercury is down (that
is when it matters most) and run from cron or a monitoring agent without a login. The
running process writes its heartbeat and adapters' state every few seconds
(pipeline/heartbeat.py); the rest is what Mercury stores anyway. Reads only, in short
transactions, so it is safe beside a running Mercury (SQLite WAL, PostgreSQL).

Exit codes, for monitoring: 0 all fine; 1 something needs attention (each thing listed;
Mercury not running is one of them) or the database cannot be read; 2 the config does not
load. `--json` prints the same report for scripts (ops/status.py `report_json`).
"""

from __future__ import annotations

import asyncio
import json
import sys
from datetime import datetime
from typing import TYPE_CHECKING

import click
from rich.text import Text

from mercury.cli.common import config_option, fail, load_or_exit, out
from mercury.cli.usage import now_option, parse_now

if TYPE_CHECKING:
    from mercury.ops.status import StatusReport

ATTENTION_EXIT = 1


def size(n: int | None) -> str:
    """Bytes as a short size: "512 B", "3.4 MiB", "120.5 GiB"."""
    if n is None:
        return "unknown"
    value = float(n)
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if value < 1024 or unit == "TiB":
            return f"{int(value)} B" if unit == "B" else f"{value:.1f} {unit}"
        value /= 1024
    return f"{n} B"  # pragma: no cover - the loop always returns


def _when(when: datetime | None, now: datetime) -> str:
    from mercury.core.timefmt import format_clock, format_wait

    if when is None:
        return "never"
    ago = max(0.0, (now - when).total_seconds())
    return f"{format_clock(when, now)} ({format_wait(ago)} ago)"


def _line(text: str) -> None:
    out.print(Text(text), soft_wrap=True)


def print_report(r: StatusReport) -> None:
    """One screen: state, processes and adapters, work, spend, disk, then the verdict."""
    from rich.table import Table

    from mercury.core.attention import Liveness
    from mercury.core.budget import format_usd
    from mercury.core.timefmt import format_wait

    now = r.now
    live = [p for p in r.processes if p.id in r.fresh]
    if r.state is Liveness.RUNNING:
        head = f"Mercury {r.instance}: running ({len(live)} process{'es' * (len(live) > 1)})"
    else:
        head = f"Mercury {r.instance}: NOT RUNNING ({r.state.value})"
    out.print(Text(head, style="bold"), soft_wrap=True)
    _line(f"Database: {r.database}")
    shown = live or r.processes[:1]  # when none is live, the last one that was
    for p in shown:
        up = format_wait((now - p.started_at).total_seconds())
        stopped = f", stopped {_when(p.stopped_at, now)}" if p.stopped_at else ""
        _line(
            f"Process {p.id}: pid {p.pid} on {p.host}, version {p.version}, started "
            f"{_when(p.started_at, now)}{'' if stopped else f', up {up}'}, "
            f"heartbeat {_when(p.updated_at, now)}{stopped}"
        )
        if p.adapters:
            table = Table(show_edge=False, pad_edge=False, box=None)
            for col in ("adapter", "connected", "last event", "last error"):
                table.add_column(col)
            for a in p.adapters:
                error = "-"
                if a.last_error:
                    error = f"{a.last_error} ({_when(a.last_error_at, now)})"
                table.add_row(
                    Text(a.adapter),
                    Text("yes" if a.connected else "NO"),
                    Text(_when(a.last_event_at, now)),
                    Text(error),
                )
            out.print(table)
    if not r.processes:
        _line("No heartbeat of this instance in the database.")
    if r.running:
        runs = ", ".join(
            f"{j.space_id} ({format_wait((now - j.started_at).total_seconds())})"
            if j.started_at
            else j.space_id
            for j in r.running
        )
        _line(f"Runs now: {len(r.running)}: {runs}")
    else:
        _line("Runs now: none")
    waiting = sum(r.queue.values())
    if waiting:
        spaces = ", ".join(f"{s} {n}" for s, n in r.queue.items())
        _line(f"Queue: {waiting} waiting ({spaces})")
    else:
        _line("Queue: empty")
    failed = sum(r.failures.values())
    if failed:
        reasons = ", ".join(f"{n} {reason}" for reason, n in r.failures.items())
        _line(f"Failures in the last hour: {failed} ({reasons})")
    else:
        _line("Failures in the last hour: none")
    t = r.today.total
    _line(
        f"Today ({r.today.day} UTC): {t.runs:,} runs, {t.tokens:,} tokens "
        f"({t.input_tokens:,} in, {t.output_tokens:,} out), {format_usd(t.cost_usd)}"
    )
    for c in r.caps:
        _line(f"  {c.name}: {c.share:.0%} used ({c.used})")
    d = r.disk
    floor = "" if d.complete else " at least"
    largest = ", ".join(f"{s} {size(n)}" for s, n in d.largest if n)
    parts = [
        f"Disk: {size(d.free_bytes)} free in {d.data_dir} (disk.min_free {size(d.min_free_bytes)})",
        f"spaces{floor} {size(d.spaces_bytes)}" + (f" (largest: {largest})" if largest else ""),
    ]
    if d.space_images_bytes:
        parts.append(f"space images {size(d.space_images_bytes)}")
    if d.database_bytes is not None:
        parts.append(f"database {size(d.database_bytes)}")
    _line("; ".join(parts))
    if r.ok:
        out.print(Text("All fine.", style="bold green"))
        return
    out.print(Text("Needs attention:", style="bold red"))
    for c in r.concerns:
        _line(f"  - {c.text}")


@click.command("status")
@click.option("--json", "as_json", is_flag=True, help="Print the report as JSON.")
@click.option(
    "--max-failures",
    type=click.IntRange(1),
    default=3,
    show_default=True,
    help="Failed runs in the last hour that need attention.",
)
@click.option(
    "--max-queue",
    type=click.IntRange(1),
    default=20,
    show_default=True,
    help="Messages waiting in one space that need attention.",
)
@now_option
@config_option
def status(as_json: bool, max_failures: int, max_queue: int, now_text: str | None) -> None:
    """What Mercury is doing now; exit 1 when something needs attention."""
    from mercury.cli.sitedb import SiteDbError, site_database
    from mercury.core.attention import Thresholds
    from mercury.ops.status import disk_use, gather, report_json
    from mercury.storage import utcnow

    loaded = load_or_exit()
    now = parse_now(now_text) or utcnow()
    thresholds = Thresholds(failures=max_failures, queue_deep=max_queue)

    async def main() -> StatusReport:
        disk = await asyncio.to_thread(disk_use, loaded.config)
        async with site_database(loaded.config) as db:
            return await gather(db, loaded.config, now=now, thresholds=thresholds, disk=disk)

    try:
        report = asyncio.run(main())
    except SiteDbError as exc:
        fail(str(exc), ATTENTION_EXIT)
    except Exception as exc:  # the database went away mid-read, a lock that did not end
        from mercury.logging import first_line

        fail(f"database: cannot read it: {first_line(exc)}", ATTENTION_EXIT)
    if as_json:
        click.echo(json.dumps(report_json(report), indent=2))
    else:
        print_report(report)
    sys.exit(0 if report.ok else ATTENTION_EXIT)


__all__ = ["print_report", "size", "status"]
