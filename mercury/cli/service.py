"""`mercury service install | uninstall | status`: Mercury as a systemd service.

The unit's text is mercury/core/service_unit.py; what install does to the machine (the
system user, its Docker access, data_dir handed over, the unit enabled and started) is
mercury/ops/service.py. `--dry-run` prints the unit and changes nothing. `--role` picks
what the unit runs: everything (`mercury run`), the gateway or a worker (docs/scale-out.md);
give a gateway and a worker on one machine different `--name`s.
"""

from __future__ import annotations

from pathlib import Path

import click

from mercury.cli.common import config_option, err, fail, load_or_exit, out, role_option
from mercury.core.roles import Role

DEFAULT_NAME = "mercury"
DEFAULT_USER = "mercury"

name_option = click.option(
    "--name",
    default=DEFAULT_NAME,
    show_default=True,
    help="The service's name (the unit is NAME.service).",
)
unit_dir_option = click.option(
    "--unit-dir",
    type=click.Path(file_okay=False, path_type=Path),
    default=None,
    hidden=True,  # for tests: where the unit file goes instead of /etc/systemd/system
)


@click.group()
def service() -> None:
    """Run Mercury as a systemd service (install, uninstall, status)."""


@service.command("install")
@click.option(
    "--user",
    "user",
    default=None,
    help=f"The dedicated system user it runs as (default {DEFAULT_USER}; created if missing).",
)
@click.option(
    "--as-root",
    is_flag=True,
    help="Run as root instead of a dedicated user (needed for space images).",
)
@name_option
@role_option(
    "all: `mercury run`; gateway: `mercury run --role gateway`; worker: `mercury worker` "
    "(docs/scale-out.md). Use --name to tell them apart, e.g. mercury-worker."
)
@click.option("--dry-run", is_flag=True, help="Print the unit and change nothing.")
@unit_dir_option
@config_option
def install(
    user: str | None,
    as_root: bool,
    name: str,
    role: str,
    dry_run: bool,
    unit_dir: Path | None,
) -> None:
    """Write, enable and start a systemd unit for this install."""
    from mercury.ops.service import (
        UNIT_DIR,
        ServiceError,
        plan_install,
        render_unit,
        systemd_version,
    )
    from mercury.ops.service import install as do_install

    if as_root and user is not None:
        fail("--user and --as-root exclude each other: choose one")
    loaded = load_or_exit()
    try:
        plan = plan_install(
            loaded,
            name=name,
            user=None if as_root else (user or DEFAULT_USER),
            version=systemd_version(),
            role=Role(role),
        )
        if dry_run:
            for note in plan.notes:
                err.print(f"note: {note}", soft_wrap=True)
            click.echo(render_unit(plan.spec), nl=False)
            return
        for note in plan.notes:
            out.print(f"note: {note}", soft_wrap=True)
        done = do_install(plan, loaded, unit_dir or UNIT_DIR)
    except ServiceError as exc:
        fail(str(exc))
    for line in done:
        out.print(line, soft_wrap=True)


@service.command("uninstall")
@name_option
@unit_dir_option
def uninstall(name: str, unit_dir: Path | None) -> None:
    """Stop, disable and remove the unit; data_dir and the user are kept."""
    from mercury.ops.service import UNIT_DIR, ServiceError
    from mercury.ops.service import uninstall as do_uninstall

    try:
        done = do_uninstall(name, unit_dir or UNIT_DIR)
    except ServiceError as exc:
        fail(str(exc))
    for line in done:
        out.print(line, soft_wrap=True)


@service.command("status")
@name_option
def status(name: str) -> None:
    """Whether the service runs (exit 0 only when it is active, else 3)."""
    import sys

    from mercury.ops.service import NOT_ACTIVE_EXIT, ServiceError
    from mercury.ops.service import status as read_status

    try:
        lines, active = read_status(name)
    except ServiceError as exc:
        fail(str(exc))
    for line in lines:
        out.print(line, soft_wrap=True)
    if not active:
        sys.exit(NOT_ACTIVE_EXIT)
