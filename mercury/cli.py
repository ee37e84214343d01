"""The `mercury` command. Thin: it parses arguments and calls services."""

from __future__ import annotations

import asyncio
import functools
import os
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import click
from rich.console import Console
from rich.table import Table

from mercury import __version__
from mercury.cli_options import config_path_option
from mercury.config import ConfigError, LoadedConfig, load_config

err = Console(stderr=True, highlight=False)
out = Console(highlight=False)


def _fail(message: str, code: int = 1) -> None:
    """One clear line on stderr, then exit non-zero."""
    err.print(f"[bold red]error:[/] {message}", markup=True, soft_wrap=True)
    sys.exit(code)


def config_option(fn: Callable[..., Any]) -> Callable[..., Any]:
    """`--config PATH` on every command (also accepted before the command name)."""

    @config_path_option
    @click.pass_context
    @functools.wraps(fn)
    def wrapper(ctx: click.Context, config_path: Path | None, **kwargs: Any) -> Any:
        ctx.ensure_object(dict)
        if config_path is not None:
            ctx.obj["config_path"] = config_path
        return ctx.invoke(fn, **kwargs)

    return wrapper


def _load(overrides: dict[str, Any] | None = None) -> LoadedConfig:
    ctx = click.get_current_context()
    path = (ctx.find_object(dict) or {}).get("config_path")
    return load_config(path, overrides=overrides)


def _load_or_exit(overrides: dict[str, Any] | None = None) -> LoadedConfig:
    try:
        return _load(overrides)
    except ConfigError as exc:
        for problem in exc.problems:
            err.print(f"[bold red]config:[/] {problem}", markup=True, soft_wrap=True)
        sys.exit(2)


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, "--version", prog_name="mercury")
@config_path_option
@click.pass_context
def main(ctx: click.Context, config_path: Path | None) -> None:
    """Mercury: answers chat messages with an AI agent in a fresh container per message."""
    ctx.ensure_object(dict)
    if config_path is not None:
        ctx.obj["config_path"] = config_path


# --------------------------------------------------------------------------- init


def _instance_name(value: str) -> str:
    """click value_proc: a name the config accepts, else the question is asked again."""
    from mercury.scaffold import instance_problem

    name = value.strip()
    problem = instance_problem(name)
    if problem is not None:
        raise click.BadParameter(problem)
    return name


def _prompt_answers(a: Any) -> Any:
    """Ask for each answer; `a` holds the defaults shown (and is filled in)."""
    # The default is the generated name --yes would write, unique to this install.
    a.instance = click.prompt("Instance name", default=a.instance, value_proc=_instance_name)
    a.port = click.prompt("Dashboard and web chat port", default=a.port, type=int)
    a.provider = click.prompt(
        "Model provider", default=a.provider, type=click.Choice(["anthropic", "openai"])
    )
    default_model = "claude-sonnet-4-5" if a.provider == "anthropic" else "gpt-4.1"
    a.model = click.prompt("Model", default=default_model)
    base = click.prompt(
        "Model base URL (empty: the provider's own API)", default="", show_default=False
    )
    a.model_base_url = base or None
    key_var = "ANTHROPIC_API_KEY" if a.provider == "anthropic" else "OPENAI_API_KEY"
    key = click.prompt(
        f"{key_var} (empty: set it later)", default="", hide_input=True, show_default=False
    )
    if key:
        a.secrets[key_var] = key
    for name, tokens in (
        ("slack", ["MERCURY_SLACK_BOT_TOKEN", "MERCURY_SLACK_APP_TOKEN"]),
        ("discord", ["MERCURY_DISCORD_BOT_TOKEN"]),
        ("telegram", ["MERCURY_TELEGRAM_BOT_TOKEN"]),
    ):
        if click.confirm(f"Enable {name}?", default=False):
            a.adapters.append(name)
            for var in tokens:
                value = click.prompt(
                    f"{var} (empty: set it later)", default="", hide_input=True, show_default=False
                )
                if value:
                    a.secrets[var] = value
    return a


@main.command()
@click.argument("directory", type=click.Path(file_okay=False, path_type=Path), default=Path("."))
@click.option("--yes", "-y", is_flag=True, help="Take every default without asking.")
@click.option("--force", is_flag=True, help="Overwrite an existing mercury.yaml and .env.")
def init(directory: Path, yes: bool, force: bool) -> None:
    """Write mercury.yaml and .env (mode 0600) into DIRECTORY."""
    from mercury.scaffold import ScaffoldError, default_answers, init_project

    interactive = not yes and sys.stdin.isatty()
    answers = default_answers(directory)
    if interactive:
        answers = _prompt_answers(answers)
    try:
        result = init_project(directory, answers, force=force)
    except ScaffoldError as exc:
        _fail(str(exc))
        return
    out.print(f"wrote {result.config_path} (instance: {answers.instance})")
    out.print(f"wrote {result.env_path} (mode 0600)")
    out.print(
        f"dashboard login: admin / [bold]{result.dashboard_password}[/]  "
        "(shown once; it is stored only in .env)",
        markup=True,
        soft_wrap=True,
    )
    out.print("next: mercury doctor, then mercury run")


# --------------------------------------------------------------------------- run


@main.command()
@config_option
@click.option("--host", default=None, help="Listen address (server.host).")
@click.option("--port", type=int, default=None, help="Listen port (server.port).")
@click.option(
    "--log-level",
    type=click.Choice(["debug", "info", "warning", "error"]),
    default=None,
    help="log.level",
)
@click.option(
    "--accept-empty-database",
    is_flag=True,
    help="Start even though the database is empty while spaces exist on disk "
    "(it was deleted or replaced; history, queue and roles start empty).",
)
def run(
    host: str | None, port: int | None, log_level: str | None, accept_empty_database: bool
) -> None:
    """Migrate the database and run Mercury until SIGINT/SIGTERM."""
    from mercury.app import App, StartupError, serve
    from mercury.logging import configure_logging_for

    overrides: dict[str, Any] = {}
    if host is not None or port is not None:
        overrides["server"] = {k: v for k, v in (("host", host), ("port", port)) if v is not None}
    if log_level:
        overrides["log"] = {"level": log_level}
    loaded = _load_or_exit(overrides)
    configure_logging_for(loaded)  # every configured secret is redacted from the logs
    os.umask(0o077)  # whatever Mercury creates from now on is its own (docs/security.md)
    try:
        asyncio.run(serve(App(loaded, accept_empty_database=accept_empty_database)))
    except StartupError as exc:
        _fail(str(exc))
    except KeyboardInterrupt:  # pragma: no cover - a signal before handlers were installed
        sys.exit(130)


# --------------------------------------------------------------------------- doctor

_STATE_STYLE = {"ok": "green", "fail": "bold red", "warn": "yellow", "skip": "dim"}


@main.command()
@config_option
def doctor() -> None:
    """Check everything `mercury run` needs; exit 1 when a required check fails."""
    from mercury.doctor import run_checks

    results = asyncio.run(run_checks(_load))
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


# --------------------------------------------------------------------------- db


@main.group()
def db() -> None:
    """Database schema commands."""


@db.command("upgrade")
@config_option
def db_upgrade() -> None:
    """Apply every pending migration."""
    from mercury.logging import first_line
    from mercury.storage import safe_url
    from mercury.storage.migrate import current_revision, upgrade

    loaded = _load_or_exit()
    url = loaded.config.resolved_database_url()
    loaded.config.data_dir.mkdir(parents=True, exist_ok=True)
    try:
        asyncio.run(upgrade(url))
        rev = asyncio.run(current_revision(url))
    except Exception as exc:
        _fail(f"database_url: cannot migrate {safe_url(url)}: {first_line(exc)}")
        return
    out.print(f"{safe_url(url)} is at revision {rev}")


@db.command("current")
@config_option
def db_current() -> None:
    """Print the schema revision of the database and the one the code expects."""
    from mercury.logging import first_line
    from mercury.storage import safe_url
    from mercury.storage.migrate import current_revision, head_revision

    loaded = _load_or_exit()
    url = loaded.config.resolved_database_url()
    try:
        rev = asyncio.run(current_revision(url))
    except Exception as exc:
        _fail(f"database_url: cannot read {safe_url(url)}: {first_line(exc)}")
        return
    out.print(f"database: {rev or 'empty'}  code: {head_revision()}")


# --------------------------------------------------------------------------- sandbox


@main.group()
def sandbox() -> None:
    """Run agent containers by hand, without a chat platform."""


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

    from mercury.logging import configure_logging_for
    from mercury.sandbox.service import SandboxRunError, run_once

    overrides: dict[str, Any] = {}
    container: dict[str, Any] = {}
    if timeout is not None:
        container["timeout"] = timeout
    if memory is not None:
        container["memory"] = memory
    if network is not None:
        container["network"] = network
    if container:
        overrides["container"] = container
    loaded = _load_or_exit(overrides)
    configure_logging_for(loaded, "warning" if as_json else None)
    try:
        payload = json.loads(input_file.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        _fail(f"{input_file}: not readable JSON ({exc})")
        return
    if not isinstance(payload, dict):
        _fail(f"{input_file}: expected a JSON object")
        return
    os.umask(0o077)
    try:
        result = asyncio.run(run_once(loaded, space_id=space_id, payload=payload, image=image))
    except SandboxRunError as exc:
        _fail(str(exc))
        return
    if as_json:
        click.echo(json.dumps(result.to_dict(), indent=2, default=str))
    else:
        _print_result(result)
    sys.exit(0 if result.ok else 1)


def _register_subcommands() -> None:
    try:
        from mercury.cli_image import image
    except ImportError:  # pragma: no cover - only while the image module is missing
        return
    main.add_command(image)
    from mercury.cli_chat import chat

    main.add_command(chat)


_register_subcommands()


if __name__ == "__main__":  # pragma: no cover
    main()
