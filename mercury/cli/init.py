"""`mercury init`: write mercury.yaml and .env, asking in a terminal, taking defaults elsewhere."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

import click

from mercury.cli.common import fail, out


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


@click.command()
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
        fail(str(exc))
    out.print(f"wrote {result.config_path} (instance: {answers.instance})")
    out.print(f"wrote {result.env_path} (mode 0600)")
    out.print(
        f"dashboard login: admin / [bold]{result.dashboard_password}[/]  "
        "(shown once; it is stored only in .env)",
        markup=True,
        soft_wrap=True,
    )
    out.print("next: mercury doctor, then mercury run")
