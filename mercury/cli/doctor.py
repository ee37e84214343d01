"""`mercury doctor`: print every check `mercury run` needs as a table; exit 1 on a failure."""

from __future__ import annotations

import asyncio
import sys

import click

from mercury.cli.common import config_option, err, load, out, role_option
from mercury.core.roles import Role

_STATE_STYLE = {"ok": "green", "fail": "bold red", "warn": "yellow", "skip": "dim"}


@click.command()
@config_option
@role_option(
    "What this machine runs: a gateway needs no Docker engine, a worker no chat tokens; "
    "their checks are skipped (docs/scale-out.md)."
)
def doctor(role: str) -> None:
    """Check everything `mercury run` needs; exit 1 when a required check fails."""
    from rich.table import Table

    from mercury.doctor import run_checks

    # `load`, not `load_or_exit`: a config that does not load is the first failed check.
    results = asyncio.run(run_checks(load, Role(role)))
    table = Table(title="mercury doctor", show_lines=False)
    table.add_column("check")
    table.add_column("state")
    table.add_column("detail", overflow="fold")
    table.add_column("fix", overflow="fold")
    for r in results:
        style = _STATE_STYLE[r.status.value]
        table.add_row(r.name, f"[{style}]{r.status.value}[/]", r.detail, r.hint)
    out.print(table)
    failed = [r for r in results if r.failed]
    if failed:
        err.print(f"{len(failed)} required check(s) failed", style="bold red")
        sys.exit(1)
    out.print("all required checks passed", style="green")
