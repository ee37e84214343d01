"""The built-in tools: path confinement above all, then each tool's behaviour."""

from __future__ import annotations

import os
import time
from pathlib import Path
from typing import Any

import pytest
from mercury_agent.tools import (
    TOOLS,
    ToolContext,
    ToolError,
    ToolOutcome,
    resolve_path,
    run_tool,
    truncate_output,
)

SECRET = "host secret: do not leak"


@pytest.fixture
def ctx(tmp_path: Path) -> ToolContext:
    """A space, a tmp dir, and an outside dir with a secret that must stay unreachable."""
    space, tmp, outside = tmp_path / "space", tmp_path / "tmp", tmp_path / "outside"
    for d in (space, tmp, outside):
        d.mkdir()
    (outside / "secret.txt").write_text(SECRET)
    (space / "notes.txt").write_text("hello\nworld\n")
    return ToolContext(space_dir=space, tmp_dir=tmp, bash_timeout_s=20)


def outside(ctx: ToolContext) -> Path:
    return ctx.space_dir.parent / "outside"


async def call(ctx: ToolContext, tool: str, **args: Any) -> ToolOutcome:
    return await run_tool(ctx, tool, args)


# ------------------------------------------------------------------ confinement


def test_relative_paths_are_inside_the_space(ctx: ToolContext) -> None:
    assert resolve_path(ctx, "notes.txt") == ctx.space_real / "notes.txt"
    assert resolve_path(ctx, "new/dir/file.txt") == ctx.space_real / "new/dir/file.txt"
    assert resolve_path(ctx, "sub/../notes.txt") == ctx.space_real / "notes.txt"
    assert resolve_path(ctx, ".") == ctx.space_real


def test_absolute_paths_inside_the_space_and_tmp_are_allowed(ctx: ToolContext) -> None:
    assert resolve_path(ctx, str(ctx.space_dir / "notes.txt")) == ctx.space_real / "notes.txt"
    assert resolve_path(ctx, str(ctx.tmp_dir / "scratch.txt")) == ctx.tmp_real / "scratch.txt"


def test_the_container_space_path_maps_to_the_space_dir(ctx: ToolContext) -> None:
    # The prompt says /space; outside a container the space lives elsewhere.
    assert resolve_path(ctx, "/space/notes.txt") == ctx.space_real / "notes.txt"
    assert resolve_path(ctx, "/space") == ctx.space_real


@pytest.mark.parametrize(
    "path",
    [
        "../outside/secret.txt",
        "../../../../../../etc/passwd",
        "sub/../../outside/secret.txt",
        "/etc/passwd",
        "/space/../etc/passwd",
        "/spaces-sibling/x",
    ],
)
def test_traversal_and_outside_paths_are_refused(ctx: ToolContext, path: str) -> None:
    with pytest.raises(ToolError, match="refused"):
        resolve_path(ctx, path)


def test_absolute_path_to_a_sibling_dir_is_refused(ctx: ToolContext) -> None:
    with pytest.raises(ToolError, match="outside the space"):
        resolve_path(ctx, str(outside(ctx) / "secret.txt"))


def test_a_symlink_pointing_outside_is_refused(ctx: ToolContext) -> None:
    (ctx.space_dir / "link.txt").symlink_to(outside(ctx) / "secret.txt")
    with pytest.raises(ToolError, match="symlink"):
        resolve_path(ctx, "link.txt")


def test_a_symlinked_parent_dir_is_refused(ctx: ToolContext) -> None:
    (ctx.space_dir / "linkdir").symlink_to(outside(ctx))
    with pytest.raises(ToolError, match="symlink"):
        resolve_path(ctx, "linkdir/secret.txt")
    with pytest.raises(ToolError, match="symlink"):
        resolve_path(ctx, "linkdir/new-file.txt")  # not even to create a file


def test_a_dangling_symlink_to_outside_is_refused(ctx: ToolContext) -> None:
    (ctx.space_dir / "dangling").symlink_to(outside(ctx) / "not-yet.txt")
    with pytest.raises(ToolError, match="symlink"):
        resolve_path(ctx, "dangling")


def test_a_symlink_inside_the_space_is_followed(ctx: ToolContext) -> None:
    (ctx.space_dir / "alias.txt").symlink_to(ctx.space_dir / "notes.txt")
    assert resolve_path(ctx, "alias.txt") == ctx.space_real / "notes.txt"


def test_a_symlink_into_tmp_is_allowed(ctx: ToolContext) -> None:
    (ctx.tmp_dir / "t.txt").write_text("t")
    (ctx.space_dir / "to-tmp").symlink_to(ctx.tmp_dir / "t.txt")
    assert resolve_path(ctx, "to-tmp") == ctx.tmp_real / "t.txt"


@pytest.mark.parametrize("path", ["", "   ", "a\0b", None, 5])
def test_unusable_paths_are_refused(ctx: ToolContext, path: Any) -> None:
    with pytest.raises(ToolError):
        resolve_path(ctx, path)


async def test_file_tools_refuse_escapes_with_a_tool_error(ctx: ToolContext) -> None:
    (ctx.space_dir / "link.txt").symlink_to(outside(ctx) / "secret.txt")
    (ctx.space_dir / "linkdir").symlink_to(outside(ctx))
    attempts = [
        ("read_file", {"path": "link.txt"}),
        ("read_file", {"path": "../outside/secret.txt"}),
        ("write_file", {"path": "linkdir/planted.txt", "content": "x"}),
        ("write_file", {"path": "/etc/mercury-test-planted", "content": "x"}),
        ("edit_file", {"path": "link.txt", "old_text": "host", "new_text": "HOST"}),
        ("list_files", {"path": "linkdir"}),
        ("send_file", {"path": "link.txt"}),
        ("send_file", {"path": str(outside(ctx) / "secret.txt")}),
    ]
    for name, args in attempts:
        outcome = await run_tool(ctx, name, args)
        assert outcome.is_error, (name, args, outcome)
        assert "refused" in outcome.content
        assert SECRET not in outcome.content
    assert sorted(p.name for p in outside(ctx).iterdir()) == ["secret.txt"]
    assert (outside(ctx) / "secret.txt").read_text() == SECRET
    assert not Path("/etc/mercury-test-planted").exists()
    assert ctx.files == []


async def test_read_only_roots_can_be_read_but_not_written(
    ctx: ToolContext, tmp_path: Path
) -> None:
    skills = tmp_path / "skills"
    skills.mkdir()
    (skills / "SKILL.md").write_text("# A skill")
    ro = ToolContext(space_dir=ctx.space_dir, tmp_dir=ctx.tmp_dir, read_only=(skills,))
    assert (await call(ro, "read_file", path=str(skills / "SKILL.md"))).content == "# A skill"
    assert not (await call(ro, "list_files", path=str(skills))).is_error
    written = await call(ro, "write_file", path=str(skills / "SKILL.md"), content="x")
    assert written.is_error and "read-only" in written.content
    edited = await call(ro, "edit_file", path=str(skills / "SKILL.md"), old_text="A", new_text="B")
    assert edited.is_error
    assert (skills / "SKILL.md").read_text() == "# A skill"
    # Without the read-only root the same file is out of bounds.
    assert (await call(ctx, "read_file", path=str(skills / "SKILL.md"))).is_error


# ------------------------------------------------------------------ files


async def test_write_then_read(ctx: ToolContext) -> None:
    out = await call(ctx, "write_file", path="deep/er/new.txt", content="é line 1\nline 2\n")
    assert not out.is_error
    assert "deep/er/new.txt" in out.content
    assert (ctx.space_dir / "deep/er/new.txt").read_text(encoding="utf-8") == "é line 1\nline 2\n"
    read = await call(ctx, "read_file", path="deep/er/new.txt")
    assert read == ToolOutcome("é line 1\nline 2\n")


async def test_read_with_offset_and_limit(ctx: ToolContext) -> None:
    (ctx.space_dir / "n.txt").write_text("".join(f"line {i}\n" for i in range(1, 11)))
    out = await call(ctx, "read_file", path="n.txt", offset=3, limit=2)
    assert out.content.startswith("line 3\nline 4\n")
    assert "[lines 3-4 of 10; continue with offset=5]" in out.content
    tail = await call(ctx, "read_file", path="n.txt", offset=9)
    assert tail.content.startswith("line 9\nline 10\n")
    assert "[lines 9-10 of 10]" in tail.content
    past = await call(ctx, "read_file", path="n.txt", offset=50)
    assert past.is_error and "past the end" in past.content


async def test_read_refuses_directories_binaries_and_missing_files(ctx: ToolContext) -> None:
    (ctx.space_dir / "bin.dat").write_bytes(b"\x00\x01\x02binary")
    (ctx.space_dir / "dir").mkdir()
    for path, message in [
        ("bin.dat", "binary"),
        ("dir", "directory"),
        ("nope.txt", "does not exist"),
    ]:
        out = await call(ctx, "read_file", path=path)
        assert out.is_error and message in out.content, out


async def test_edit_replaces_exactly_one_occurrence(ctx: ToolContext) -> None:
    (ctx.space_dir / "code.py").write_text("a = 1\nb = 2\n")
    out = await call(ctx, "edit_file", path="code.py", old_text="b = 2", new_text="b = 3")
    assert out == ToolOutcome("replaced 1 occurrence in code.py")
    assert (ctx.space_dir / "code.py").read_text() == "a = 1\nb = 3\n"


async def test_edit_with_no_match_says_so_and_changes_nothing(ctx: ToolContext) -> None:
    (ctx.space_dir / "code.py").write_text("a = 1\n")
    out = await call(ctx, "edit_file", path="code.py", old_text="a=1", new_text="a = 2")
    assert out.is_error and "not found" in out.content
    assert (ctx.space_dir / "code.py").read_text() == "a = 1\n"


async def test_edit_with_several_matches_says_how_many(ctx: ToolContext) -> None:
    (ctx.space_dir / "code.py").write_text("x = 0\nx = 0\nx = 0\n")
    out = await call(ctx, "edit_file", path="code.py", old_text="x = 0", new_text="x = 1")
    assert out.is_error and "occurs 3 times" in out.content
    assert (ctx.space_dir / "code.py").read_text() == "x = 0\nx = 0\nx = 0\n"


async def test_edit_needs_old_text_and_an_existing_file(ctx: ToolContext) -> None:
    assert (await call(ctx, "edit_file", path="notes.txt", old_text="", new_text="x")).is_error
    missing = await call(ctx, "edit_file", path="nope.txt", old_text="a", new_text="b")
    assert missing.is_error and "does not exist" in missing.content


async def test_list_files(ctx: ToolContext) -> None:
    (ctx.space_dir / "sub").mkdir()
    (ctx.space_dir / "sub" / "inner.txt").write_text("12345")
    (ctx.space_dir / "escape").symlink_to(outside(ctx))
    flat = await call(ctx, "list_files")
    lines = flat.content.splitlines()
    assert lines[0] == ".:"
    assert "sub/" in lines
    assert "notes.txt  (12 bytes)" in lines
    assert f"escape -> {outside(ctx)}" in lines  # shown, never followed
    deep = await call(ctx, "list_files", path=".", recursive=True)
    assert "sub/inner.txt  (5 bytes)" in deep.content.splitlines()
    assert "secret.txt" not in deep.content


async def test_send_file_copies_into_the_outbox_and_records_it(ctx: ToolContext) -> None:
    out = await call(ctx, "send_file", path="notes.txt")
    assert not out.is_error
    assert "outbox/notes.txt" in out.content
    assert (ctx.space_dir / "outbox" / "notes.txt").read_text() == "hello\nworld\n"
    assert (ctx.space_dir / "notes.txt").exists()  # a copy by default
    await call(ctx, "send_file", path="notes.txt")
    assert ctx.files == ["outbox/notes.txt"]  # recorded once


async def test_send_file_can_move_and_rename(ctx: ToolContext) -> None:
    (ctx.tmp_dir / "chart.png").write_bytes(b"\x89PNG")
    out = await call(
        ctx, "send_file", path=str(ctx.tmp_dir / "chart.png"), name="q3.png", move=True
    )
    assert not out.is_error, out
    assert (ctx.space_dir / "outbox" / "q3.png").read_bytes() == b"\x89PNG"
    assert not (ctx.tmp_dir / "chart.png").exists()
    assert ctx.files == ["outbox/q3.png"]


async def test_send_file_of_a_file_already_in_the_outbox(ctx: ToolContext) -> None:
    (ctx.space_dir / "outbox").mkdir()
    (ctx.space_dir / "outbox" / "r.csv").write_text("a,b\n")
    assert not (await call(ctx, "send_file", path="outbox/r.csv")).is_error
    assert ctx.files == ["outbox/r.csv"]
    assert (ctx.space_dir / "outbox" / "r.csv").read_text() == "a,b\n"


@pytest.mark.parametrize("name", ["../x.txt", "a/b.txt", "..", "."])
async def test_send_file_names_are_plain(ctx: ToolContext, name: str) -> None:
    out = await call(ctx, "send_file", path="notes.txt", name=name)
    assert out.is_error and "plain file name" in out.content
    assert ctx.files == []


async def test_send_file_refuses_an_outbox_symlink(ctx: ToolContext) -> None:
    (ctx.space_dir / "outbox").symlink_to(outside(ctx))
    out = await call(ctx, "send_file", path="notes.txt")
    assert out.is_error and "outbox" in out.content
    assert sorted(p.name for p in outside(ctx).iterdir()) == ["secret.txt"]


async def test_send_file_replaces_a_symlink_in_the_outbox(ctx: ToolContext) -> None:
    (ctx.space_dir / "outbox").mkdir()
    (ctx.space_dir / "outbox" / "notes.txt").symlink_to(outside(ctx) / "secret.txt")
    assert not (await call(ctx, "send_file", path="notes.txt")).is_error
    sent = ctx.space_dir / "outbox" / "notes.txt"
    assert not sent.is_symlink() and sent.read_text() == "hello\nworld\n"
    assert (outside(ctx) / "secret.txt").read_text() == SECRET


# ------------------------------------------------------------------ bash


async def test_bash_runs_in_the_space_and_reports_the_exit_code(ctx: ToolContext) -> None:
    out = await call(ctx, "bash", command="pwd; echo out; echo err >&2; exit 3")
    assert out.is_error
    lines = out.content.splitlines()
    assert lines[0] == str(ctx.space_dir)
    assert "out" in lines and "err" in lines
    assert lines[-1] == "[exit code 3]"


async def test_bash_success_without_output(ctx: ToolContext) -> None:
    out = await call(ctx, "bash", command="true")
    assert out == ToolOutcome("(no output)\n[exit code 0]")


async def test_bash_uses_the_given_environment(ctx: ToolContext) -> None:
    ctx.env = {**os.environ, "MERCURY_TEST_VALUE": "from-ctx"}
    out = await call(ctx, "bash", command="echo $MERCURY_TEST_VALUE")
    assert out.content.startswith("from-ctx")


async def test_bash_output_keeps_head_and_tail(ctx: ToolContext) -> None:
    out = await call(ctx, "bash", command="seq 1 100000")
    assert out.content.startswith("1\n2\n3\n")
    assert "bytes of output omitted" in out.content
    assert out.content.endswith("99999\n100000\n[exit code 0]")
    assert len(out.content) < 30_000


async def test_bash_timeout_kills_the_process_group(ctx: ToolContext) -> None:
    marker = ctx.space_dir / "survived"
    started = time.monotonic()
    out = await call(
        ctx, "bash", command=f"echo started; (sleep 3; touch {marker}) & sleep 30", timeout_s=1
    )
    assert time.monotonic() - started < 10
    assert out.is_error
    assert "started" in out.content
    assert "timed out after 1 s" in out.content
    time.sleep(3.5)
    assert not marker.exists()  # the background child was killed with the shell


async def test_bash_timeout_is_capped_by_the_configured_limit_and_the_budget(
    ctx: ToolContext,
) -> None:
    ctx.bash_timeout_s = 30
    ctx.remaining = lambda: 1.0
    started = time.monotonic()
    out = await call(ctx, "bash", command="sleep 20", timeout_s=25)
    assert "timed out after 1 s" in out.content
    assert time.monotonic() - started < 10


async def test_bash_does_not_wait_for_a_background_process_holding_the_pipe(
    ctx: ToolContext,
) -> None:
    started = time.monotonic()
    out = await call(ctx, "bash", command="sleep 6 & echo launched")
    assert time.monotonic() - started < 10
    assert "launched" in out.content
    assert "[exit code 0]" in out.content


def test_truncate_output() -> None:
    assert truncate_output(b"short", head=10, tail=10) == "short"
    text = truncate_output(b"A" * 10 + b"B" * 100 + b"C" * 10, head=10, tail=10)
    assert text == "A" * 10 + "\n[... 100 bytes of output omitted ...]\n" + "C" * 10
    # Invalid UTF-8 does not raise.
    assert truncate_output(b"\xff ok") == "\ufffd ok"


# ------------------------------------------------------------------ the registry


async def test_unknown_tool_and_bad_arguments_are_tool_errors(ctx: ToolContext) -> None:
    unknown = await call(ctx, "rm_rf")
    assert unknown.is_error and "unknown tool" in unknown.content and "bash" in unknown.content
    missing = await call(ctx, "write_file", path="x.txt")
    assert missing.is_error and "'content'" in missing.content
    wrong = await call(ctx, "read_file", path=["a"])
    assert wrong.is_error and "'path'" in wrong.content
    flag = await call(ctx, "list_files", recursive="yes")
    assert flag.is_error


def test_every_tool_has_a_json_schema() -> None:
    names = [t.name for t in TOOLS]
    assert names == ["bash", "read_file", "write_file", "edit_file", "list_files", "send_file"]
    for tool in TOOLS:
        assert tool.parameters["type"] == "object"
        assert tool.description
        for required in tool.parameters.get("required", []):
            assert required in tool.parameters["properties"]
