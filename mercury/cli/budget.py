"""`mercury budget show|set`: a space's spending caps, from the operator's terminal.

The same caps and text as the chat's /budget (core/budget_text.py). `set` stores the
space's own cap in the database; a running Mercury reads it within seconds (the budget
book caches a space's caps for OVERRIDE_TTL_S). instance_day is not a space's to set:
it lives in mercury.yaml only.
"""

from __future__ import annotations

import asyncio
import json
from typing import Any

import click

from mercury.cli.common import config_option, fail, load_or_exit, out
from mercury.cli.usage import now_option, parse_now


@click.group()
def budget() -> None:
    """A space's spending caps (docs/budgets.md)."""


@budget.command("show")
@click.argument("space")
@click.option("--user", "user_key", default=None, help='Count this user\'s day ("platform:id").')
@click.option("--json", "as_json", is_flag=True, help="Print the caps as JSON.")
@now_option
@config_option
def budget_show(space: str, user_key: str | None, as_json: bool, now_text: str | None) -> None:
    """Each cap of SPACE: its value and source, what is spent, when it resets."""
    from mercury.cli.sitedb import SiteDbError, existing_space, site_database
    from mercury.core.budget_text import caps_text, status_json
    from mercury.pipeline.budget_status import budget_statuses
    from mercury.storage import utcnow

    loaded = load_or_exit()
    now = parse_now(now_text) or utcnow()

    async def main() -> Any:
        async with site_database(loaded.config) as db:
            await existing_space(db, space)
            base = loaded.config.budgets.caps()
            return await budget_statuses(db, base, space, user_key, now)

    try:
        statuses = asyncio.run(main())
    except SiteDbError as exc:
        fail(str(exc))
    known = user_key is not None
    if as_json:
        caps = [status_json(s, now, user_known=known) for s in statuses]
        click.echo(json.dumps({"space_id": space, "caps": caps}, indent=2))
        return
    whose = f' ("you" below is {user_key})' if known else ""
    out.print(f"Space {space}{whose}.", soft_wrap=True)
    out.print(
        caps_text(statuses, now, user_known=known, how_to_set=f"mercury budget set {space}"),
        soft_wrap=True,
    )


@budget.command("set")
@click.argument("space")
@click.argument("scope")
@click.argument("value", nargs=-1, required=True)
@config_option
def budget_set(space: str, scope: str, value: tuple[str, ...]) -> None:
    """Set SPACE's own SCOPE cap to VALUE.

    SCOPE: space_day, space_month, user_day or task_run (or day, month, user, task).
    VALUE: dollars (5, 2.50, '$5': quote a $ in the shell), tokens (500k tokens), both
    ('$5 or 2m tokens'), off (no cap) or default (follow mercury.yaml again).
    """
    from mercury.cli.sitedb import SiteDbError, existing_space, site_database
    from mercury.core.budget import CapError
    from mercury.core.budget_text import parse_setting, setting_text
    from mercury.pipeline.budget import OVERRIDE_TTL_S, read_overrides, write_override

    try:
        setting = parse_setting(scope, " ".join(value))
    except CapError as exc:
        fail(str(exc))
    loaded = load_or_exit()

    async def main() -> str:
        async with site_database(loaded.config) as db:
            await existing_space(db, space)
            await write_override(db, space, setting.scope, setting.cap, reset=setting.reset)
            overrides = await read_overrides(db, space)
        caps = loaded.config.budgets.caps().with_overrides(overrides)
        return setting_text(setting, caps.get(setting.scope))

    try:
        text = asyncio.run(main())
    except SiteDbError as exc:
        fail(str(exc))
    out.print(
        f"Space {space}: {text} A running Mercury applies it within {OVERRIDE_TTL_S:g} s.",
        soft_wrap=True,
    )


__all__ = ["budget"]
