"""notes: a tiny MCP server (stdio) that keeps a notes file in the space.

Mercury's example of an extension's MCP server: the agent runtime starts it inside the
run's container (cwd = this folder, the extension's venv first on PATH) and offers its
tools to the model as `notes__add_note` and `notes__list_notes`. The notes live in the
space, so they outlast the run: /space/notes.md in a container, $MERCURY_SPACE_DIR/notes.md
outside one.

    python server.py                      # stdio, as the agent runs it
    python server.py --http 127.0.0.1:8765   # streamable HTTP on /mcp (for trying it out)
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

try:  # mcp 2.x renamed FastMCP to MCPServer
    from mcp.server.mcpserver import MCPServer as _Server
    from mcp.server.mcpserver.exceptions import ToolError
except ImportError:  # mcp 1.x
    from mcp.server.fastmcp import FastMCP as _Server  # type: ignore[no-redef]
    from mcp.server.fastmcp.exceptions import ToolError  # type: ignore[no-redef]

NOTES_NAME = "notes.md"
MAX_NOTE_CHARS = 4000

# WARNING: the server's stderr is the run's container log; one line per call is noise.
server = _Server("notes", log_level="WARNING")


def notes_file() -> Path:
    """The notes file: in the space, which persists between the runs of a chat."""
    return Path(os.environ.get("MERCURY_SPACE_DIR") or "/space") / NOTES_NAME


def _notes(path: Path) -> list[str]:
    if not path.is_file():
        return []
    return [line[2:] for line in path.read_text(encoding="utf-8").splitlines() if line[:2] == "- "]


@server.tool()
def add_note(text: str) -> str:
    """Save a short note for later (appended to notes.md in the space). One note per call."""
    note = " ".join(text.split())  # one line per note keeps the file a plain list
    if not note:
        raise ToolError("the note is empty; pass the text to remember")
    if len(note) > MAX_NOTE_CHARS:
        raise ToolError(f"the note is {len(note)} characters; keep it under {MAX_NOTE_CHARS}")
    path = notes_file()
    with path.open("a", encoding="utf-8") as fh:
        fh.write(f"- {note}\n")
    return f"Noted. {len(_notes(path))} note(s) saved in {NOTES_NAME}."


@server.tool()
def list_notes() -> str:
    """List every saved note, oldest first, numbered."""
    notes = _notes(notes_file())
    if not notes:
        return "No notes yet."
    return "\n".join(f"{i}. {note}" for i, note in enumerate(notes, 1))


def main(argv: list[str]) -> None:
    if argv[:1] == ["--http"] and len(argv) == 2:
        host, _, port = argv[1].rpartition(":")
        server.run("streamable-http", host=host or "127.0.0.1", port=int(port))
    elif not argv:
        server.run()
    else:
        sys.exit("usage: server.py [--http HOST:PORT]")


if __name__ == "__main__":
    main(sys.argv[1:])
