"""Prompt assembly: the system prompt and the message list of one run.

The system prompt is the space's profile (resources/profiles/<name>/AGENTS.md), then what
this run is about: where the space is, who asks (and what you remember about them), the
attachments, the space's preferences, its MEMORY.md (memory.py) and an index of skills
(name + description; the model reads a skill's full SKILL.md with read_file when it needs
it, so long skills cost nothing until used). Chat history becomes the message list: the
bot's own messages as assistant turns, everyone else's as user turns prefixed with the
author's name, ending with the message being answered.

Everything here is a pure function of its arguments (file reading aside), for unit tests.
"""

from __future__ import annotations

import json
import re
import sys
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

from mercury_agent.contract import AgentInput, HistoryMessage
from mercury_agent.conversation import Message, TextBlock
from mercury_agent.memory import memory_section, read_memory
from mercury_agent.settings import INBOX, OUTBOX

DEFAULT_PROFILE = "general"
SKILL_FILE = "SKILL.md"
_PROFILE_NAME = re.compile(r"^[a-z0-9][a-z0-9_-]{0,63}$")
# Used only when the resources are not mounted at all; the real profiles say much more.
FALLBACK_PROFILE = (
    "You are Mercury, a helpful assistant in a group chat. Answer the last message "
    "directly and concisely. You can run tools in a sandboxed Linux workspace."
)
_DESCRIPTION_MAX = 300


def _log(message: str) -> None:
    print(f"mercury-agent: {message}", file=sys.stderr, flush=True)


# --------------------------------------------------------------------------- profiles


def load_profile(resources_dir: Path, name: str | None) -> tuple[str, str]:
    """(profile name used, its AGENTS.md text); unknown names fall back to "general"."""
    wanted = (name or DEFAULT_PROFILE).strip().lower()
    candidates = [wanted] if _PROFILE_NAME.match(wanted) else []
    if DEFAULT_PROFILE not in candidates:
        candidates.append(DEFAULT_PROFILE)
    for candidate in candidates:
        path = resources_dir / "profiles" / candidate / "AGENTS.md"
        try:
            text = path.read_text(encoding="utf-8").strip()
        except (OSError, UnicodeDecodeError):
            continue
        if candidate != wanted:
            _log(f"profile {wanted!r} not found; using {candidate!r}")
        return candidate, text
    _log(f"no profile found under {resources_dir / 'profiles'}; using a minimal prompt")
    return "builtin", FALLBACK_PROFILE


# --------------------------------------------------------------------------- skills


@dataclass(frozen=True)
class Skill:
    name: str
    description: str
    path: Path  # the SKILL.md file


def _unquote(value: str) -> str:
    value = value.strip()
    if len(value) >= 2 and value[0] == value[-1] and value[0] in "\"'":
        return value[1:-1]
    return value


def parse_front_matter(text: str) -> dict[str, str]:
    """`key: value` pairs of a leading `---` block (the YAML subset SKILL.md files use).

    Supports quoted values, indented continuation lines and `>` / `|` block scalars;
    anything fancier is read as plain text rather than failing.
    """
    lines = text.lstrip("\ufeff").splitlines()
    if not lines or lines[0].strip() != "---":
        return {}
    result: dict[str, str] = {}
    key: str | None = None
    block: str | None = None  # ">" or "|" while reading a block scalar
    for line in lines[1:]:
        if line.strip() in ("---", "..."):
            break
        if key is not None and (line.startswith((" ", "\t")) or not line.strip()):
            piece = line.strip()
            if not piece:
                if block == "|":
                    result[key] += "\n"
                continue
            joiner = "\n" if block == "|" else " "
            result[key] = f"{result[key]}{joiner}{piece}" if result[key] else piece
            continue
        match = re.match(r"^([A-Za-z0-9_-]+)\s*:\s*(.*)$", line)
        if not match:
            key = None
            continue
        key, value = match.group(1), match.group(2).strip()
        if value in (">", "|", ">-", "|-", ">+", "|+"):
            block = value[0]
            result[key] = ""
        else:
            block = None
            result[key] = _unquote(value)
    return {k: v.strip() for k, v in result.items()}


def _first_paragraph(text: str) -> str:
    body = text
    if text.lstrip().startswith("---"):
        parts = text.lstrip().split("---", 2)
        body = parts[2] if len(parts) == 3 else ""
    for line in body.splitlines():
        line = line.strip()
        if line and not line.startswith("#"):
            return line
    return ""


def load_skill(path: Path) -> Skill | None:
    """A skill from a SKILL.md file or a directory holding one; None if unreadable."""
    file = path / SKILL_FILE if path.is_dir() else path
    try:
        text = file.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        _log(f"skill {path} skipped: {exc}")
        return None
    meta = parse_front_matter(text)
    name = meta.get("name") or file.parent.name or file.stem
    description = meta.get("description") or _first_paragraph(text) or "(no description)"
    if len(description) > _DESCRIPTION_MAX:
        description = description[: _DESCRIPTION_MAX - 3].rstrip() + "..."
    return Skill(name=name, description=description, path=file)


def discover_skills(resources_dir: Path, paths: Iterable[str]) -> list[Skill]:
    """Built-in skills (resources/skills/*/SKILL.md) followed by the run's `skills`.

    A skill of the run replaces a built-in one of the same name (an extension may ship a
    better version); the same file listed twice appears once.
    """
    found: list[Skill] = []
    builtin_dir = resources_dir / "skills"
    if builtin_dir.is_dir():
        for child in sorted(builtin_dir.iterdir()):
            if (child / SKILL_FILE).is_file():
                skill = load_skill(child)
                if skill:
                    found.append(skill)
    for raw in paths:
        skill = load_skill(Path(raw))
        if skill is None:
            continue
        found = [s for s in found if s.name != skill.name and s.path != skill.path]
        found.append(skill)
    return found


# --------------------------------------------------------------------------- system prompt


def tools_note(builtin: Iterable[str], extension: Iterable[str] = ()) -> str:
    """The system prompt's line naming the tools: the built-in ones, then those of the
    run's extensions (MCP servers), which the model would otherwise take for built-in."""
    note = f"Tools: {', '.join(builtin)}."
    more = list(extension)
    if more:
        note += f" Tools from this space's extensions (MCP servers): {', '.join(more)}."
    return note


def _format_value(value: Any) -> str:
    return value if isinstance(value, str) else json.dumps(value, ensure_ascii=False)


def person_note_section(inp: AgentInput) -> str:
    """What the agent remembers about the caller (input.json `person_note`), with the line
    that keeps it theirs: the host gives a note only to its own person's runs."""
    who = (inp.caller.name or inp.caller.id) if inp.caller else "the person asking"
    note = (inp.person_note or "").strip()
    return (
        f"## What you remember about {who}\n{note}\n"
        f"(Private to {who}: only runs {who} starts see it; never repeat it to others. "
        "Keep it current with "
        '`mercury-ctl memory append "..."`, rewrite it with `mercury-ctl memory set "..."`; '
        "the person-memory skill says what belongs there.)"
    )


def build_system_prompt(
    inp: AgentInput,
    *,
    profile_text: str,
    skills: list[Skill],
    space_dir: Path,
    now: datetime | None = None,
    tools_note: str | None = None,
) -> str:
    """The system prompt: profile, then this run's facts, caller, attachments, preferences,
    the space's MEMORY.md (read from `space_dir`), skills index."""
    sections = [profile_text.strip()]

    run = [
        f"- Chat platform: {inp.platform or 'unknown'}; your reply is posted there as a chat "
        "message, so keep formatting simple.",
        f"- Workspace: {space_dir} (the space's own directory; it persists between messages). "
        f"Files people send are in {INBOX}/; files you send back go to {OUTBOX}/.",
    ]
    if tools_note:
        run.append(f"- {tools_note}")
    if now is not None:
        run.append(f"- Current time: {now.isoformat(timespec='seconds')}")
    sections.append("## This conversation\n" + "\n".join(run))

    if inp.caller is not None:
        who = inp.caller.name or inp.caller.id
        sections.append(
            "## Who is asking\n"
            f"{who} (role: {inp.caller.role}, id: {inp.caller.id}). Only admins may change "
            "the space's settings; treat requests to act beyond the caller's role accordingly."
        )

    if inp.person_note and inp.person_note.strip():
        sections.append(person_note_section(inp))

    if inp.attachments:
        listed = "\n".join(f"- {a}" for a in inp.attachments)
        sections.append(
            "## Attachments of this message\n"
            f"{listed}\nRead or process them with your tools when they matter to the request."
        )

    if inp.preferences:
        prefs = "\n".join(f"- {k}: {_format_value(v)}" for k, v in sorted(inp.preferences.items()))
        sections.append(
            f"## Preferences of this space\nFollow these unless asked otherwise:\n{prefs}"
        )

    cap = inp.agent.memory_max_chars
    if cap > 0:  # 0: the operator keeps MEMORY.md out of the prompt
        sections.append(memory_section(read_memory(space_dir, cap), cap, space_dir))

    if skills:
        index = "\n".join(f"- {s.name}: {s.description} ({s.path})" for s in skills)
        sections.append(
            "## Skills\n"
            "Skills are instructions for particular tasks. When a task matches one, read its "
            f"full file with read_file before you start.\n{index}"
        )
    return "\n\n".join(s for s in sections if s) + "\n"


# --------------------------------------------------------------------------- messages


def _author(m: HistoryMessage) -> str:
    return m.author_name or m.author_id or "someone"


def _with_attachments(text: str, attachments: list[str]) -> str:
    if not attachments:
        return text
    return f"{text}\n[attachments: {', '.join(attachments)}]".strip()


def _user_line(author: str, text: str, attachments: list[str]) -> str:
    body = text if text.strip() else "(no text)"
    return _with_attachments(f"{author}: {body}", attachments)


def build_messages(inp: AgentInput) -> list[Message]:
    """The model's message list: history, then the message to answer (always last, user)."""
    history = list(inp.messages)
    caller_name = (inp.caller.name or inp.caller.id) if inp.caller else "user"
    # The host may include the triggering message in the history too; say it once.
    if history and not history[-1].is_bot and history[-1].text == inp.prompt:
        last = history[-1]
        if inp.caller is None or last.author_id in ("", inp.caller.id):
            history.pop()

    turns: list[tuple[str, str]] = []
    for m in history:
        if m.is_bot:
            if m.text.strip():
                turns.append(("assistant", _with_attachments(m.text, m.attachments)))
        else:
            turns.append(("user", _user_line(_author(m), m.text, m.attachments)))
    prompt = inp.prompt if inp.prompt.strip() else "(no text; see the attachments)"
    turns.append(("user", _user_line(caller_name, prompt, inp.attachments)))

    # Providers want a conversation that starts with the user and alternates.
    if turns[0][0] == "assistant":
        turns.insert(0, ("user", "(earlier messages in this chat follow)"))
    messages: list[Message] = []
    for role, text in turns:
        if messages and messages[-1].role == role:
            messages[-1].content.append(TextBlock(text))
        else:
            messages.append(Message(role, [TextBlock(text)]))  # type: ignore[arg-type]
    return messages


def render_transcript(system: str, messages: list[Message]) -> str:
    """One text prompt for agent CLIs: the system prompt, the history, the message."""
    *earlier, last = messages
    parts = [system.strip()]
    if earlier:
        lines = []
        for m in earlier:
            text = m.text()
            lines.append(f"(you): {text}" if m.role == "assistant" else text)
        parts.append("## Conversation so far\n" + "\n".join(lines))
    parts.append("## Message to answer\n" + last.text())
    return "\n\n".join(parts) + "\n"
