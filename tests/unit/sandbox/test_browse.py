"""The space-folder browser's rules (sandbox/browse.py) on a real temporary folder."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from mercury.sandbox.browse import BrowseError, list_folder, open_file, split_path


@pytest.mark.parametrize(
    ("given", "expected"),
    [
        ("", ()),
        ("/", ()),
        ("inbox", ("inbox",)),
        ("/inbox/a.txt/", ("inbox", "a.txt")),
        ("..", None),
        ("inbox/../..", None),
        ("./x", None),
        ("a//b", None),
        ("a\\b", None),
        ("a\x00b", None),
        ("/".join(["d"] * 33), None),
    ],
)
def test_split_path(given: str, expected: tuple[str, ...] | None) -> None:
    assert split_path(given) == expected


def test_listing_sorts_folders_first_and_caps_the_count(tmp_path: Path) -> None:
    (tmp_path / "b-dir").mkdir()
    for name in ("c.txt", "A.txt", "z.txt"):
        (tmp_path / name).write_text(name)
    os.symlink("/etc", tmp_path / "a-link")
    listing = list_folder(tmp_path, ())
    assert [(e.name, e.is_dir) for e in listing.entries] == [
        ("b-dir", True),
        ("A.txt", False),
        ("c.txt", False),
        ("z.txt", False),
    ]
    assert listing.hidden == 1 and not listing.truncated
    assert listing.entries[1].size == len("A.txt")
    capped = list_folder(tmp_path, (), limit=2)
    assert [e.name for e in capped.entries] == ["b-dir", "A.txt"] and capped.truncated


def test_no_link_is_followed_on_the_way(tmp_path: Path) -> None:
    outside = tmp_path / "outside"
    outside.mkdir()
    (outside / "secret").write_text("host secret")
    space = tmp_path / "space"
    space.mkdir()
    os.symlink(outside, space / "dir")
    os.symlink(outside / "secret", space / "file")
    with pytest.raises(BrowseError):
        list_folder(space, ("dir",))
    with pytest.raises(BrowseError):
        open_file(space, ("dir", "secret"))
    with pytest.raises(BrowseError):
        open_file(space, ("file",))
    os.symlink(outside, tmp_path / "space-link")
    with pytest.raises(BrowseError):  # the space folder itself swapped for a link
        list_folder(tmp_path / "space-link", ())


def test_open_file_reads_a_regular_file_only(tmp_path: Path) -> None:
    (tmp_path / "f.bin").write_bytes(b"\x00\x01data")
    (tmp_path / "d").mkdir()
    os.mkfifo(tmp_path / "fifo")
    with open_file(tmp_path, ("f.bin",)) as opened:
        assert (opened.name, opened.size) == ("f.bin", 6)
        assert opened.read() == b"\x00\x01data"
    for parts in [("d",), ("fifo",), ("missing",), ()]:
        with pytest.raises(BrowseError):
            open_file(tmp_path, parts)
