from __future__ import annotations

from datetime import UTC, datetime

import pytest

from mercury.core.messages import ConversationRef, InboundMessage
from mercury.core.triggers import TriggerMode, TriggerRule, should_trigger, space_rule

NOW = datetime(2024, 5, 1, 12, 0, tzinfo=UTC)


def msg(text: str, **kw: bool) -> InboundMessage:
    return InboundMessage(
        platform="slack",
        platform_message_id="m1",
        conversation=ConversationRef("slack", "C1"),
        author_id="U1",
        author_name="Ann",
        text=text,
        ts=NOW,
        **kw,
    )


MENTION = TriggerRule()
PREFIX = TriggerRule(match=TriggerMode.PREFIX, prefixes=("!mercury", "!m"))
ALWAYS = TriggerRule(match=TriggerMode.ALWAYS)


def test_mention_mode_needs_a_mention() -> None:
    assert not should_trigger(msg("hello all"), MENTION).triggered
    r = should_trigger(msg("<@UBOT> what's up?", mentions_bot=True), MENTION)
    assert r.triggered and r.why == "mention"
    assert r.prompt == "what's up?"


def test_mention_mode_ignores_prefix() -> None:
    assert not should_trigger(msg("!mercury hi"), MENTION).triggered


def test_mention_stripping_variants() -> None:
    assert should_trigger(msg("<@!123>: hi", mentions_bot=True), MENTION).prompt == "hi"
    assert should_trigger(msg("<@U1|bot>,  hi ", mentions_bot=True), MENTION).prompt == "hi"
    # Mention elsewhere: text kept as is.
    r = should_trigger(msg("hey <@UBOT> look", mentions_bot=True), MENTION)
    assert r.triggered and r.prompt == "hey <@UBOT> look"


def test_known_handles_strip_only_the_bot() -> None:
    rule = TriggerRule(bot_handles=("@mercury_bot",))
    r = should_trigger(msg("@Mercury_Bot summarise this", mentions_bot=True), rule)
    assert r.prompt == "summarise this"
    # Someone else's handle at the start is not stripped.
    r = should_trigger(msg("<@U999> ask @mercury_bot", mentions_bot=True), rule)
    assert r.prompt == "<@U999> ask @mercury_bot"
    # A longer handle is someone else.
    assert should_trigger(msg("@mercury_botx hi"), rule).prompt == "@mercury_botx hi"
    # A handle in the text counts as a mention even if the adapter missed the flag.
    assert should_trigger(msg("@mercury_bot hi"), rule).triggered


def test_prefix_mode() -> None:
    r = should_trigger(msg("!mercury  do it"), PREFIX)
    assert r.triggered and r.why == "prefix" and r.prompt == "do it"
    assert should_trigger(msg("!M: short"), PREFIX).prompt == "short"
    assert not should_trigger(msg("!mercuryx nope"), PREFIX).triggered
    assert not should_trigger(msg("say !mercury later"), PREFIX).triggered
    assert should_trigger(msg("<@B> hi", mentions_bot=True), PREFIX).triggered


def test_always_mode() -> None:
    r = should_trigger(msg("  anything "), ALWAYS)
    assert r.triggered and r.why == "always" and r.prompt == "anything"
    assert should_trigger(msg("!mercury hi"), ALWAYS).prompt == "hi"


def test_dm() -> None:
    assert should_trigger(msg("hi", is_dm=True), MENTION).why == "dm"
    off = TriggerRule(direct_messages=False)
    assert not should_trigger(msg("hi", is_dm=True), off).triggered


def test_reply_to_bot() -> None:
    assert should_trigger(msg("and then?", reply_to_bot=True), MENTION).why == "reply"
    off = TriggerRule(reply_to_bot=False)
    assert not should_trigger(msg("and then?", reply_to_bot=True), off).triggered


@pytest.mark.parametrize("rule", [MENTION, PREFIX, ALWAYS])
def test_bot_messages_never_trigger(rule: TriggerRule) -> None:
    m = msg("<@UBOT> !mercury hi", from_bot=True, mentions_bot=True, is_dm=True, reply_to_bot=True)
    assert not should_trigger(m, rule).triggered


def test_string_mode_from_config_works() -> None:
    rule = TriggerRule(match="always")  # type: ignore[arg-type]
    assert should_trigger(msg("x"), rule).triggered


def test_a_space_override_changes_only_the_match_mode() -> None:
    base = TriggerRule(match=TriggerMode.MENTION, prefixes=("!m",), direct_messages=False)
    assert space_rule(base, None) is base
    assert space_rule(base, "nonsense") is base  # a bad stored value never breaks routing
    always = space_rule(base, "always")
    assert always.match is TriggerMode.ALWAYS
    assert (always.prefixes, always.direct_messages) == (("!m",), False)
    assert space_rule(base, "prefix").match is TriggerMode.PREFIX
