"""Whether a message addresses the bot, and the prompt it carries."""

from __future__ import annotations

import re
from dataclasses import dataclass, replace
from enum import StrEnum

from mercury.core.messages import InboundMessage


class TriggerMode(StrEnum):
    MENTION = "mention"  # only messages that mention the bot
    PREFIX = "prefix"  # messages starting with a prefix (mentions still count)
    ALWAYS = "always"  # every message in the conversation


@dataclass(frozen=True)
class TriggerRule:
    """One space's trigger settings (the pipeline converts config or a per-space override).

    `bot_handles` are the literal ways the bot is mentioned on this platform ("<@U0BOT>",
    "@mercury_bot"); the adapter knows them. When empty, a leading `<@...>` token of a
    message that mentions the bot is assumed to be that mention.
    """

    match: TriggerMode = TriggerMode.MENTION
    prefixes: tuple[str, ...] = ("!mercury",)
    direct_messages: bool = True
    reply_to_bot: bool = True
    bot_handles: tuple[str, ...] = ()


# The space preference that overrides `trigger.match` for one space (dashboard: Spaces).
TRIGGER_PREF = "_trigger"


def space_rule(base: TriggerRule, override: str | None) -> TriggerRule:
    """`base` (from the config) with the space's own match mode, when it stored a valid one."""
    if override is None or override not in TriggerMode.__members__.values():
        return base
    return replace(base, match=TriggerMode(override))


@dataclass(frozen=True)
class TriggerResult:
    triggered: bool
    prompt: str  # text without the leading mention/prefix, stripped
    why: str  # "dm", "mention", "prefix", "reply", "always", or why not


# Slack <@U123> / <@U123|name>, Discord <@123> / <@!123>; optional ":" or "," after it.
_GENERIC_MENTION = re.compile(r"^<@[^>\s]+>[:,]?")


def _strip_mention(text: str, msg: InboundMessage, rule: TriggerRule) -> tuple[str, bool]:
    """Remove one leading bot mention. Returns (rest, whether one was removed)."""
    lowered = text.lower()
    for handle in rule.bot_handles:
        if handle and lowered.startswith(handle.lower()):
            rest = text[len(handle) :]
            # "@mercury_botx" is someone else: the handle must end at a word boundary.
            if rest and (rest[0].isalnum() or rest[0] == "_"):
                continue
            return rest.removeprefix(":").removeprefix(",").lstrip(), True
    if not rule.bot_handles and msg.mentions_bot:
        m = _GENERIC_MENTION.match(text)
        if m:
            return text[m.end() :].lstrip(), True
    return text, False


def _strip_prefix(text: str, prefixes: tuple[str, ...]) -> tuple[str, bool]:
    """Remove one leading prefix (case-insensitive, ending at a word boundary)."""
    lowered = text.lower()
    # Longest first, so "!m" does not shadow "!mercury".
    for prefix in sorted((p for p in prefixes if p), key=len, reverse=True):
        if not lowered.startswith(prefix.lower()):
            continue
        rest = text[len(prefix) :]
        if rest and prefix[-1].isalnum() and (rest[0].isalnum() or rest[0] == "_"):
            continue  # "!mercuryx" is not "!mercury"
        return rest.removeprefix(":").removeprefix(",").lstrip(), True
    return text, False


def should_trigger(msg: InboundMessage, rule: TriggerRule) -> TriggerResult:
    """Decide whether `msg` starts a run under `rule`, and extract its prompt.

    Bot messages (ours or others') never trigger, so bots cannot loop on each other.
    A mention triggers in every mode; a prefix in `prefix` and `always` modes; DMs and
    replies to the bot when the rule allows them.
    """
    text = msg.text.strip()
    rest, had_mention = _strip_mention(text, msg, rule)
    prompt, had_prefix = _strip_prefix(rest, rule.prefixes)
    prompt = prompt.strip()
    if msg.from_bot:
        return TriggerResult(False, prompt, "from a bot")
    if msg.is_dm and rule.direct_messages:
        return TriggerResult(True, prompt, "dm")
    if msg.mentions_bot or had_mention:
        return TriggerResult(True, prompt, "mention")
    mode = TriggerMode(rule.match)
    if had_prefix and mode in (TriggerMode.PREFIX, TriggerMode.ALWAYS):
        return TriggerResult(True, prompt, "prefix")
    if msg.reply_to_bot and rule.reply_to_bot:
        return TriggerResult(True, prompt, "reply")
    if mode is TriggerMode.ALWAYS:
        return TriggerResult(True, prompt, "always")
    if msg.is_dm:
        return TriggerResult(False, prompt, "direct messages are off")
    return TriggerResult(False, prompt, f"not addressed ({mode.value} mode)")
