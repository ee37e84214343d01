"""Pure decisions about backups: archive names, member names, schema revisions, emptiness.

Kept apart from mercury/ops/backup.py and restore.py (which read files and databases) so
the rules a restore enforces can be tested on plain values: which archive member names are
acceptable (an archive is input from outside: a name must never reach out of the folder it
is unpacked into), whether a backup's schema revision is one this code can migrate, and
what counts as an install that a restore would overwrite.
"""

from __future__ import annotations

import enum
import posixpath
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime

# The top-level folders of an archive (manifest.json sits beside them).
DATABASE_DIR = "database"
SPACES_DIR = "spaces"
IMAGES_DIR = "space-images"
CONFIG_DIR = "config"
TOP_LEVEL = (DATABASE_DIR, SPACES_DIR, IMAGES_DIR, CONFIG_DIR)
MAX_NAME_CHARS = 4096


def archive_name(instance: str, now: datetime) -> str:
    """The file name `mercury backup FOLDER` writes: instance and UTC time, sortable."""
    stamp = now.astimezone(UTC).strftime("%Y%m%d-%H%M%SZ")
    return f"mercury-{instance}-{stamp}.tar.gz"


def member_problem(name: str) -> str | None:
    """Why an archive member name is unacceptable, or None.

    Accepted: a relative, normalized POSIX path under one of TOP_LEVEL, without `..`,
    empty or `.` parts, NUL or backslashes. Everything else is refused rather than
    "cleaned", so a crafted archive cannot write outside the folder it is unpacked into.
    """
    if not name or len(name) > MAX_NAME_CHARS:
        return "an empty or overlong name"
    if "\x00" in name or "\\" in name:
        return "a NUL or backslash in the name"
    if name.startswith("/"):
        return "an absolute path"
    parts = name.split("/")
    if any(p in ("", ".", "..") for p in parts):
        return "an empty, '.' or '..' path part"
    if posixpath.normpath(name) != name:
        return "a path that is not normalized"
    if parts[0] not in TOP_LEVEL:
        return f"a top-level folder other than {', '.join(TOP_LEVEL)}"
    return None


class SchemaVerdict(enum.StrEnum):
    """How a backup's schema revision relates to the revisions this code ships."""

    SAME = "same"  # restored as it is
    OLDER = "older"  # restored, then migrated up to head
    UNKNOWN = "unknown"  # made by a newer Mercury (or not Mercury's): refused
    EMPTY = "empty"  # the backed-up database had never been migrated


def schema_verdict(revision: str | None, known: Sequence[str]) -> SchemaVerdict:
    """Compare a backup's revision with `known` (this code's revisions, oldest first)."""
    if revision is None:
        return SchemaVerdict.EMPTY
    if revision not in known:
        return SchemaVerdict.UNKNOWN
    return SchemaVerdict.SAME if revision == known[-1] else SchemaVerdict.OLDER


def newer_schema_message(revision: str, backup_version: str, head: str, version: str) -> str:
    """The one line that refuses a backup whose schema this Mercury does not know."""
    return (
        f"the backup's database is at schema revision {revision!r}, made by Mercury "
        f"{backup_version}; this Mercury ({version}) knows revisions up to {head!r}: "
        f"install Mercury {backup_version} or newer to restore it"
    )


# Tables whose rows make an install "in use": restoring over them would lose history.
CONTENT_TABLES = ("spaces", "messages")


@dataclass(frozen=True)
class TargetState:
    """What a restore found in the install it would write into."""

    row_counts: Mapping[str, int]  # CONTENT_TABLES present in its database
    spaces_on_disk: Sequence[str]  # entries in data_dir/spaces


def non_empty_reason(state: TargetState) -> str | None:
    """Why a restore into this install needs --force (it would replace data), or None."""
    held = [f"{state.row_counts[t]} {t}" for t in CONTENT_TABLES if state.row_counts.get(t)]
    if state.spaces_on_disk:
        held.append(f"{len(state.spaces_on_disk)} space folders on disk")
    if not held:
        return None
    return (
        f"this install is not empty ({', '.join(held)}): restoring replaces all of it; "
        "back it up first (`mercury backup`), then run `mercury restore --force`"
    )


def kind_mismatch_message(backup_kind: str, target_kind: str) -> str | None:
    """The one line refusing a SQLite backup into PostgreSQL (or the reverse), or None."""
    if backup_kind == target_kind:
        return None
    if backup_kind == "sqlite":
        return (
            "the backup holds a SQLite database and this install uses PostgreSQL: restore it "
            "into an install on SQLite (no database_url), then move it with `mercury db copy`"
        )
    return (
        f"the backup holds a {backup_kind} database and this install uses {target_kind}: "
        f"restore it into an install whose database_url is {backup_kind}"
    )


def count_mismatches(expected: Mapping[str, int], found: Mapping[str, int]) -> list[str]:
    """Tables whose row count differs between a manifest and a restored database."""
    return [
        f"{table}: {found.get(table)} rows, manifest says {want}"
        for table, want in sorted(expected.items())
        if found.get(table) != want
    ]
