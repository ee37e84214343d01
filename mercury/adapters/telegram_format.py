"""Markdown (as agents write it) -> the HTML subset Telegram's `parse_mode=HTML` accepts.

Telegram rejects a whole message when its HTML does not parse, so the converter only ever
emits balanced tags from a small set (b, i, s, code, pre, a, blockquote) and escapes every
other `&`, `<` and `>`. Markup it does not recognise (an unclosed `**`, a lone `_`) stays
literal text. Pure functions, no I/O.
"""

from __future__ import annotations

import html
import re

from mercury.core.text import split_message

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


def split_markdown(text: str, limit: int = TELEGRAM_LIMIT) -> list[str]:
    """Split Markdown so each chunk is at most `limit` UTF-16 units (nothing is lost).

    `split_message` counts code points; a chunk heavy with emoji can be up to twice as
    long for Telegram, so such a chunk is split again at half the limit.
    """
    chunks: list[str] = []
    for chunk in split_message(text, limit):
        if utf16_len(chunk) <= limit:
            chunks.append(chunk)
        else:
            chunks.extend(split_message(chunk, limit // 2))
    return chunks


def split_for_telegram(text: str, limit: int = TELEGRAM_LIMIT) -> list[str]:
    """Split Markdown at `limit` (fence-aware, nothing lost), then convert each chunk.

    Splitting before converting keeps every chunk's HTML self-contained and valid: a code
    block cut in two is closed and reopened by `split_message`, and inline markup that
    straddles a cut is left literal rather than producing a tag without its end.
    """
    return [markdown_to_html(chunk) for chunk in split_markdown(text, limit)]
