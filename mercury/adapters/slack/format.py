"""Markdown (what agents write) to Slack mrkdwn (what Slack renders). Pure functions.

Slack's dialect differs from Markdown: `*bold*`, `_italic_`, `~strike~`, `<url|label>`
links, no headings, and `&`, `<`, `>` must be escaped everywhere or Slack parses them as
its own markup. Code (fenced and inline) is kept verbatim apart from that escaping.
"""

from __future__ import annotations

import re

_FENCE_RE = re.compile(r"^([ \t]*)```[^\n`]*\n(.*?)^[ \t]*```[ \t]*$", re.M | re.S)
_OPEN_FENCE_RE = re.compile(r"^([ \t]*)```[^\n`]*(?:\n(.*))?\Z", re.M | re.S)
_INLINE_CODE_RE = re.compile(r"(`+)(.+?)\1", re.S)
_LINK_RE = re.compile(r"!?\[([^\]\n]*)\]\(\s*([^)\s]+)(?:\s+\"[^\"]*\")?\s*\)")
_AUTOLINK_RE = re.compile(r"<((?:https?|mailto):[^>\s]+)>")
_HEADING_RE = re.compile(r"^[ \t]{0,3}#{1,6}[ \t]+(.+?)[ \t]*#*[ \t]*$")
_BULLET_RE = re.compile(r"^([ \t]*)[-*+][ \t]+(?=\S)")
_QUOTE_RE = re.compile(r"^([ \t]*(?:>[ \t]?)+)")
_RULE_RE = re.compile(r"^[ \t]*([-*_])(?:[ \t]*\1){2,}[ \t]*$")
_BOLD_RE = re.compile(r"\*\*(?=\S)(.+?)(?<=\S)\*\*|(?<!\w)__(?=\S)(.+?)(?<=\S)__(?!\w)")
_ITALIC_RE = re.compile(r"(?<![*\w])\*(?=[^\s*])([^*\n]+?)(?<=[^\s*])\*(?![*\w])")
_STRIKE_RE = re.compile(r"~~(?=\S)(.+?)(?<=\S)~~")

# Private-use characters stand in for protected pieces while the rest is rewritten;
# any found in the input are dropped first so they cannot be confused with ours.
_HOLD = "\ue000"
_BOLD = "\ue001"
_PRIVATE_RE = re.compile("[\ue000\ue001]")


def escape(text: str) -> str:
    """Escape Slack's three control characters."""
    return text.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")


def to_mrkdwn(markdown: str) -> str:
    """Convert Markdown to Slack mrkdwn."""
    text = _PRIVATE_RE.sub("", markdown)
    held: list[str] = []

    def hold(piece: str) -> str:
        held.append(piece)
        return f"{_HOLD}{len(held) - 1}{_HOLD}"

    # Fenced code first: nothing inside is Markdown. The language tag is dropped because
    # Slack would show it as the first line of the block.
    def fence(m: re.Match[str]) -> str:
        body = m.group(2)
        return hold(f"{m.group(1)}```\n{escape(body)}```")

    # A fence still open at the end (an answer being written, or cut) runs to the end and
    # is closed here: its code stays code (a `# comment` is no heading), drawn as a block.
    def open_fence(m: re.Match[str]) -> str:
        body = (m.group(2) or "").rstrip("\n")
        return hold(f"{m.group(1)}```\n{escape(body)}\n```")

    text = _FENCE_RE.sub(fence, text)
    text = _OPEN_FENCE_RE.sub(open_fence, text)
    text = _INLINE_CODE_RE.sub(lambda m: hold(f"`{escape(m.group(2))}`"), text)
    text = _LINK_RE.sub(lambda m: hold(_link(m.group(2), m.group(1))), text)
    text = _AUTOLINK_RE.sub(lambda m: hold(_link(m.group(1), "")), text)
    text = "\n".join(_line(line) for line in text.split("\n"))
    # Held pieces can nest (a link inside a held heading is already resolved), so
    # restore until none are left.
    pattern = re.compile(f"{_HOLD}(\\d+){_HOLD}")
    while _HOLD in text:
        text = pattern.sub(lambda m: held[int(m.group(1))], text)
    return text


def _link(url: str, label: str) -> str:
    if url.startswith("<") and url.endswith(">"):  # Markdown's [t](<url>) form
        url = url[1:-1]
    # `|` and `>` end the URL part of a Slack link: percent-encode them.
    safe_url = url.replace("&", "&amp;").replace("|", "%7C").replace(">", "%3E")
    label = label.strip()
    if not label or label == url:
        return f"<{safe_url}>"
    return f"<{safe_url}|{escape(label)}>"


def _line(line: str) -> str:
    if _RULE_RE.match(line):
        return "──────────"
    heading = _HEADING_RE.match(line)
    if heading:
        # The heading is bold already; bold inside it would close it early.
        inner = _inline(heading.group(1), bold_marker="")
        return f"*{inner}*" if inner else ""
    prefix = ""
    quote = _QUOTE_RE.match(line)
    if quote:
        # Slack renders a leading ">" as a quote, so it must stay unescaped.
        # (Slack has no nested quotes: one level is all it draws.)
        prefix = "> "
        line = line[quote.end() :]
    bullet = _BULLET_RE.match(line)
    if bullet:
        # "* item" would read as bold in mrkdwn; Slack has no list syntax, so draw a dot.
        prefix += bullet.group(1) + "• "
        line = line[bullet.end() :]
    return prefix + _inline(line)


def _inline(text: str, bold_marker: str = "*") -> str:
    text = escape(text)
    text = _BOLD_RE.sub(lambda m: f"{_BOLD}{m.group(1) or m.group(2)}{_BOLD}", text)
    text = _ITALIC_RE.sub(r"_\1_", text)
    text = _STRIKE_RE.sub(r"~\1~", text)
    return text.replace(_BOLD, bold_marker)
