"""`mercury init`: write a starting mercury.yaml and a private .env into a folder.

Each install gets a name of its own (`mercury-<6 hex digits>`) unless the operator picks
one: Mercury labels its containers with it and removes the containers of its own name at
start as orphans, so two installs sharing one name on one Docker engine would remove each
other's running containers.
"""

from __future__ import annotations

import os
import secrets
from dataclasses import dataclass, field
from pathlib import Path

import yaml
from pydantic import ValidationError

from mercury.config import DEFAULT_CONFIG_NAME, SECRET_ENV, Config


class ScaffoldError(Exception):
    """Init cannot proceed; the message says what to do."""


def generate_instance_name() -> str:
    """A fresh install's name: `mercury-` and 6 random lowercase hex digits.

    16.7 million names make a clash between the installs on one engine unlikely; the
    shape fits both the config's `instance` pattern and Docker's container names.
    """
    return f"mercury-{secrets.token_hex(3)}"


def instance_problem(name: str) -> str | None:
    """Why `name` cannot be an instance name (checked by the config itself), or None."""
    try:
        Config.model_validate({"instance": name})
    except ValidationError:
        return (
            "an instance name is 1-31 characters: lowercase letters, digits and '-', "
            "starting with a letter or digit"
        )
    return None


def existing_instance(target: Path) -> str | None:
    """The valid instance name of a mercury.yaml already in `target`, if any.

    `init --force` keeps it: the install stays the same to Docker, so the containers it
    left behind are still recognised (and cleaned up) as its own.
    """
    try:
        data = yaml.safe_load((target / DEFAULT_CONFIG_NAME).read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, yaml.YAMLError):
        return None
    name = data.get("instance") if isinstance(data, dict) else None
    return name if isinstance(name, str) and instance_problem(name) is None else None


@dataclass
class InitAnswers:
    """What `mercury init` asks; the defaults are what `--yes` uses."""

    instance: str = field(default_factory=generate_instance_name)
    port: int = 8787
    provider: str = "anthropic"  # anthropic | openai
    model: str = "claude-sonnet-4-5"
    model_base_url: str | None = None
    adapters: list[str] = field(default_factory=list)  # slack / discord / telegram
    # Secret env var name -> value, written to .env only.
    secrets: dict[str, str] = field(default_factory=dict)


@dataclass(frozen=True)
class InitResult:
    config_path: Path
    env_path: Path
    dashboard_password: str


def generate_password() -> str:
    return secrets.token_urlsafe(18)


# Left commented: caps are the operator's choice, but a new install should see where they
# go. Dollars are counted with the shipped price table (resources/prices.yaml).
BUDGETS_BLOCK = """
# Spending caps (docs/budgets.md): uncomment to limit what the model may cost. Dollars
# are counted with the shipped price table (resources/prices.yaml; model.prices
# overrides it); a model without a price counts toward token caps ("500k tokens") only.
# A space's admin may set its own space_*, user_day and task_run with /budget.
# budgets:
#   instance_day: $20             # all spaces together, per UTC day
#   space_day: $5                 # one space, per UTC day
#   space_month: $50              # one space, per UTC month
#   user_day: $1                  # one person in one space, per UTC day
#   task_run: $0.50               # one run of a scheduled task
"""


def render_config(answers: InitAnswers) -> str:
    leg: dict[str, object] = {"provider": answers.provider, "model": answers.model}
    if answers.model_base_url:
        leg["base_url"] = answers.model_base_url
    data: dict[str, object] = {
        "instance": answers.instance,
        "data_dir": "data",
        "server": {"host": "127.0.0.1", "port": answers.port},
        "model": {"chain": [leg]},
        "adapters": {
            name: {"enabled": name in answers.adapters} for name in ("slack", "discord", "telegram")
        }
        | {"web": {"enabled": True}},
    }
    header = (
        "# Mercury configuration, written by `mercury init`.\n"
        "# Every key and its default: mercury.example.yaml; docs/configuration.md explains them.\n"
        "# Secrets are not kept here: they live in .env next to this file (mode 0600).\n\n"
    )
    return header + yaml.safe_dump(data, sort_keys=False) + BUDGETS_BLOCK


def render_env(answers: InitAnswers, dashboard_password: str) -> str:
    lines = [
        "# Mercury secrets, written by `mercury init`. Keep this file private (mode 0600).",
        "# The process environment wins over values here.",
        f"MERCURY_DASHBOARD_PASSWORD={dashboard_password}",
    ]
    known = set(SECRET_ENV.values())
    for name, value in answers.secrets.items():
        if name not in known:
            raise ScaffoldError(f"{name}: not a secret Mercury reads")
        if value and name != "MERCURY_DASHBOARD_PASSWORD":
            lines.append(f"{name}={value}")
    for name in sorted(known - set(answers.secrets) - {"MERCURY_DASHBOARD_PASSWORD"}):
        lines.append(f"# {name}=")
    return "\n".join(lines) + "\n"


def default_answers(target: Path) -> InitAnswers:
    """The defaults for `target`: a new instance name, or the one its config already has."""
    answers = InitAnswers()
    answers.instance = existing_instance(target) or answers.instance
    return answers


def init_project(target: Path, answers: InitAnswers, *, force: bool = False) -> InitResult:
    """Write mercury.yaml and .env into `target`; refuse to overwrite unless `force`."""
    problem = instance_problem(answers.instance)
    if problem is not None:
        raise ScaffoldError(f"instance {answers.instance!r}: {problem}")
    target.mkdir(parents=True, exist_ok=True)
    config_path = target / DEFAULT_CONFIG_NAME
    env_path = target / ".env"
    existing = [p.name for p in (config_path, env_path) if p.exists()]
    if existing and not force:
        raise ScaffoldError(
            f"{', '.join(existing)} already exist in {target}; "
            "use --force to overwrite (the current dashboard password will be replaced)"
        )
    password = generate_password()
    config_path.write_text(render_config(answers), encoding="utf-8")
    # Create .env with 0600 from the start, so the secrets are never world-readable even
    # for an instant.
    if env_path.exists():
        env_path.unlink()
    fd = os.open(env_path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "w", encoding="utf-8") as fh:
        fh.write(render_env(answers, password))
    os.chmod(env_path, 0o600)
    (target / "data").mkdir(exist_ok=True)
    return InitResult(config_path=config_path, env_path=env_path, dashboard_password=password)
