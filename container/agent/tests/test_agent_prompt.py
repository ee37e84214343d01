"""Prompt assembly: profiles, skills, the system prompt and the message list."""

from __future__ import annotations

import os
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
from mercury_agent.contract import InputError, parse_input
from mercury_agent.conversation import TextBlock
from mercury_agent.memory import HEADING as MEMORY_HEADING
from mercury_agent.memory import cut_at_line, memory_section, read_memory
from mercury_agent.prompt import (
    FALLBACK_PROFILE,
    Skill,
    build_messages,
    build_system_prompt,
    discover_skills,
    load_profile,
    load_skill,
    parse_front_matter,
    render_transcript,
)

RESOURCES = Path(__file__).resolve().parents[3] / "resources"


def make_input(**fields: Any) -> Any:
    base: dict[str, Any] = {"run_id": "r", "space_id": "s", "prompt": "what now?"}
    base.update(fields)
    return parse_input(base)


def texts(message: Any) -> list[str]:
    return [b.text for b in message.content if isinstance(b, TextBlock)]


# ------------------------------------------------------------------ profiles


@pytest.mark.parametrize("name", ["general", "coding", "research"])
def test_shipped_profiles_load(name: str) -> None:
    used, text = load_profile(RESOURCES, name)
    assert used == name
    assert text.startswith("# Mercury")
    assert "send_file" in text  # each tells the model how files go back
    assert len(text) < 4000  # concise: it is paid for on every turn


def test_unknown_or_hostile_profile_names_fall_back_to_general(tmp_path: Path) -> None:
    general = load_profile(RESOURCES, "general")[1]
    assert load_profile(RESOURCES, "no-such-profile") == ("general", general)
    assert load_profile(RESOURCES, "../../etc") == ("general", general)
    assert load_profile(RESOURCES, None) == ("general", general)
    assert load_profile(RESOURCES, " Coding ")[0] == "coding"


def test_missing_resources_use_a_minimal_prompt(tmp_path: Path) -> None:
    assert load_profile(tmp_path, "general") == ("builtin", FALLBACK_PROFILE)


# ------------------------------------------------------------------ skills


def test_front_matter_subset() -> None:
    text = (
        "---\n"
        "name: pdf-tools\n"
        'description: "Read: and write PDFs"\n'
        "license: 'MIT'\n"
        "long: >\n"
        "  folded over\n"
        "  two lines\n"
        "keep: |\n"
        "  line one\n"
        "  line two\n"
        "wrapped: starts here\n"
        "  and continues\n"
        "---\n"
        "# Body\n"
        "name: not front matter\n"
    )
    assert parse_front_matter(text) == {
        "name": "pdf-tools",
        "description": "Read: and write PDFs",
        "license": "MIT",
        "long": "folded over two lines",
        "keep": "line one\nline two",
        "wrapped": "starts here and continues",
    }


@pytest.mark.parametrize("text", ["# No front matter\n", "", "---\nunterminated: yes"])
def test_front_matter_absent_or_odd(text: str) -> None:
    data = parse_front_matter(text)
    assert data in ({}, {"unterminated": "yes"})


def test_skill_from_a_dir_or_a_file_and_without_front_matter(tmp_path: Path) -> None:
    (tmp_path / "alpha").mkdir()
    (tmp_path / "alpha" / "SKILL.md").write_text(
        "---\nname: alpha\ndescription: Does A.\n---\nbody"
    )
    (tmp_path / "beta").mkdir()
    (tmp_path / "beta" / "SKILL.md").write_text("# Beta\n\nFirst paragraph line.\nmore\n")
    a = load_skill(tmp_path / "alpha")
    assert a == Skill("alpha", "Does A.", tmp_path / "alpha" / "SKILL.md")
    assert load_skill(tmp_path / "alpha" / "SKILL.md") == a
    b = load_skill(tmp_path / "beta")
    assert b is not None and (b.name, b.description) == ("beta", "First paragraph line.")
    assert load_skill(tmp_path / "missing") is None


def test_builtin_skills_are_indexed_and_run_skills_override_by_name(tmp_path: Path) -> None:
    builtin = discover_skills(RESOURCES, [])
    names = [s.name for s in builtin]
    assert "files-and-outbox" in names and "chat-formatting" in names and "memory" in names
    assert all(s.description and s.path.name == "SKILL.md" for s in builtin)

    (tmp_path / "ext").mkdir()
    (tmp_path / "ext" / "SKILL.md").write_text(
        "---\nname: chat-formatting\ndescription: Extension's own rules.\n---\n"
    )
    merged = discover_skills(RESOURCES, [str(tmp_path / "ext"), str(tmp_path / "nope")])
    formatting = [s for s in merged if s.name == "chat-formatting"]
    assert len(formatting) == 1 and formatting[0].description == "Extension's own rules."
    assert len(merged) == len(builtin)


# ------------------------------------------------------------------ system prompt


def test_system_prompt_has_profile_run_caller_attachments_preferences_and_skills(
    tmp_path: Path,
) -> None:
    inp = make_input(
        platform="slack",
        caller={"id": "U1", "name": "Ada", "role": "admin"},
        attachments=["inbox/m1/report.pdf", "inbox/m1/data.csv"],
        preferences={"tone": "brief", "units": {"length": "km"}},
    )
    skills = [Skill("pdf", "Work with PDFs.", Path("/skills/pdf/SKILL.md"))]
    prompt = build_system_prompt(
        inp,
        profile_text="# Profile text",
        skills=skills,
        space_dir=Path("/space"),
        now=datetime(2026, 1, 2, 3, 4, 5, tzinfo=UTC),
    )
    assert prompt.startswith("# Profile text\n")
    assert "slack" in prompt
    assert "Workspace: /space" in prompt and "outbox/" in prompt and "inbox/" in prompt
    assert "Ada (role: admin, id: U1)" in prompt
    assert "- inbox/m1/report.pdf\n- inbox/m1/data.csv" in prompt
    assert "- tone: brief" in prompt and '- units: {"length": "km"}' in prompt
    assert "- pdf: Work with PDFs. (/skills/pdf/SKILL.md)" in prompt
    assert "read_file" in prompt  # how to get a skill's full text
    assert "2026-01-02T03:04:05+00:00" in prompt


def test_system_prompt_leaves_out_empty_sections() -> None:
    prompt = build_system_prompt(
        make_input(), profile_text="P", skills=[], space_dir=Path("/space")
    )
    for heading in ("Who is asking", "Attachments", "Preferences", "Skills"):
        assert heading not in prompt


# ------------------------------------------------------------------ the person's note


def test_the_callers_note_is_in_the_prompt_as_theirs_with_how_to_update_it() -> None:
    inp = make_input(
        caller={"id": "U1", "name": "Ada", "role": "member"},
        person_note="prefers metric units\nleads the data team\n",
    )
    prompt = build_system_prompt(inp, profile_text="P", skills=[], space_dir=Path("/space"))
    section = prompt.split("## What you remember about Ada\n", 1)[1]
    assert section.startswith("prefers metric units\nleads the data team\n(Private to Ada")
    assert 'mercury-ctl memory append "..."' in section
    # It follows who is asking, and comes before anything else of the run.
    assert prompt.index("## Who is asking") < prompt.index("## What you remember about Ada")


@pytest.mark.parametrize("note", [None, "", "   "])
def test_without_a_note_there_is_no_memory_section(note: str | None) -> None:
    fields: dict[str, Any] = {"caller": {"id": "U1", "name": "Ada"}}
    if note is not None:
        fields["person_note"] = note
    prompt = build_system_prompt(
        make_input(**fields), profile_text="P", skills=[], space_dir=Path("/space")
    )
    assert "What you remember about" not in prompt


def test_the_person_memory_skill_ships_and_names_the_commands() -> None:
    (skill,) = [s for s in discover_skills(RESOURCES, []) if s.name == "person-memory"]
    text = skill.path.read_text()
    for command in ("mercury-ctl memory append", "mercury-ctl memory set", "/memory", "/forget"):
        assert command in text


def test_a_note_must_be_text() -> None:
    with pytest.raises(InputError, match=r"^person_note: "):
        make_input(person_note=["not", "text"])


# ------------------------------------------------------------------ the space's memory


def memory_prompt(space: Path, max_chars: int | None = None) -> str:
    agent = {} if max_chars is None else {"memory_max_chars": max_chars}
    return build_system_prompt(
        make_input(agent=agent), profile_text="P", skills=[], space_dir=space
    )


def test_memory_md_is_in_the_prompt_whole_when_under_the_cap(tmp_path: Path) -> None:
    (tmp_path / "MEMORY.md").write_text("# Notes\n\n- 2026-01-02: codename BLUEBIRD\n")
    prompt = memory_prompt(tmp_path)
    assert MEMORY_HEADING in prompt
    assert "<<< MEMORY.md\n# Notes\n\n- 2026-01-02: codename BLUEBIRD\n>>> end of MEMORY.md" in (
        prompt
    )
    assert "over the cap" not in prompt and "Condense" not in prompt
    # Before the skills index: the memory skill it names is listed after it.
    skills = [Skill("memory", "Keep MEMORY.md.", Path("/skills/memory/SKILL.md"))]
    full = build_system_prompt(make_input(), profile_text="P", skills=skills, space_dir=tmp_path)
    assert full.index(MEMORY_HEADING) < full.index("## Skills")


def test_over_the_cap_the_start_is_shown_cut_at_a_line_with_the_numbers(tmp_path: Path) -> None:
    lines = [f"- fact number {i:02d}\n" for i in range(10)]  # 17 characters each
    (tmp_path / "MEMORY.md").write_text("".join(lines))
    prompt = memory_prompt(tmp_path, max_chars=60)
    assert "MEMORY.md is 170 characters, over the cap of 60" in prompt
    assert "only its first 51 characters are shown below, the rest is not shown" in prompt
    assert "Condense it now" in prompt and f"rewrite {tmp_path}/MEMORY.md shorter" in prompt
    assert "".join(lines[:3]).rstrip() + "\n>>> not shown: the rest of MEMORY.md" in prompt
    assert "fact number 03" not in prompt  # cut at a line: not half of the fourth one


def test_cut_at_line() -> None:
    assert cut_at_line("ab\ncd\nef", 100) == "ab\ncd\nef"
    assert cut_at_line("ab\ncd\nef", 5) == "ab\ncd"  # the next character ends the line
    assert cut_at_line("ab\ncd\nef", 4) == "ab\n"
    assert cut_at_line("abcdefgh", 4) == "abcd"  # one line longer than the cap: cut in it


def test_a_missing_or_empty_memory_says_so_and_invites_notes(tmp_path: Path) -> None:
    prompt = memory_prompt(tmp_path)
    assert f"{MEMORY_HEADING}\nThere is no {tmp_path}/MEMORY.md yet." in prompt
    assert "You may keep notes there" in prompt
    (tmp_path / "MEMORY.md").write_text("  \n\n")
    prompt = memory_prompt(tmp_path)
    assert f"{tmp_path}/MEMORY.md is empty." in prompt and "You may keep notes there" in prompt


def test_a_cap_of_zero_keeps_memory_out_of_the_prompt(tmp_path: Path) -> None:
    (tmp_path / "MEMORY.md").write_text("codename BLUEBIRD\n")
    prompt = memory_prompt(tmp_path, max_chars=0)
    assert "MEMORY" not in prompt and "BLUEBIRD" not in prompt


def test_a_link_out_of_the_space_is_not_followed(tmp_path: Path) -> None:
    space, outside = tmp_path / "space", tmp_path / "outside"
    space.mkdir()
    outside.mkdir()
    (outside / "secret.txt").write_text("TOP-SECRET token\n")
    (space / "MEMORY.md").symlink_to(outside / "secret.txt")
    prompt = memory_prompt(space)
    assert "TOP-SECRET" not in prompt
    assert f"{space}/MEMORY.md was not read: it is a link leading outside the space" in prompt
    # Through a linked folder too.
    (space / "MEMORY.md").unlink()
    (space / "docs").symlink_to(outside)
    (space / "MEMORY.md").symlink_to("docs/secret.txt")
    assert "TOP-SECRET" not in memory_prompt(space)
    # A link that stays inside the space is read.
    (space / "notes.md").write_text("kept in notes.md\n")
    (space / "MEMORY.md").unlink()
    (space / "MEMORY.md").symlink_to("notes.md")
    assert "<<< MEMORY.md\nkept in notes.md\n>>>" in memory_prompt(space)


def test_a_fifo_or_a_folder_is_not_read(tmp_path: Path) -> None:
    os.mkfifo(tmp_path / "MEMORY.md")  # opening it for reading would block without care
    assert "MEMORY.md was not read: it is not a regular file" in memory_prompt(tmp_path)
    (tmp_path / "MEMORY.md").unlink()
    (tmp_path / "MEMORY.md").mkdir()
    assert "MEMORY.md was not read" in memory_prompt(tmp_path)


def test_bad_utf8_is_read_with_replacement(tmp_path: Path) -> None:
    (tmp_path / "MEMORY.md").write_bytes(b"caf\xe9 at noon\n\xff\xfe still here\n")
    prompt = memory_prompt(tmp_path)
    assert "caf\ufffd at noon\n\ufffd\ufffd still here" in prompt


def test_a_huge_file_is_counted_only_so_far(tmp_path: Path) -> None:
    (tmp_path / "MEMORY.md").write_text("x\n" * 1000)
    memory = read_memory(tmp_path, 10, max_bytes=100)
    assert (memory.complete, memory.total_chars, len(memory.head)) == (False, 100, 11)
    section = memory_section(memory, 10, tmp_path)
    assert "MEMORY.md is more than 100 characters, over the cap of 10" in section
    whole = read_memory(tmp_path, 10)
    assert (whole.complete, whole.total_chars) == (True, 2000)


# ------------------------------------------------------------------ messages


def history(*items: tuple[str, str, bool]) -> list[dict[str, Any]]:
    return [
        {"id": f"m{i}", "author_id": a.lower(), "author_name": a, "text": t, "is_bot": bot}
        for i, (a, t, bot) in enumerate(items)
    ]


def test_history_becomes_roles_with_author_names_ending_with_the_prompt() -> None:
    inp = make_input(
        caller={"id": "ada", "name": "Ada"},
        prompt="and the total?",
        messages=history(
            ("Ada", "sum 2 and 3", False), ("Mercury", "5", True), ("Bob", "also 4?", False)
        ),
    )
    messages = build_messages(inp)
    assert [m.role for m in messages] == ["user", "assistant", "user"]
    assert texts(messages[0]) == ["Ada: sum 2 and 3"]
    assert texts(messages[1]) == ["5"]
    # Consecutive user turns are merged: providers want alternating roles.
    assert texts(messages[2]) == ["Bob: also 4?", "Ada: and the total?"]


def test_the_prompt_is_not_repeated_when_history_already_ends_with_it() -> None:
    inp = make_input(
        caller={"id": "ada", "name": "Ada"},
        prompt="hello",
        messages=history(("Mercury", "hi", True), ("Ada", "hello", False)),
    )
    messages = build_messages(inp)
    assert [texts(m) for m in messages] == [
        ["(earlier messages in this chat follow)"],
        ["hi"],
        ["Ada: hello"],
    ]


def test_a_conversation_never_starts_with_the_assistant() -> None:
    inp = make_input(messages=history(("Mercury", "welcome!", True)))
    messages = build_messages(inp)
    assert messages[0].role == "user"
    assert [m.role for m in messages] == ["user", "assistant", "user"]


def test_attachments_and_empty_prompts() -> None:
    inp = make_input(
        prompt="",
        caller={"id": "u", "name": "Cy"},
        attachments=["inbox/x/photo.jpg"],
        messages=[
            {
                "id": "1",
                "author_id": "z",
                "author_name": "Zed",
                "text": "",
                "attachments": ["inbox/1/a.txt"],
            }
        ],
    )
    messages = build_messages(inp)
    assert len(messages) == 1
    earlier, last = texts(messages[0])
    assert earlier == "Zed: (no text)\n[attachments: inbox/1/a.txt]"
    assert last.startswith("Cy: (no text; see the attachments)")
    assert last.endswith("[attachments: inbox/x/photo.jpg]")


def test_without_a_caller_the_prompt_is_from_user() -> None:
    messages = build_messages(make_input(prompt="ping"))
    assert [texts(m) for m in messages] == [["user: ping"]]


def test_render_transcript_for_agent_clis() -> None:
    inp = make_input(
        caller={"id": "ada", "name": "Ada"},
        prompt="next?",
        messages=history(("Ada", "first", False), ("Mercury", "reply one", True)),
    )
    text = render_transcript("SYSTEM", build_messages(inp))
    assert text.startswith("SYSTEM\n\n## Conversation so far\nAda: first\n(you): reply one")
    assert text.endswith("## Message to answer\nAda: next?\n")
