"""Markdown (as agents write it) -> the HTML subset Telegram's `parse_mode=HTML` accepts.

Telegram rejects a whole message when its HTML does not parse, so the converter only ever
emits balanced tags from a small set (b, i, s, code, pre, a, blockquote) and escapes every
other `&`, `<` and `>`. Markup it does not recognise (an unclosed `**`, a lone `_`) stays
literal text. Pure functions, no I/O.
"""

from __future__ import annotations

import html
import re

# Telegram counts the limit on the text after entity parsing, so the tags we add do not
# count; a Markdown chunk of N characters never renders to more than N visible characters.
TELEGRAM_LIMIT = 4096

_FENCE_RE = re.compile(r"^\s*```\s*([\w+#.-]*)\s*$")
_HEADING_RE = re.compile(r"^\s{0,3}#{1,6}\s+(.*?)\s*#*\s*$")
_BULLET_RE = re.compile(r"^(\s*)[-*+]\s+(?=\S)")
_QUOTE_RE = re.compile(r"^\s{0,3}>\s?(.*)$")
_RULE_RE = re.compile(r"^\s{0,3}([-*_])(\s*\1){2,}\s*$")
# Schemes Telegram accepts in <a href>; anything else (javascript:, relative links) is
# shown as text rather than risking a rejected message.
_SAFE_URL_RE = re.compile(r"^(https?://|tg://|mailto:)\S+$", re.IGNORECASE)

# One inline construct; the alternatives are tried left to right at each position.
_INLINE_RE = re.compile(
    r"(?P<code>(?P<ticks>`+)(?P<code_body>.+?)(?P=ticks))"
    r"|(?P<link>\[(?P<link_text>[^\]\n]+)\]\((?P<link_url>[^)\s]+)\))"
    r"|(?P<bi>\*\*\*(?=\S)(?P<bi_body>.+?)(?<=\S)\*\*\*)"
    r"|(?P<bold>\*\*(?=\S)(?P<bold_body>.+?)(?<=\S)\*\*)"
    r"|(?P<bold2>(?<!\w)__(?=\S)(?P<bold2_body>.+?)(?<=\S)__(?!\w))"
    r"|(?P<strike>~~(?=\S)(?P<strike_body>.+?)(?<=\S)~~)"
    r"|(?P<it>(?<![\w*])\*(?=[^\s*])(?P<it_body>.+?)(?<=[^\s*])\*(?![\w*]))"
    # `_` only at word boundaries so snake_case_names stay as they are.
    r"|(?P<it2>(?<![\w])_(?=[^\s_])(?P<it2_body>.+?)(?<=[^\s_])_(?!\w))"
)


def escape(text: str) -> str:
    """Escape text for Telegram HTML (only &, < and > are special outside attributes)."""
    return text.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")


def escape_attr(text: str) -> str:
    """Escape an attribute value (quotes too)."""
    return html.escape(text, quote=True)


def inline_to_html(text: str) -> str:
    """Convert inline Markdown (code, links, bold, italic, strike) in one line of text."""
    out: list[str] = []
    pos = 0
    while pos < len(text):
        m = _INLINE_RE.search(text, pos)
        if m is None:
            break
        out.append(escape(text[pos : m.start()]))
        out.append(_render_inline(m))
        pos = m.end()
    out.append(escape(text[pos:]))
    return "".join(out)


def _render_inline(m: re.Match[str]) -> str:
    if m.group("code") is not None:
        body = m.group("code_body")
        # `` `x` `` style: one space of padding around the body is Markdown syntax.
        if len(body) > 2 and body.startswith(" ") and body.endswith(" "):
            body = body[1:-1]
        return f"<code>{escape(body)}</code>"
    if m.group("link") is not None:
        label, url = m.group("link_text"), m.group("link_url")
        if _SAFE_URL_RE.match(url):
            return f'<a href="{escape_attr(url)}">{inline_to_html(label)}</a>'
        return escape(f"{label} ({url})")
    if m.group("bi") is not None:
        return f"<b><i>{inline_to_html(m.group('bi_body'))}</i></b>"
    for name, tag in (("bold", "b"), ("bold2", "b"), ("strike", "s"), ("it", "i"), ("it2", "i")):
        if m.group(name) is not None:
            return f"<{tag}>{inline_to_html(m.group(name + '_body'))}</{tag}>"
    return escape(m.group(0))  # pragma: no cover - every alternative is handled above


def markdown_to_html(text: str) -> str:
    """Convert a Markdown reply to Telegram HTML; every tag opened is closed."""
    out: list[str] = []
    lines = text.split("\n")
    i = 0
    while i < len(lines):
        line = lines[i]
        fence = _FENCE_RE.match(line)
        if fence is not None:
            # A code block runs to the closing fence (or the end of the text).
            lang = fence.group(1)
            body: list[str] = []
            i += 1
            while i < len(lines) and not _FENCE_RE.match(lines[i]):
                body.append(lines[i])
                i += 1
            i += 1  # skip the closing fence
            code = escape("\n".join(body))
            if lang:
                out.append(f'<pre><code class="language-{escape_attr(lang)}">{code}</code></pre>')
            else:
                out.append(f"<pre>{code}</pre>")
            continue
        quote = _QUOTE_RE.match(line)
        if quote is not None:
            # Consecutive "> " lines form one blockquote.
            quoted: list[str] = []
            while i < len(lines) and (q := _QUOTE_RE.match(lines[i])) is not None:
                quoted.append(inline_to_html(q.group(1)))
                i += 1
            out.append("<blockquote>" + "\n".join(quoted) + "</blockquote>")
            continue
        out.append(_block_line(line))
        i += 1
    return "\n".join(out)


def _block_line(line: str) -> str:
    heading = _HEADING_RE.match(line)
    if heading is not None:
        return f"<b>{inline_to_html(heading.group(1))}</b>"
    if _RULE_RE.match(line):
        return "──────────"
    bullet = _BULLET_RE.match(line)
    if bullet is not None:
        return bullet.group(1) + "• " + inline_to_html(line[bullet.end() :])
    return inline_to_html(line)


def utf16_len(text: str) -> int:
    """Length as Telegram counts it (UTF-16 code units: an emoji is 2)."""
    return len(text.encode("utf-16-le")) // 2


def visible_len(html_text: str) -> int:
    """What Telegram counts of converted HTML: the text after its tags and entities."""
    return utf16_len(html.unescape(_TAG_RE.sub("", html_text)))


def split_markdown(text: str, limit: int = TELEGRAM_LIMIT) -> list[str]:
    """Split Markdown into chunks that each fit one Telegram message (nothing is lost).

    Each cut is at the last good boundary that fits: a paragraph break, else a line break,
    else the end of a sentence, else a space, else a hard cut. A better kind of boundary
    wins only when it keeps at least half of what fits, so a chunk is never cut short to
    an early paragraph break when a line break much later would do. A code block open at
    a cut is closed at the end of the chunk and reopened (with its language) at the start
    of the next, so each chunk converts to balanced HTML on its own.

    A chunk fits when both its Markdown and the text Telegram counts after conversion are
    at most `limit` UTF-16 units (a rule line `---` renders longer than it is written).
    """
    if limit < _MIN_LIMIT:
        raise ValueError(f"limit must be at least {_MIN_LIMIT}")
    chunks: list[str] = []
    rest = text
    reopen = ""  # the fence line that reopens a code block cut at the previous chunk's end
    while rest:
        whole = reopen + rest
        if utf16_len(whole) <= limit and _size(whole) <= limit:
            chunks.append(whole)
            break
        room = limit - utf16_len(reopen)
        while True:
            cut = _cut_point(rest, room, reopen)
            chunk, after = _close(reopen, rest[:cut])
            size = _size(chunk)
            if size <= limit or cut <= 1:
                break
            # The fence that closes a cut code block, or rule lines that render longer than
            # they are written, took it over the limit: shrink in proportion and cut again.
            room = min(room - 1, room * limit // size)
        chunks.append(chunk)
        rest = rest[cut:]
        reopen = after
    return chunks


def split_for_telegram(text: str, limit: int = TELEGRAM_LIMIT) -> list[str]:
    """Split Markdown at `limit` (fence-aware, nothing lost), then convert each chunk.

    Splitting before converting keeps every chunk's HTML self-contained and valid: a code
    block cut in two is closed and reopened by `split_markdown`, and inline markup that
    straddles a cut is left literal rather than producing a tag without its end.
    """
    return [markdown_to_html(chunk) for chunk in split_markdown(text, limit)]


# --------------------------------------------------------------------------- splitting

_MIN_LIMIT = 40
# The longest fence line carried over to the next chunk; a longer language name is dropped
# (the block stays a code block) so a hostile fence cannot eat a whole chunk.
_MAX_REOPEN = 32
_TAG_RE = re.compile(r"<[^>]*>")
# The end of a sentence: its punctuation and closing quotes or brackets, then a space (an
# ideographic full stop, exclamation or question mark needs none).
_SENTENCE_END_RE = re.compile(r"(?:[.!?\u2026][\"')\]\u201d\u2019]*[ \t]+|[\u3002\uff01\uff1f])")


def _size(chunk: str) -> int:
    """The larger of a chunk's Markdown length and its length as Telegram counts it."""
    return max(utf16_len(chunk), visible_len(markdown_to_html(chunk)))


def _window(text: str, units: int) -> int:
    """How many characters of `text` fit in `units` UTF-16 units (at least one)."""
    if units <= 1:
        return 1
    head = text[:units]  # a character is at least one unit
    if utf16_len(head) <= units:
        return len(head)
    used = 0
    for i, ch in enumerate(head):
        used += 2 if ord(ch) > 0xFFFF else 1
        if used > units:
            return max(1, i)
    return len(head)  # pragma: no cover - the whole head fitted, handled above


def _cut_point(text: str, units: int, reopen: str) -> int:
    """Where to end the next chunk: the best boundary in the back half of what fits."""
    end = _window(text, units)
    window = text[:end]
    half = end // 2
    candidates = (
        window.rfind("\n\n") + 2,
        window.rfind("\n") + 1,
        _last_sentence_end(window),
        window.rfind(" ") + 1,
    )
    for at in candidates:
        if at > half:
            return _before_empty_block(reopen, text, at)
    return end


def _last_sentence_end(window: str) -> int:
    found = 0
    for m in _SENTENCE_END_RE.finditer(window):
        found = m.end()
    return found


def _before_empty_block(reopen: str, text: str, at: int) -> int:
    """Move a cut that would end a chunk on a code block's opening fence (an empty block
    there, the whole block in the next chunk) to just before that fence line."""
    piece = text[:at]
    body = piece.rstrip("\n")
    start = body.rfind("\n") + 1
    if start == 0:
        return at  # the fence is the chunk's first line of its own: nothing to move
    if _FENCE_RE.match(body[start:]) and _open_fence(reopen + piece) is not None:
        return start
    return at


def _open_fence(text: str) -> str | None:
    """The fence line (e.g. "```python") if `text` ends inside a code block.

    Uses the converter's own fence pattern, so a cut agrees with how the chunk renders.
    """
    opener: str | None = None
    for line in text.split("\n"):
        m = _FENCE_RE.match(line)
        if m is not None:
            opener = None if opener is not None else "```" + m.group(1)
    return opener


def _close(reopen: str, piece: str) -> tuple[str, str]:
    """The chunk for `piece` (its code block closed if cut open) and the next's reopen."""
    chunk = reopen + piece
    fence = _open_fence(chunk)
    if fence is None:
        return chunk, ""
    if len(fence) > _MAX_REOPEN:
        fence = "```"
    return chunk + ("" if chunk.endswith("\n") else "\n") + "```", fence + "\n"
