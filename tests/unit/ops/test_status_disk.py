"""`mercury status` measures the spaces, which hostile agents write: links are never
followed and FIFOs never opened, so the walk neither counts the host's files nor hangs."""

from __future__ import annotations

import os
from pathlib import Path

from mercury.config import Config
from mercury.ops.status import disk_use


def test_the_walk_counts_a_space_and_never_what_its_links_point_at(tmp_path: Path) -> None:
    data = tmp_path / "data"
    space = data / "spaces" / "s1"
    space.mkdir(parents=True)
    (space / "notes.txt").write_bytes(b"x" * 100_000)
    outside = tmp_path / "host"
    outside.mkdir()
    (outside / "big.bin").write_bytes(os.urandom(2_000_000))
    (space / "to-host").symlink_to(outside)
    (space / "to-root").symlink_to("/")
    os.mkfifo(space / "pipe")
    (data / "spaces" / "s2").symlink_to(outside)  # a "space" that is a link: not walked

    use = disk_use(Config(data_dir=data))

    assert use.complete
    assert [name for name, _ in use.largest] == ["s1"]
    assert 100_000 <= use.spaces_bytes < 1_000_000  # the file, not the linked 2 MB or /


def test_a_budget_cut_says_the_figure_is_a_lower_bound(tmp_path: Path) -> None:
    space = tmp_path / "data" / "spaces" / "s1"
    space.mkdir(parents=True)
    for i in range(50):
        (space / f"f{i}").write_text("x")
    use = disk_use(Config(data_dir=tmp_path / "data"), max_entries=10)
    assert not use.complete
