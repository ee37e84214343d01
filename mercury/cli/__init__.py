"""The `mercury` command. Thin: it parses arguments and calls services.

`main` is the click group (the `mercury` entry point); each command group lives in its own
module here and is added below. Every module imports what a command needs inside the
command, so `mercury --help` stays fast; what they share is in `common`.
"""

from __future__ import annotations

from pathlib import Path

import click

from mercury import __version__
from mercury.cli import (
    backup,
    budget,
    chat,
    db,
    doctor,
    ext,
    image,
    init,
    run,
    sandbox,
    service,
    status,
    tasks,
    usage,
)
from mercury.cli.common import config_path_option, remember_config_path


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, "--version", prog_name="mercury")
@config_path_option
@click.pass_context
def main(ctx: click.Context, config_path: Path | None) -> None:
    """Mercury: answers chat messages with an AI agent in a fresh container per message."""
    remember_config_path(ctx, config_path)


for _command in (
    init.init,
    run.run,
    run.worker,
    doctor.doctor,
    db.db,
    sandbox.sandbox,
    image.image,
    chat.chat,
    tasks.tasks,
    usage.usage,
    budget.budget,
    ext.ext,
    service.service,
    backup.backup,
    backup.restore,
    status.status,
):
    main.add_command(_command)

__all__ = ["main"]
