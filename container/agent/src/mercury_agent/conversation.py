"""A provider-neutral conversation: what the loop keeps, whichever wire format carries it.

Keeping the history neutral lets the chain move to the next leg mid-run, even to the
other provider: each request is rendered from it in that leg's wire format.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Literal


@dataclass(frozen=True)
class TextBlock:
    text: str


@dataclass(frozen=True)
class ToolUse:
    """A tool call by the model. `error` is set when its arguments could not be decoded
    (OpenAI sends them as a JSON string); the loop answers with a tool error then."""

    id: str
    name: str
    input: dict[str, Any] = field(default_factory=dict)
    error: str | None = None
    raw_arguments: str | None = None  # as received, for replay when it was not JSON


@dataclass(frozen=True)
class ToolResult:
    tool_use_id: str
    content: str
    is_error: bool = False


Block = TextBlock | ToolUse | ToolResult


@dataclass
class Message:
    role: Literal["user", "assistant"]
    content: list[Block]

    def text(self) -> str:
        """The text blocks joined (tool calls and results left out)."""
        return "\n\n".join(b.text for b in self.content if isinstance(b, TextBlock) and b.text)

    def tool_uses(self) -> list[ToolUse]:
        return [b for b in self.content if isinstance(b, ToolUse)]


@dataclass(frozen=True)
class ToolDef:
    """A tool as both wire formats describe it: name, description, JSON schema."""

    name: str
    description: str
    parameters: dict[str, Any]


@dataclass(frozen=True)
class ModelRequest:
    system: str
    messages: list[Message]
    tools: list[ToolDef]
    max_tokens: int


@dataclass(frozen=True)
class ModelReply:
    message: Message  # role "assistant"
    input_tokens: int
    output_tokens: int
    model: str
    stop_reason: str | None = None
