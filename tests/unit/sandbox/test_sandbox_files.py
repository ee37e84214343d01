"""The host's side of a run's files, on a real filesystem (no container): the io dir,
result.json parsing, copying outputs, writing into a space, and who owns what."""

from __future__ import annotations

import json
import os
import stat
from pathlib import Path
from typing import Any

import pytest

from mercury.config import AUTO_CONTAINER_ID, Config, DiskConfig
from mercury.sandbox.identity import (
    ContainerIdentity,
    IdentityError,
    host_owner_of,
    resolve_identity,
)
from mercury.sandbox.iodir import (
    MAX_LISTED_FILES,
    MAX_RESULT_BYTES,
    MAX_TOOL_RECORDS,
    MAX_TOOL_TEXT_CHARS,
    create_io_dir,
    json_depth_over,
    parse_result,
    read_result,
    result_present,
)
from mercury.sandbox.outputs import (
    collect_outputs,
    display_name,
    outbox_parts,
    outputs_root,
    remove_outputs,
)
from mercury.sandbox.spaces import SpaceStore

ME = ContainerIdentity(os.geteuid(), os.getegid())


# --------------------------------------------------------------------------- identity


@pytest.mark.parametrize(
    ("setting", "euid", "egid", "expected"),
    [
        ("auto", 0, 0, (AUTO_CONTAINER_ID, AUTO_CONTAINER_ID)),
        ("auto", 1001, 1002, (1001, 1002)),  # no root: Mercury's own ids
        ("3000:3001", 0, 0, (3000, 3001)),
        ("3000", 0, 0, (3000, 3000)),
        ("1001:50", 1001, 1002, (1001, 50)),  # its own uid is fine without root
    ],
)
def test_resolve_identity(setting: str, euid: int, egid: int, expected: tuple[int, int]) -> None:
    ident = resolve_identity(setting, euid, egid)
    assert (ident.uid, ident.gid) == expected
    assert ident.user == f"{expected[0]}:{expected[1]}"


def test_an_id_mercury_cannot_hand_files_to_is_refused_with_the_fix() -> None:
    with pytest.raises(IdentityError, match="needs Mercury to run as root"):
        resolve_identity("3000:3000", 1001, 1001)
    with pytest.raises(IdentityError, match="never run as root"):
        resolve_identity("0:0", 0, 0)


def test_host_owner_of_names_accounts_and_subordinate_ranges(tmp_path: Path) -> None:
    root_name = __import__("pwd").getpwuid(0).pw_name
    if os.geteuid() != 0:
        assert host_owner_of(ContainerIdentity(0, 0)) == f"uid 0 is the host account {root_name!r}"
    (tmp_path / "subuid").write_text(f"alice:{AUTO_CONTAINER_ID - 10}:65536\n")
    auto = ContainerIdentity(AUTO_CONTAINER_ID, AUTO_CONTAINER_ID)
    found = host_owner_of(auto, etc=tmp_path)
    assert found is not None and "alice's subordinate range" in found
    (tmp_path / "subuid").write_text("alice:100000:65536\n")
    assert host_owner_of(auto, etc=tmp_path) is None


# --------------------------------------------------------------------------- io dir


def test_the_io_dir_and_input_json_are_the_containers_alone(tmp_path: Path) -> None:
    ident = ContainerIdentity(AUTO_CONTAINER_ID, AUTO_CONTAINER_ID) if os.geteuid() == 0 else ME
    io = create_io_dir(tmp_path, "r1", {"prompt": "héllo", "api": {"token": "t"}}, ident)
    assert json.loads((io / "input.json").read_text("utf-8"))["prompt"] == "héllo"
    for path, mode in ((io, 0o700), (io / "input.json", 0o600), (tmp_path / "io", 0o700)):
        st = path.stat()
        assert stat.S_IMODE(st.st_mode) == mode, path
    for path in (io, io / "input.json"):
        assert (path.stat().st_uid, path.stat().st_gid) == (ident.uid, ident.gid)
    assert not result_present(io)
    with pytest.raises(FileExistsError):
        create_io_dir(tmp_path, "r1", {}, ident)
    assert create_io_dir(tmp_path, "r1", {"a": 1}, ident, replace=True) == io
    with pytest.raises(ValueError, match="run id"):
        create_io_dir(tmp_path, "../x", {}, ident)


# --------------------------------------------------------------------------- result.json


def write(io: Path, data: Any) -> None:
    (io / "result.json").write_text(data if isinstance(data, str) else json.dumps(data))


def test_result_ok_error_and_malformed(tmp_path: Path) -> None:
    io = tmp_path
    assert read_result(io) is None
    write(io, {"ok": True, "reply": "hi", "usage": {"input_tokens": 1}, "files": ["outbox/a"]})
    res = read_result(io)
    assert res is not None and res.problem is None
    assert (res.ok, res.reply, res.usage, res.files) == (
        True,
        "hi",
        {"input_tokens": 1},
        ["outbox/a"],
    )
    write(io, {"ok": False, "error": "no model answered"})
    res = read_result(io)
    assert res is not None and (res.ok, res.error) == (False, "no model answered")
    for bad, why in [
        ('{"ok": tru', "not valid JSON"),
        ("[1, 2]", "JSON object"),
        ('{"reply": "x"}', '"ok"'),
        ('{"ok": true, "reply": 5}', '"reply"'),
        ('{"ok": true, "files": "outbox/x"}', '"files"'),
        ("", "not valid JSON"),
        ('{"ok": true, "x": ' + "[" * 40 + "]" * 40 + "}", "nests deeper"),
    ]:
        write(io, bad)
        res = read_result(io)
        assert res is not None and res.problem is not None, bad
        assert "result.json" in res.problem and why in res.problem, (bad, res.problem)


def test_a_result_nested_beyond_the_parsers_recursion_is_a_problem_not_a_crash() -> None:
    raw = b'{"ok": true, "d": ' + b"[" * 500_000 + b"]" * 500_000 + b"}"
    res = parse_result(raw)
    assert res.problem is not None and "nests deeper" in res.problem


@pytest.mark.parametrize(
    ("text", "limit", "over"),
    [
        ("{}", 1, False),
        ('{"a": [[]]}', 3, False),
        ('{"a": [[]]}', 2, True),
        ('{"a": "[[[[[[[["}', 2, False),  # brackets inside strings do not count
        ('{"a": "\\"[[[[[["}', 2, False),  # nor after an escaped quote
        ('[{"b": [{}]}]', 4, False),
        ('[{"b": [{}]}]', 3, True),
    ],
)
def test_json_depth_over(text: str, limit: int, over: bool) -> None:
    assert json_depth_over(text.encode(), limit) is over


def test_a_huge_files_list_keeps_the_reply_and_is_cut(tmp_path: Path) -> None:
    files = [f"outbox/f{i}" for i in range(MAX_LISTED_FILES * 3)]
    res = parse_result(json.dumps({"ok": True, "reply": "hi", "files": files}).encode())
    assert res.problem is None and res.reply == "hi"
    assert res.files == files[:MAX_LISTED_FILES]


def test_tool_records_are_checked_cut_and_never_lose_the_reply() -> None:
    good = {
        "name": "notes__add_note",
        "ok": True,
        "ms": 12,
        "input": '{"text": "x"}',
        "output": "ok",
    }
    tools: list[Any] = [
        good,
        {"name": "bash", "ok": False, "ms": 3.7, "input": "i" * 5000, "output": "o\0k" * 1000},
        {"name": "n" * 500, "ok": True, "ms": -5, "input": 7, "output": None},
        {"name": "x", "ok": True, "ms": True},  # a boolean is no duration
        {"name": "y", "ok": True, "ms": 1e300},
        {"name": "", "ok": True},  # no name: dropped
        {"name": 5, "ok": True},
        {"name": "z", "ok": "yes"},  # ok must be a boolean
        "bash",
        None,
    ]
    res = parse_result(json.dumps({"ok": True, "reply": "hi", "tools": tools}).encode())
    assert res.problem is None and res.reply == "hi"
    assert res.tools[0] == good
    second = res.tools[1]
    assert (second["ok"], second["ms"], len(second["input"])) == (False, 3, MAX_TOOL_TEXT_CHARS)
    assert "\0" not in second["output"] and len(second["output"]) <= MAX_TOOL_TEXT_CHARS
    third = res.tools[2]
    assert (len(third["name"]), third["ms"], third["input"], third["output"]) == (128, 0, "", "")
    assert [t["ms"] for t in res.tools[3:]] == [0, 2**31 - 1]
    assert len(res.tools) == 5

    many = [{**good, "ms": i} for i in range(MAX_TOOL_RECORDS * 2)]
    res = parse_result(json.dumps({"ok": True, "reply": "hi", "tools": many}).encode())
    assert [t["ms"] for t in res.tools] == list(range(MAX_TOOL_RECORDS))
    # A failed run's calls are kept too; a "tools" that is not a list is ignored.
    res = parse_result(json.dumps({"ok": False, "error": "max turns", "tools": [good]}).encode())
    assert (res.ok, res.tools) == (False, [good])
    for junk in ({"a": 1}, "bash", 5, None):
        res = parse_result(json.dumps({"ok": True, "reply": "hi", "tools": junk}).encode())
        assert (res.problem, res.reply, res.tools) == (None, "hi", [])


def test_result_symlink_fifo_and_huge_file_are_not_read(tmp_path: Path) -> None:
    io = tmp_path / "io"
    io.mkdir()
    host_file = tmp_path / "host-secret.json"
    host_file.write_text(json.dumps({"ok": True, "reply": "host secret"}))
    (io / "result.json").symlink_to(host_file)
    res = read_result(io)
    assert res is not None and res.problem is not None and "host secret" not in str(res)
    (io / "result.json").unlink()
    os.mkfifo(io / "result.json")
    res = read_result(io)  # must not block
    assert res is not None and res.problem == "result.json is not a regular file"
    (io / "result.json").unlink()
    with open(io / "result.json", "wb") as fh:
        fh.truncate(MAX_RESULT_BYTES + 1)
    res = read_result(io)
    assert res is not None and res.problem is not None and "too large" in res.problem


# --------------------------------------------------------------------------- outputs


@pytest.fixture
def space(tmp_path: Path) -> Path:
    path = tmp_path / "data" / "spaces" / "s1"
    (path / "outbox" / "sub").mkdir(parents=True)
    (path / "outbox" / "a.txt").write_text("a")
    (path / "outbox" / "sub" / "b.png").write_text("b")
    (path / "notes.txt").write_text("n")
    return path


def collect(space: Path, listed: list[Any], **kw: Any) -> Any:
    limits = {"max_files": 10, "max_bytes": 1024**2, **kw}
    return collect_outputs(space, listed, space.parents[1], "r1", **limits)


def test_outbox_parts() -> None:
    assert outbox_parts("outbox/a.txt") == ("outbox", "a.txt")
    assert outbox_parts("/space/outbox/sub/b") == ("outbox", "sub", "b")
    assert outbox_parts("outbox/./x") == ("outbox", "x")  # the same file
    for bad in ("notes.txt", "outbox", "/etc/passwd", "outbox/../x", 7, "", None):
        assert outbox_parts(bad) is None, bad


def test_outputs_are_copied_into_private_host_storage(space: Path) -> None:
    out = collect(space, ["outbox/a.txt", "/space/outbox/sub/b.png"])
    assert [(f.name, f.size) for f in out.files] == [("a.txt", 1), ("b.png", 1)]
    assert out.dropped == []
    root = outputs_root(space.parents[1])
    for f in out.files:
        assert f.path.parent == root / "r1"
        assert stat.S_IMODE(f.path.stat().st_mode) == 0o600
    assert stat.S_IMODE(root.stat().st_mode) == 0o700
    # The copy is independent of the space: changing the original changes nothing.
    (space / "outbox" / "a.txt").write_text("changed")
    assert out.files[0].path.read_text() == "a"
    remove_outputs(space.parents[1], "r1")
    assert not (root / "r1").exists()


def test_links_anywhere_on_the_path_are_never_followed(space: Path, tmp_path: Path) -> None:
    secret = tmp_path / "host.txt"
    secret.write_text("host secret")
    (space / "outbox" / "link.txt").symlink_to(secret)
    (space / "outbox" / "dirlink").symlink_to(tmp_path)
    os.mkfifo(space / "outbox" / "pipe")
    out = collect(
        space,
        [
            "outbox/link.txt",
            "outbox/dirlink/host.txt",
            "outbox/pipe",
            "outbox/missing",
            "notes.txt",
        ],
    )
    assert out.files == []
    assert [d.why for d in out.dropped] == [
        "missing, or not a regular file",
        "missing, or not a regular file",
        "not a regular file",
        "missing, or not a regular file",
        "not a file in /space/outbox",
    ]


def test_outputs_are_capped_and_counted_once(space: Path) -> None:
    for i in range(5):
        (space / "outbox" / f"{i}.bin").write_bytes(b"x" * 100)
    listed = [f"outbox/{i}.bin" for i in range(5)]
    out = collect(space, listed, max_files=3)
    assert [f.name for f in out.files] == ["0.bin", "1.bin", "2.bin"]
    assert [(d.listed, d.why) for d in out.dropped] == [("2 more", "more than 3 files")]
    remove_outputs(space.parents[1], "r1")
    out = collect(space, listed, max_bytes=250)
    assert len(out.files) == 2 and {d.why for d in out.dropped} == {"too large to send"}
    remove_outputs(space.parents[1], "r1")
    out = collect(space, ["outbox/0.bin"] * 4)  # one file listed four times
    assert len(out.files) == 1 and out.dropped == []


def test_a_sparse_file_is_judged_by_its_size_and_never_copied(space: Path) -> None:
    with open(space / "outbox" / "huge", "wb") as fh:
        fh.truncate(50 * 1024**3)
    out = collect(space, ["outbox/huge"] * 3)
    assert out.files == []
    assert [d.why for d in out.dropped] == ["too large to send"] * 3
    assert not (outputs_root(space.parents[1]) / "r1").exists() or not any(
        (outputs_root(space.parents[1]) / "r1").iterdir()
    )


def test_display_names_are_one_plain_component() -> None:
    assert display_name("report.pdf") == "report.pdf"
    assert display_name("a\nb\x00c") == "a_b_c"
    assert display_name("..") == "file"


# --------------------------------------------------------------------------- spaces


@pytest.fixture
def store(tmp_path: Path) -> SpaceStore:
    config = Config(data_dir=tmp_path / "data", disk=DiskConfig(space_limit="watch"))
    ident = ContainerIdentity(AUTO_CONTAINER_ID, AUTO_CONTAINER_ID) if os.geteuid() == 0 else ME
    return SpaceStore(config, ident)


def test_a_new_space_is_made_whole_for_the_containers_uid(store: SpaceStore) -> None:
    info = store.ensure("s1", "coding")
    assert info.limit == "watch" and info.path == store.path("s1")
    ident = store.identity
    for sub in ("", "inbox", "outbox", "MEMORY.md"):
        st = (info.path / sub).lstat()
        assert (st.st_uid, st.st_gid) == (ident.uid, ident.gid), sub
        assert not st.st_mode & 0o007, sub  # nothing for other users
    assert "Profile: coding" in (info.path / "MEMORY.md").read_text()
    assert stat.S_IMODE(info.path.parent.stat().st_mode) == 0o700
    # Later calls keep what the agent did with MEMORY.md, and bring back the folders.
    (info.path / "MEMORY.md").unlink()
    (info.path / "outbox").rmdir()
    store.ensure("s1")
    assert not (info.path / "MEMORY.md").exists()
    assert (info.path / "outbox").is_dir()


def test_uploads_never_follow_a_planted_link(store: SpaceStore, tmp_path: Path) -> None:
    victim = tmp_path / "victim"
    victim.write_text("precious")
    root = store.ensure("s1").path
    (root / "inbox" / "00-a.txt").symlink_to(victim)
    assert store.save_inbox_file("s1", "00-a.txt", b"upload") == "inbox/00-a-1.txt"
    assert victim.read_text() == "precious"
    assert (root / "inbox" / "00-a-1.txt").read_bytes() == b"upload"
    st = (root / "inbox" / "00-a-1.txt").lstat()
    assert (st.st_uid, st.st_gid) == (store.identity.uid, store.identity.gid)
    # The inbox itself replaced by a link to a host folder: the link goes, not the folder.
    (root / "inbox").rename(root / "old-inbox")
    (root / "inbox").symlink_to(tmp_path)
    assert store.save_inbox_file("s1", "b.txt", b"two") == "inbox/b.txt"
    assert not (tmp_path / "b.txt").exists()
    assert (root / "inbox").is_dir() and not (root / "inbox").is_symlink()
    # A file where the inbox belongs is moved aside, not written into or deleted.
    (root / "inbox" / "b.txt").unlink()
    (root / "inbox").rmdir()
    (root / "inbox").write_text("agent's file")
    assert store.save_inbox_file("s1", "c.txt", b"three") == "inbox/c.txt"
    assert [p.read_text() for p in root.glob("inbox.moved-*")] == ["agent's file"]


@pytest.mark.parametrize("name", ["", "a/b", "..", ".", "x\x00y"])
def test_inbox_names_must_be_one_component(store: SpaceStore, name: str) -> None:
    with pytest.raises(ValueError):
        store.save_inbox_file("s1", name, b"x")


def test_measure_counts_blocks_without_following_links(store: SpaceStore, tmp_path: Path) -> None:
    root = store.ensure("s1").path
    base = store.measure("s1")
    (root / "a" / "b").mkdir(parents=True)
    (root / "a" / "b" / "data.bin").write_bytes(os.urandom(256 * 1024))  # nested: counted
    (root / "big-link").symlink_to(tmp_path)  # its target's size does not count
    with open(root / "sparse", "wb") as fh:
        fh.truncate(10 * 1024**3)  # takes no disk
    used = store.measure("s1")
    assert 256 * 1024 <= used - base < 400 * 1024
    assert store.measure("s1", stop_after=1) > 1  # stops early once over
