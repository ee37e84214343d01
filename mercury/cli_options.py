"""Options shared by every `mercury` command module (kept apart to avoid import cycles)."""

from __future__ import annotations

from pathlib import Path

import click

config_path_option = click.option(
    "--config",
    "config_path",
    type=click.Path(dir_okay=False, path_type=Path),
    default=None,
    help="Config file (default: $MERCURY_CONFIG, else ./mercury.yaml).",
)
