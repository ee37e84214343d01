from __future__ import annotations

import itertools
import random

import pytest

from mercury.core.text import split_message


def unsplit(chunks: list[str]) -> str:
    """Undo the fence markers split_message adds at cuts."""
    out = chunks[0]
    for prev, chunk in itertools.pairwise(chunks):
        if prev.endswith("\n```") and chunk.startswith("```"):
            out = out[: -len("\n```")]
            first_nl = chunk.index("\n")
            body = chunk[first_nl + 1 :]
            # the splitter added a newline before the closing fence only when missing
            out += body
        else:
            out += chunk
    return out


def test_short_text_is_one_chunk() -> None:
    assert split_message("hello", 100) == ["hello"]


def test_every_character_survives_and_chunks_fit() -> None:
    text = "".join(random.Random(7).choice("abc \n") for _ in range(10_000))
    chunks = split_message(text, 2000)
    assert all(len(c) <= 2000 for c in chunks)
    assert "".join(chunks) == text


def test_prefers_paragraph_then_line_boundaries() -> None:
    text = ("word " * 30).strip() + "\n\n" + ("next " * 30).strip()
    chunks = split_message(text, 200)
    assert chunks[0].endswith("\n\n")
    assert "".join(chunks) == text


def test_code_fences_are_closed_and_reopened() -> None:
    code = "\n".join(f"print({i})" for i in range(400))
    text = "Here:\n```python\n" + code + "\n```\nDone."
    chunks = split_message(text, 500)
    assert len(chunks) > 3
    assert all(len(c) <= 500 for c in chunks)
    for c in chunks[1:-1]:
        assert c.startswith("```python\n") and c.endswith("\n```")
    assert all(c.count("```") % 2 == 0 for c in chunks)
    joined = unsplit(chunks)
    assert joined.replace("\n", "") == text.replace("\n", "")


def test_long_unbroken_text_is_hard_split() -> None:
    text = "x" * 4500
    chunks = split_message(text, 2000)
    assert [len(c) for c in chunks] == [1996, 1996, 508]
    assert "".join(chunks) == text


def test_limit_too_small() -> None:
    with pytest.raises(ValueError):
        split_message("abc", 5)


def test_a_paragraph_break_early_on_does_not_make_a_short_first_message() -> None:
    # One paragraph break 40% of the way in, then long lines: the cut goes at the last
    # line break within the limit, not at the early paragraph break.
    text = "intro " * 133 + "\n\n" + "\n".join(f"line {i} " + "x" * 60 for i in range(120))
    chunks = split_message(text, 2000)
    assert len(chunks[0]) > 1500, [len(c) for c in chunks]
    assert all(len(c) <= 2000 for c in chunks)
    assert "".join(chunks) == text
