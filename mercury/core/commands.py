"""Chat commands handled by the host before the agent (stop, pause, model, ...)."""

from __future__ import annotations

import re
from dataclasses import dataclass
from enum import StrEnum

from mercury.core import durations
from mercury.core.budget import CapError
from mercury.core.budget_text import VALUE_HELP, BudgetSetting, parse_setting

# The space preference `/model switch` stores: the chain leg its runs try first.
MODEL_PREF = "_model"


class CommandKind(StrEnum):
    STOP = "stop"  # abort the running run and clear the space's queue
    PAUSE = "pause"
    RESUME = "resume"
    HELP = "help"
    STATUS = "status"
    MODEL_LIST = "model_list"
    MODEL_SWITCH = "model_switch"
    CLEAR = "clear"  # start a fresh context boundary
    TASKS = "tasks"  # list the space's scheduled tasks
    BUDGET = "budget"  # show the spending caps and what is used
    BUDGET_SET = "budget_set"  # set one of the space's own caps (admins)
    MEMORY = "memory"  # show the sender's own person note
    FORGET = "forget"  # clear the sender's own person note
    FORGET_OTHER = "forget_other"  # clear someone else's note (admins)


@dataclass(frozen=True)
class Command:
    kind: CommandKind
    # /pause: seconds, None = until /resume.
    duration_s: float | None = None
    # /model switch: a 1-based list number or a model name, as typed.
    model: str | None = None
    # /budget <cap> <value>: the space's own cap to store.
    budget: BudgetSetting | None = None
    # /forget <platform:user_id>: whose note an admin clears (a user key).
    user: str | None = None
    # Set when the arguments were unusable: show this to the user instead of acting.
    error: str | None = None


HELP_TEXT = """\
Commands:
  stop — stop the current run and drop queued requests
  /pause [30m|2h|1d] — stop answering here (for a while, or until /resume)
  /resume — answer again
  /status — what I'm doing here
  /model list — the models available here
  /model switch <number|name> — use another model here
  clear — start a fresh conversation (earlier messages are forgotten)
  /tasks — the scheduled tasks here: next run, last result, cost
  /budget — the spending caps here and what is used
  /budget <cap> <value> — set a cap of this space (admins), e.g. /budget day $5
  /memory — what I remember about you here (used only when I answer you)
  /forget — forget what I remember about you here
  /forget <platform:user_id> — forget someone else's (admins), e.g. /forget slack:U0123
  /help — this text"""

# A pause longer than this is almost certainly a typo; "until /resume" is the open-ended form.
MAX_PAUSE_S = 365 * 86400


def parse_duration(text: str) -> float | None:
    """A duration (core/durations.py's grammar) -> seconds; None when unreadable."""
    try:
        return durations.parse_duration(text)
    except durations.DurationError:
        return None


_BARE = {"stop": CommandKind.STOP, "clear": CommandKind.CLEAR}
_SLASH = {
    "stop": CommandKind.STOP,
    "pause": CommandKind.PAUSE,
    "resume": CommandKind.RESUME,
    "help": CommandKind.HELP,
    "status": CommandKind.STATUS,
    "clear": CommandKind.CLEAR,
    "tasks": CommandKind.TASKS,
    "model": CommandKind.MODEL_LIST,  # refined below
    "budget": CommandKind.BUDGET,  # refined below
    "memory": CommandKind.MEMORY,
    "forget": CommandKind.FORGET,  # refined below
}
_MODEL_USAGE = "Usage: /model list, or /model switch <number|name>."


def parse_command(text: str) -> Command | None:
    """Parse a command from a prompt already addressed to the bot; None for anything else.

    Bare "stop" and "clear" count only as the whole message (optionally with "!" or "."),
    so "stop the music" still goes to the agent. Slash commands accept Telegram's
    "/cmd@botname" form. Unknown slash commands are not ours: None (the agent gets them).
    """
    s = text.strip()
    if not s:
        return None
    bare = s.lower().rstrip("!.")
    if bare in _BARE:
        return Command(_BARE[bare])
    if not s.startswith("/"):
        return None
    head, _, rest = s[1:].partition(" ")
    name = head.split("@", 1)[0].lower()
    args = rest.split()
    kind = _SLASH.get(name)
    if kind is None:
        return None
    if kind is CommandKind.PAUSE:
        return _pause(args)
    if kind is CommandKind.MODEL_LIST:
        return _model(args)
    if kind is CommandKind.BUDGET:
        return _budget(args)
    if kind is CommandKind.MEMORY and args:
        return Command(kind, error=_MEMORY_USAGE)
    if kind is CommandKind.FORGET:
        return _forget(args)
    return Command(kind)


def _pause(args: list[str]) -> Command:
    if not args:
        return Command(CommandKind.PAUSE)
    raw = " ".join(args)
    # In chat a bare number is ambiguous ("/pause 30": seconds? minutes?): ask for a unit.
    seconds = None if raw.replace(".", "", 1).isdigit() else parse_duration(raw)
    if seconds is None:
        return Command(
            CommandKind.PAUSE,
            error=f'I couldn\'t read "{raw}" as a duration. Try /pause 30m, /pause 2h, '
            "/pause 1d, or just /pause (until /resume).",
        )
    if seconds > MAX_PAUSE_S:
        return Command(
            CommandKind.PAUSE,
            error="That pause is too long (over a year); use /pause alone to pause until /resume.",
        )
    return Command(CommandKind.PAUSE, duration_s=seconds)


def _model(args: list[str]) -> Command:
    if not args or (len(args) == 1 and args[0].lower() == "list"):
        return Command(CommandKind.MODEL_LIST)
    if args[0].lower() == "switch":
        if len(args) < 2:
            return Command(CommandKind.MODEL_SWITCH, error=_MODEL_USAGE)
        return Command(CommandKind.MODEL_SWITCH, model=" ".join(args[1:]))
    return Command(CommandKind.MODEL_LIST, error=_MODEL_USAGE)


_BUDGET_USAGE = (
    "Usage: /budget to see the caps, or /budget <cap> <value> to set one, e.g. /budget day $5."
)


def _budget(args: list[str]) -> Command:
    """/budget alone shows; /budget <cap> <value> sets (checked here, so an admin's typo is
    answered before anything is stored)."""
    if not args:
        return Command(CommandKind.BUDGET)
    if len(args) < 2:
        return Command(CommandKind.BUDGET_SET, error=f"{_BUDGET_USAGE} Values: {VALUE_HELP}.")
    try:
        setting = parse_setting(args[0], " ".join(args[1:]))
    except CapError as exc:
        return Command(CommandKind.BUDGET_SET, error=f"I couldn't set that: {exc}.")
    return Command(CommandKind.BUDGET_SET, budget=setting)


_MEMORY_USAGE = "Usage: /memory shows what I remember about you here; /forget clears it."
_FORGET_USAGE = (
    "Usage: /forget clears what I remember about you here; admins: /forget platform:user_id "
    "(e.g. /forget slack:U0123) clears someone else's."
)
# "platform:user_id" as roles, mutes and config admins write it (core.permissions.user_key).
_USER_KEY = re.compile(r"^[a-z][a-z0-9_-]{0,31}:[^\s:][^\s]{0,254}$")


def _forget(args: list[str]) -> Command:
    """/forget alone is the sender's own note; with one `platform:user_id`, someone else's
    (the router asks for the admin permission before that is carried out). A bare @name
    cannot be told apart across platforms, so it is answered with the form that works."""
    if not args:
        return Command(CommandKind.FORGET)
    if len(args) > 1:
        return Command(CommandKind.FORGET_OTHER, error=_FORGET_USAGE)
    who = args[0]
    if not _USER_KEY.match(who):
        return Command(
            CommandKind.FORGET_OTHER,
            error=f"I can't tell who {who[:60]!r} is: name them as platform:user_id, e.g. "
            "/forget slack:U0123 (the dashboard's space page lists the notes).",
        )
    return Command(CommandKind.FORGET_OTHER, user=who)
