"""What every `mercury` command shares: the consoles, `--config`, loading the config, failing.

One place so every command fails the same way: one line on stderr (`error: ...`, or one
`config: ...` line per config problem) and a fixed exit code (1 for a failure, 2 for a
config that does not load). Kept free of other CLI modules so each command module can
import it without cycles.
"""

from __future__ import annotations

import functools
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any, NoReturn

import click
from rich.console import Console
from rich.text import Text

from mercury.config import ConfigError, LoadedConfig, load_config
from mercury.core.roles import Role

# Rich resolves sys.stdout/sys.stderr at print time, so module-level consoles still follow
# a stream that a test or wrapper swaps in later.
out = Console(highlight=False)
err = Console(stderr=True, highlight=False)

CONFIG_ERROR_EXIT = 2

config_path_option = click.option(
    "--config",
    "config_path",
    type=click.Path(dir_okay=False, path_type=Path),
    default=None,
    help="Config file (default: $MERCURY_CONFIG, else ./mercury.yaml).",
)


def role_option(help_text: str, roles: tuple[Role, ...] = tuple(Role)) -> Any:
    """`--role`, one of `roles` (default all): what a process of a scale-out runs."""
    return click.option(
        "--role",
        type=click.Choice([r.value for r in roles]),
        default=Role.ALL.value,
        show_default=True,
        help=help_text,
    )


def fail(message: str, code: int = 1) -> NoReturn:
    """One clear line on stderr (more only when the message itself has several), then exit."""
    # A Text, not markup: a message quoting `[...]` or `:name:` is printed as written.
    err.print(Text.assemble(("error:", "bold red"), " ", message), soft_wrap=True)
    sys.exit(code)


def remember_config_path(ctx: click.Context, config_path: Path | None) -> None:
    """Store `--config` where every later context finds it (the last one given wins)."""
    ctx.ensure_object(dict)
    if config_path is not None:
        ctx.obj["config_path"] = config_path


def config_option(fn: Callable[..., Any]) -> Callable[..., Any]:
    """`--config PATH` on a command (also accepted before the command name)."""

    @config_path_option
    @click.pass_context
    @functools.wraps(fn)
    def wrapper(ctx: click.Context, config_path: Path | None, **kwargs: Any) -> Any:
        remember_config_path(ctx, config_path)
        return ctx.invoke(fn, **kwargs)

    return wrapper


def load(overrides: dict[str, Any] | None = None) -> LoadedConfig:
    """The config named by `--config` (else the default places); raises ConfigError."""
    ctx = click.get_current_context()
    path = (ctx.find_object(dict) or {}).get("config_path")
    return load_config(path, overrides=overrides)


def load_or_exit(overrides: dict[str, Any] | None = None) -> LoadedConfig:
    """`load`, or one `config:` line per problem on stderr and exit 2."""
    try:
        return load(overrides)
    except ConfigError as exc:
        for problem in exc.problems:
            err.print(Text.assemble(("config:", "bold red"), " ", problem), soft_wrap=True)
        sys.exit(CONFIG_ERROR_EXIT)
