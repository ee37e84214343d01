"""`mercury sandbox run`: one agent container by hand, without a chat platform."""

from __future__ import annotations

import asyncio
import os
import sys
from pathlib import Path
from typing import Any

import click

from mercury.cli.common import config_option, err, fail, load_or_exit, out


@click.group()
def sandbox() -> None:
    """Run agent containers by hand, without a chat platform."""


def container_overrides(
    timeout: str | None, memory: str | None, network: str | None
) -> dict[str, Any]:
    """The `container.*` config overrides the command line asks for (only what was given)."""
    given = {"timeout": timeout, "memory": memory, "network": network}
    container = {k: v for k, v in given.items() if v is not None}
    return {"container": container} if container else {}


def _print_result(result: Any) -> None:
    style = "green" if result.ok else "bold red"
    out.print(
        f"[{style}]{result.reason.value}[/]  run {result.run_id}  space {result.space_id}"
        f"  {result.duration_ms} ms  exit {result.exit_code}",
        markup=True,
    )
    if result.reply is not None:
        out.print(result.reply, markup=False, highlight=False)
    if result.error:
        err.print(f"error: {result.error}", markup=False)
    if result.log_tail:
        err.print("--- container log (tail) ---", markup=False)
        err.print(result.log_tail, markup=False)
    if result.usage:
        out.print(f"usage: {result.usage}", markup=False)
    for f in result.files:
        out.print(f"file: {f}", markup=False)


@sandbox.command("run")
@config_option
@click.option(
    "--space", "space_id", required=True, help="Space id: its folder is mounted at /space."
)
@click.option(
    "--input",
    "input_file",
    required=True,
    type=click.Path(exists=True, dir_okay=False, path_type=Path),
    help="input.json for the run (run_id and space_id are filled in).",
)
@click.option("--image", default=None, help="Image to run (default: container.image).")
@click.option("--timeout", default=None, help="Deadline, e.g. 30s or 5m (container.timeout).")
@click.option("--memory", default=None, help="Memory limit, e.g. 512m (container.memory).")
@click.option("--network", default=None, help="none, bridge or a network name.")
@click.option("--json", "as_json", is_flag=True, help="Print the RunResult as JSON.")
def sandbox_run(
    space_id: str,
    input_file: Path,
    image: str | None,
    timeout: str | None,
    memory: str | None,
    network: str | None,
    as_json: bool,
) -> None:
    """Run exactly one container through the runner and print its RunResult."""
    import json

    from mercury.api.oneshot import SandboxRunError, run_once
    from mercury.logging import configure_logging_for

    loaded = load_or_exit(container_overrides(timeout, memory, network))
    configure_logging_for(loaded, "warning" if as_json else None)
    try:
        payload = json.loads(input_file.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        fail(f"{input_file}: not readable JSON ({exc})")
    if not isinstance(payload, dict):
        fail(f"{input_file}: expected a JSON object")
    os.umask(0o077)
    try:
        result = asyncio.run(run_once(loaded, space_id=space_id, payload=payload, image=image))
    except SandboxRunError as exc:
        fail(str(exc))
    if as_json:
        click.echo(json.dumps(result.to_dict(), indent=2, default=str))
    else:
        _print_result(result)
    sys.exit(0 if result.ok else 1)
