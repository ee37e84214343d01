"""What a streamed reply's preview shows while the model writes (pure).

The preview is not the reply: the agent's result.json stays the reply of record and
replaces the preview when the run ends. While the run goes, the preview shows the text of
the model's latest turn that wrote any (a turn that only calls a tool keeps the text
before it), and a short status while a tool runs ("running bash…"). Everything here came
out of a model the agent steers, so it is bounded: the text is capped, the tool's name is
reduced to a short plain word.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field

from mercury.core.text import close_open_fence, split_message

# The most a preview keeps of one turn's text: past it the preview stops growing (the
# reply, when it comes, is sent whole).
MAX_PREVIEW_CHARS = 40_000
# Preview messages at most: a runaway answer does not flood the chat while it is written.
MAX_PREVIEW_MESSAGES = 8
_TOOL_NAME = re.compile(r"[^A-Za-z0-9_.-]+")


def tool_label(name: str) -> str:
    """A tool's name as the status shows it: plain characters, at most 40."""
    cleaned = _TOOL_NAME.sub("", name)[:40]
    return cleaned or "a tool"


@dataclass
class PreviewText:
    """The preview's text, fed with what the model writes as it writes it."""

    text: str = ""
    tool: str | None = None
    _new_turn: bool = field(default=False, repr=False)

    def turn_started(self) -> None:
        """A new model call began: its text, once it writes some, replaces the last."""
        self._new_turn = True

    def add_text(self, delta: str) -> None:
        if not delta:
            return
        if self._new_turn:
            self.text = ""
            self._new_turn = False
        self.tool = None
        room = MAX_PREVIEW_CHARS - len(self.text)
        if room > 0:
            self.text += delta[:room]

    def tool_called(self, name: str) -> None:
        self.tool = tool_label(name)

    def render(self) -> str:
        """The text to show now ("" = nothing to show yet)."""
        status = f"_running {self.tool}…_" if self.tool else ""
        body = close_open_fence(self.text.strip())
        if body and status:
            return f"{body}\n\n{status}"
        return body or status


def preview_chunks(text: str, limit: int) -> list[str]:
    """The preview split into messages of at most `limit` characters (code fences closed
    and reopened as in a reply), at most MAX_PREVIEW_MESSAGES of them."""
    if not text:
        return []
    return split_message(text, limit)[:MAX_PREVIEW_MESSAGES]
