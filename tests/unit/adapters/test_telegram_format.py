"""Splitting long replies for Telegram: each cut at the last good boundary that fits, every
part valid HTML within the limit, and nothing lost.

The bug this guards against: a 9,000-character reply went out as a first message of only
1,568 characters, because any paragraph break past a third of the limit beat a line break
near the limit.
"""

from __future__ import annotations

import random
from collections.abc import Callable
from html.parser import HTMLParser

import pytest

from mercury.adapters.telegram.format import (
    TELEGRAM_LIMIT,
    markdown_to_html,
    split_for_telegram,
    split_markdown,
    utf16_len,
    visible_len,
)

ALLOWED_TAGS = {"b", "i", "s", "code", "pre", "a", "blockquote"}
ALLOWED_ENTITIES = {"amp", "lt", "gt", "quot"}


class _StrictHtml(HTMLParser):
    """Fails on anything Telegram's HTML parser would reject in what the converter emits."""

    def __init__(self) -> None:
        super().__init__(convert_charrefs=False)
        self.stack: list[str] = []
        self.problems: list[str] = []

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        if tag not in ALLOWED_TAGS:
            self.problems.append(f"tag <{tag}>")
        self.stack.append(tag)

    def handle_endtag(self, tag: str) -> None:
        if not self.stack or self.stack.pop() != tag:
            self.problems.append(f"unbalanced </{tag}>")

    def handle_data(self, data: str) -> None:
        for ch in "<>&":
            if ch in data:
                self.problems.append(f"raw {ch!r} in {data[:40]!r}")

    def handle_entityref(self, name: str) -> None:
        if name not in ALLOWED_ENTITIES:
            self.problems.append(f"entity &{name};")

    def handle_charref(self, name: str) -> None:
        if name.lower() not in ("x27", "39"):
            self.problems.append(f"char ref &#{name};")


def assert_valid_html(part: str) -> None:
    parser = _StrictHtml()
    parser.feed(part)
    parser.close()
    assert not parser.problems, (parser.problems, part[:200])
    assert not parser.stack, f"left open: {parser.stack}"


def assert_lossless(text: str, chunks: list[str]) -> None:
    """The chunks are the text in order, with only the fence lines the splitter adds: a
    closing fence at the end of a chunk cut inside a code block, and the fence line that
    reopens it at the start of the next. (Where the text itself has a fence at that spot
    the reading is ambiguous, so every reading is tried.)"""

    def tiles(i: int, pos: int, reopened: bool) -> bool:
        if i == len(chunks):
            return pos == len(text)
        body = chunks[i]
        if reopened:
            if not body.startswith("```"):
                return False
            body = body[body.index("\n") + 1 :]
        readings = [(body, False)]
        if body.endswith("```"):
            readings += [(body[:-3], True), (body[:-4], True)]
        return any(
            text.startswith(part, pos) and tiles(i + 1, pos + len(part), closed)
            for part, closed in readings
        )

    assert tiles(0, 0, False), [c[:40] for c in chunks]


def check(text: str, limit: int = TELEGRAM_LIMIT) -> list[str]:
    """Split, and hold every part to the rules; the Markdown chunks are returned."""
    chunks = split_markdown(text, limit)
    assert_lossless(text, chunks)
    for chunk, part in zip(chunks, split_for_telegram(text, limit), strict=True):
        assert part == markdown_to_html(chunk)
        assert utf16_len(chunk) <= limit and visible_len(part) <= limit, (len(chunk), part[:80])
        assert part.strip(), "an empty message"
        assert_valid_html(part)
    return chunks


# --------------------------------------------------------------------------- inputs


def prose(n: int, seed: int = 1) -> str:
    """Sentences of ordinary words, about `n` characters, no line breaks."""
    rng = random.Random(seed)
    words = ("the", "model", "reads", "each", "file", "and", "writes", "a", "short",
             "summary", "of", "what", "it", "found")  # fmt: skip
    out: list[str] = []
    size = 0
    while size < n:
        sentence = " ".join(rng.choice(words) for _ in range(rng.randint(6, 14)))
        sentence = sentence.capitalize() + rng.choice([".", ".", "!", "?"])
        out.append(sentence)
        size += len(sentence) + 1
    return " ".join(out)


def code_block(lines: int, lang: str = "python") -> str:
    body = "\n".join(
        f"    result_{i} = compute(items[{i}], limit={i * 7}) if items else None"
        for i in range(lines)
    )
    return f"```{lang}\n{body}\n```"


def realistic_reply() -> str:
    """A 9,000-character agent reply: intro paragraphs, a long code block (no blank lines
    in it), a list, a table-like block and closing paragraphs."""
    parts = [
        "## What I found",
        prose(600, 2),
        prose(700, 3),
        "Here is the script that reproduces it:",
        code_block(45),
        "### Steps",
        "\n".join(f"- **Step {i}**: {prose(90, 10 + i)}" for i in range(1, 9)),
        "> Note: the `limit` argument is in *bytes*, not characters & it is inclusive.",
        "\n".join(f"{i}. check `item_{i}` against [the docs](https://example.com/d/{i})"
                  for i in range(1, 12)),
        prose(900, 4),
        "---",
        prose(800, 5),
    ]  # fmt: skip
    text = "\n\n".join(parts)
    # Pad or trim with prose to exactly 9,000 characters, ending on a full sentence.
    text += "\n\n" + prose(9000, 6)
    return text[:9000].rsplit(" ", 1)[0] + "."


# --------------------------------------------------------------------------- tests


def test_a_9000_character_reply_is_three_full_messages() -> None:
    text = realistic_reply()
    assert 8900 <= len(text) <= 9000
    chunks = check(text)
    assert len(chunks) == 3, [len(c) for c in chunks]
    # The first two are as full as a good boundary allows (it was 1,568 of 4,096).
    assert all(len(c) >= TELEGRAM_LIMIT * 3 // 4 for c in chunks[:2]), [len(c) for c in chunks]
    # The code block was cut between lines and reopened with its language.
    opened = [c for c in chunks if "```python" in c]
    assert opened, [c[:60] for c in chunks]


Case = tuple[str, Callable[[], str], int, str]

CASES: list[Case] = [
    (
        "a paragraph break near the limit wins",
        lambda: prose(700, 1) + "\n\n" + prose(200, 2) + "\n" + prose(400, 3),
        1000,
        "paragraph",
    ),
    (
        "an early paragraph break loses to a late line break",
        lambda: prose(300, 1) + "\n\n" + "\n".join(prose(80, i) for i in range(2, 20)),
        1000,
        "line",
    ),
    (
        "a code block with no blank line is cut between its lines",
        lambda: "Intro.\n\n" + code_block(40),
        1000,
        "line",
    ),
    (
        "one long paragraph is cut after a sentence",
        lambda: prose(3000, 7),
        1000,
        "sentence",
    ),
    (
        "a long line with no sentence end is cut at a space",
        lambda: " ".join(f"word{i}" for i in range(600)),
        1000,
        "space",
    ),
    (
        "an early space loses to a hard cut through one long token",
        lambda: "see " + "x" * 3000,
        1000,
        "hard",
    ),
    (
        "emoji count twice, as Telegram counts them",
        lambda: "🙂 " * 3000,
        4096,
        "space",
    ),
]


@pytest.mark.parametrize(
    ("text", "limit", "kind"), [c[1:] for c in CASES], ids=[c[0] for c in CASES]
)
def test_each_cut_is_the_last_good_boundary_that_fits(
    text: Callable[[], str], limit: int, kind: str
) -> None:
    source = text()
    chunks = check(source, limit)
    first = chunks[0]
    assert len(chunks) >= 2
    ends = {
        "paragraph": first.endswith("\n\n"),
        "line": first.endswith("\n") or first.endswith("\n```"),
        "sentence": first[-2:-1] in ".!?" and first.endswith(" "),
        "space": first.endswith(" ") and first[-2:-1] not in ".!?",
        "hard": utf16_len(first) == limit,
    }
    assert ends[kind], (kind, first[-30:])
    # Never a small first part while a bigger one would fit: at least half the limit.
    assert utf16_len(first) > limit // 2, utf16_len(first)


def test_a_cut_never_leaves_an_empty_code_block_behind() -> None:
    # A paragraph break right before a fence: the block starts in the next message.
    text = prose(600, 1) + "\n\n" + code_block(30)
    chunks = check(text, 1000)
    assert not chunks[0].rstrip().endswith("```python"), chunks[0][-40:]
    assert "<pre></pre>" not in "".join(split_for_telegram(text, 1000))


def test_rule_lines_that_render_longer_than_written_still_fit() -> None:
    # `---` is 3 characters of Markdown but 10 of Telegram text.
    text = "\n".join("---" if i % 2 else "ok" for i in range(2000))
    chunks = check(text, 500)
    assert len(chunks) > 2


def test_markup_cut_in_two_stays_literal_and_valid() -> None:
    text = "**" + "bold words here " * 200 + "end**"
    check(text, 1000)


def test_a_hostile_fence_language_does_not_eat_the_next_chunk() -> None:
    text = "```" + "x" * 900 + "\n" + "\n".join(f"line {i}" for i in range(400)) + "\n```"
    chunks = check(text, 1000)
    assert all(len(c.split("\n", 1)[0]) <= 40 for c in chunks[1:])


def test_short_text_is_one_part_and_limits_are_checked() -> None:
    assert split_markdown("hello") == ["hello"]
    assert split_for_telegram("**hi** & bye") == ["<b>hi</b> &amp; bye"]
    with pytest.raises(ValueError):
        split_markdown("x" * 100, 10)


@pytest.mark.parametrize("seed", range(40))
def test_random_markdown_always_splits_valid_and_whole(seed: int) -> None:
    rng = random.Random(seed)
    pieces = [
        lambda: prose(rng.randint(20, 900), rng.randint(0, 99)),
        lambda: code_block(rng.randint(1, 60), rng.choice(["", "sh", "python"])),
        lambda: "- " + prose(rng.randint(10, 200), rng.randint(0, 99)),
        lambda: "> " + prose(rng.randint(10, 300), rng.randint(0, 99)) + " & <tags>",
        lambda: "**" + prose(rng.randint(5, 200), rng.randint(0, 99)) + "**",
        lambda: "[link](https://example.com/?a=1&b=2) `a<b>&c` 🙂🚀",
        lambda: "---",
        lambda: "x" * rng.randint(1, 1500),
    ]
    text = "".join(
        rng.choice(pieces)() + rng.choice(["\n\n", "\n", " "]) for _ in range(rng.randint(5, 40))
    )
    check(text, rng.choice([100, 500, 1000, TELEGRAM_LIMIT]))
