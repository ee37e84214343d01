"""What a streamed reply's preview shows (core.preview): pure, no I/O."""

from __future__ import annotations

from mercury.core.preview import (
    MAX_PREVIEW_CHARS,
    MAX_PREVIEW_MESSAGES,
    PreviewText,
    preview_chunks,
    tool_label,
)
from mercury.core.text import FENCE


def test_text_grows_as_it_is_written() -> None:
    p = PreviewText()
    p.turn_started()
    assert p.render() == ""
    p.add_text("Hello")
    p.add_text(", world")
    assert p.render() == "Hello, world"


def test_a_tool_shows_a_status_after_the_text_so_far() -> None:
    p = PreviewText()
    p.turn_started()
    p.add_text("Let me look.")
    p.tool_called("bash")
    assert p.render() == "Let me look.\n\n_running bash…_"


def test_a_tool_without_text_shows_only_the_status() -> None:
    p = PreviewText()
    p.turn_started()
    p.tool_called("read_file")
    assert p.render() == "_running read_file…_"


def test_the_next_turn_replaces_the_text_once_it_writes() -> None:
    p = PreviewText()
    p.turn_started()
    p.add_text("first thoughts")
    p.tool_called("bash")
    p.turn_started()
    # Until the new turn writes, the old text and the status stay.
    assert p.render() == "first thoughts\n\n_running bash…_"
    p.add_text("The answer")
    assert p.render() == "The answer"


def test_tool_names_from_the_model_are_reduced_to_plain_words() -> None:
    assert tool_label("bash") == "bash"
    assert tool_label("<b>evil</b>\n@everyone") == "bevilbeveryone"
    assert tool_label("x" * 500) == "x" * 40
    assert tool_label("***") == "a tool"


def test_text_is_capped() -> None:
    p = PreviewText()
    p.add_text("a" * (MAX_PREVIEW_CHARS + 500))
    p.add_text("more")
    assert len(p.text) == MAX_PREVIEW_CHARS


def test_chunks_split_like_a_reply_with_fences_balanced() -> None:
    body = "\n".join(f"x = {i}" for i in range(200))
    text = "intro\n" + FENCE + "python\n" + body + "\n" + FENCE
    chunks = preview_chunks(text, 300)
    assert len(chunks) > 1
    assert all(len(c) <= 300 for c in chunks)
    assert all(c.count(FENCE) % 2 == 0 for c in chunks)
    assert preview_chunks("", 300) == []


def test_a_half_written_code_block_is_shown_closed() -> None:
    p = PreviewText()
    p.add_text("Here:\n```python\nprint(1)")
    assert p.render() == "Here:\n```python\nprint(1)\n```"
    p.add_text("\n```\nDone.")
    assert p.render() == "Here:\n```python\nprint(1)\n```\nDone."


def test_the_number_of_preview_messages_is_bounded() -> None:
    chunks = preview_chunks("word " * 20_000, 100)
    assert len(chunks) == MAX_PREVIEW_MESSAGES
