"""The backup manifest and the pure rules a restore enforces (mercury/core/backups.py)."""

from __future__ import annotations

import json
from datetime import UTC, datetime
from pathlib import Path

import pytest

from mercury.core.backups import (
    SchemaVerdict,
    TargetState,
    archive_name,
    count_mismatches,
    kind_mismatch_message,
    member_problem,
    non_empty_reason,
    schema_verdict,
)
from mercury.ops.manifest import (
    DatabaseInfo,
    FileEntry,
    LinkEntry,
    Manifest,
    ManifestError,
    MemberCheck,
    parse_manifest,
)

SHA = "ab" * 32


def manifest(**over: object) -> Manifest:
    m = Manifest(
        mercury_version="1.2.3",
        created_at="2027-01-01T00:00:00+00:00",
        instance="prod",
        database=DatabaseInfo("sqlite", "0005", "database/mercury.db", {"messages": 3}),
        files=[FileEntry("database/mercury.db", 10, SHA), FileEntry("spaces/a/x.txt", 2, SHA)],
        links=[LinkEntry("spaces/a/pw", "/etc/passwd")],
    )
    for key, value in over.items():
        setattr(m, key, value)
    return m


def test_manifest_round_trips() -> None:
    m = manifest()
    back = parse_manifest(m.to_bytes())
    assert back == m
    assert back.space_ids() == ["a"]


@pytest.mark.parametrize(
    ("change", "needle"),
    [
        (lambda d: d.update(format="zip"), "not a Mercury backup"),
        (lambda d: d.update(format_version=99), "backup format 99 is newer"),
        (lambda d: d["database"].update(kind="oracle"), "unknown database kind"),
        (lambda d: d["files"][1].update(path="../../etc/x"), "'..'"),
        (lambda d: d["files"][1].update(path="/etc/x"), "absolute"),
        (lambda d: d["files"][1].update(sha256="zz"), "no valid size/sha256"),
        (lambda d: d["files"].append(dict(d["files"][1])), "listed twice"),
        (lambda d: d["files"].pop(0), "database member is not among the files"),
        (lambda d: d["files"].append({"path": "spaces/a/pw/x", "size": 1, "sha256": SHA}),
         "below a link"),
        (lambda d: d["database"].update(counts={"messages": "3"}), "integers"),
    ],
)  # fmt: skip
def test_bad_manifests_are_refused_naming_the_problem(change: object, needle: str) -> None:
    data = json.loads(manifest().to_bytes())
    change(data)  # type: ignore[operator]
    with pytest.raises(ManifestError) as caught:
        parse_manifest(json.dumps(data).encode())
    assert needle in str(caught.value)


def test_not_json_is_refused() -> None:
    with pytest.raises(ManifestError, match="not JSON"):
        parse_manifest(b"\x00garbage")


def test_member_check_wants_every_file_whole_and_nothing_else() -> None:
    check = MemberCheck(manifest())
    check.file("database/mercury.db", 10, SHA)
    with pytest.raises(ManifestError, match="does not match its checksum"):
        check.file("spaces/a/x.txt", 2, "cd" * 32)
    with pytest.raises(ManifestError, match="not in the manifest"):
        check.file("spaces/a/extra", 1, SHA)
    with pytest.raises(ManifestError, match="not in the manifest"):
        check.link("spaces/a/pw", "/etc/shadow")
    check.link("spaces/a/pw", "/etc/passwd")
    with pytest.raises(ManifestError, match=r"spaces/a/x\.txt listed in the manifest is missing"):
        check.finish()


@pytest.mark.parametrize(
    ("name", "ok"),
    [
        ("spaces/a/b.txt", True),
        ("database/mercury.db", True),
        ("config/mercury.yaml", True),
        ("spaces/a/../../x", False),
        ("/spaces/a", False),
        ("spaces//a", False),
        ("spaces/./a", False),
        ("etc/passwd", False),
        ("spaces/a\\b", False),
        ("", False),
    ],
)
def test_member_names(name: str, ok: bool) -> None:
    assert (member_problem(name) is None) is ok


def test_schema_verdicts() -> None:
    known = ["0001", "0002", "0003"]
    assert schema_verdict("0003", known) is SchemaVerdict.SAME
    assert schema_verdict("0001", known) is SchemaVerdict.OLDER
    assert schema_verdict("0004", known) is SchemaVerdict.UNKNOWN
    assert schema_verdict(None, known) is SchemaVerdict.EMPTY


def test_non_empty_target_needs_force() -> None:
    assert non_empty_reason(TargetState({"spaces": 0, "messages": 0}, [])) is None
    reason = non_empty_reason(TargetState({"spaces": 2, "messages": 0}, ["a"]))
    assert reason is not None
    assert "2 spaces" in reason and "1 space folders on disk" in reason and "--force" in reason


def test_kind_mismatch_points_at_db_copy() -> None:
    assert kind_mismatch_message("sqlite", "sqlite") is None
    line = kind_mismatch_message("sqlite", "postgresql")
    assert line is not None and "mercury db copy" in line


def test_archive_name_and_count_mismatches() -> None:
    when = datetime(2027, 3, 4, 5, 6, 7, tzinfo=UTC)
    assert archive_name("prod", when) == "mercury-prod-20270304-050607Z.tar.gz"
    assert count_mismatches({"a": 1, "b": 2}, {"a": 1, "b": 3}) == ["b: 3 rows, manifest says 2"]


def test_a_path_written_as_a_folder_is_made_and_gets_a_dated_archive(tmp_path: Path) -> None:
    from mercury.ops.backup import destination
    from mercury.ops.manifest import BackupError

    now = datetime(2027, 3, 4, 5, 6, 7, tzinfo=UTC)
    wanted = tmp_path / "backups" / "nightly"
    target = destination(wanted, "prod", now, folder=True)
    assert wanted.is_dir() and (wanted.stat().st_mode & 0o777) == 0o700
    assert target.parent == wanted and target.name.startswith("mercury-prod-20270304")
    # Without the trailing slash the same missing path is an archive's file name.
    other = tmp_path / "plain"
    assert destination(other, "prod", now) == other and not other.exists()
    # A file where a folder was meant is refused, not overwritten.
    (tmp_path / "afile").write_text("x")
    with pytest.raises(BackupError, match="is not a folder"):
        destination(tmp_path / "afile", "prod", now, folder=True)
