"""The manifest of a backup archive: what is in it, from which Mercury, and its checksums.

`manifest.json` is the archive's first member, so a restore knows what to expect before
it unpacks a byte: the format version (a future Mercury may change the layout), the
Mercury version and schema revision that made it (a restore refuses a schema it does not
know, naming the version to install), the row count of every table (compared with the
restored database), and every file with its size and sha256 (each member is checked
against them as it is unpacked, and anything missing, extra or different refuses the
whole restore before the install is touched). Links found in spaces are listed as links
(never followed); FIFOs, sockets and devices are listed as skipped.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import asdict, dataclass, field
from typing import Any

from mercury.core.backups import member_problem

FORMAT = "mercury-backup"
FORMAT_VERSION = 1
MANIFEST_NAME = "manifest.json"
MAX_MANIFEST_BYTES = 256 * 1024 * 1024


class BackupError(Exception):
    """A backup or restore cannot go on; the message is the one line to print."""


class ManifestError(BackupError):
    """The manifest is missing, unreadable or does not match the archive (one line)."""


@dataclass(frozen=True)
class FileEntry:
    path: str
    size: int
    sha256: str


@dataclass(frozen=True)
class LinkEntry:
    path: str
    target: str


@dataclass(frozen=True)
class SkippedEntry:
    path: str
    why: str


@dataclass(frozen=True)
class DatabaseInfo:
    kind: str  # "sqlite" or "postgresql"
    revision: str | None  # Alembic revision of the snapshot; None for a never-migrated one
    member: str  # the archive member holding it
    counts: dict[str, int]  # rows per Mercury table, in the snapshot itself


@dataclass
class Manifest:
    mercury_version: str
    created_at: str  # ISO 8601, UTC
    instance: str
    database: DatabaseInfo
    files: list[FileEntry] = field(default_factory=list)
    links: list[LinkEntry] = field(default_factory=list)
    skipped: list[SkippedEntry] = field(default_factory=list)
    config_included: bool = False
    database_url_masked: bool = False
    format: str = FORMAT
    format_version: int = FORMAT_VERSION

    def to_bytes(self) -> bytes:
        return json.dumps(asdict(self), indent=1, sort_keys=True).encode() + b"\n"

    def file_map(self) -> dict[str, FileEntry]:
        return {f.path: f for f in self.files}

    def link_map(self) -> dict[str, LinkEntry]:
        return {link.path: link for link in self.links}

    def space_ids(self) -> list[str]:
        """The spaces whose files are in the archive."""
        ids = {e.path.split("/")[1] for e in [*self.files, *self.links] if _in_space(e.path)}
        return sorted(ids)


def _in_space(path: str) -> bool:
    parts = path.split("/")
    return parts[0] == "spaces" and len(parts) > 2


def _need(data: dict[str, Any], key: str, kind: type | tuple[type, ...]) -> Any:
    value = data.get(key)
    if not isinstance(value, kind) or (isinstance(value, bool) and kind is int):
        raise ManifestError(f"manifest: {key!r} is missing or not a {_kind_name(kind)}")
    return value


def _kind_name(kind: type | tuple[type, ...]) -> str:
    kinds = kind if isinstance(kind, tuple) else (kind,)
    return " or ".join(k.__name__ for k in kinds)


def _checked_path(path: Any, what: str) -> str:
    if not isinstance(path, str):
        raise ManifestError(f"manifest: a {what} path is not a string")
    problem = member_problem(path)
    if problem:
        raise ManifestError(f"manifest: {what} {path!r} has {problem}")
    return path


def parse_manifest(raw: bytes) -> Manifest:
    """Read and check a manifest; ManifestError names the first thing wrong."""
    try:
        data = json.loads(raw)
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise ManifestError(f"manifest: not JSON ({exc})") from None
    if not isinstance(data, dict) or data.get("format") != FORMAT:
        raise ManifestError("manifest: not a Mercury backup (no format 'mercury-backup')")
    version = _need(data, "format_version", int)
    if version > FORMAT_VERSION:
        raise ManifestError(
            f"manifest: backup format {version} is newer than this Mercury reads "
            f"({FORMAT_VERSION}); made by Mercury {data.get('mercury_version')}: install it "
            "or a newer one to restore"
        )
    db = _need(data, "database", dict)
    counts = _need(db, "counts", dict)
    if not all(isinstance(k, str) and isinstance(v, int) for k, v in counts.items()):
        raise ManifestError("manifest: database counts must map table names to integers")
    revision = db.get("revision")
    if revision is not None and not isinstance(revision, str):
        raise ManifestError("manifest: database revision is not a string")
    kind = _need(db, "kind", str)
    if kind not in ("sqlite", "postgresql"):
        raise ManifestError(f"manifest: unknown database kind {kind!r}")
    files: list[FileEntry] = []
    for item in _need(data, "files", list):
        if not isinstance(item, dict):
            raise ManifestError("manifest: a file entry is not an object")
        size, digest = item.get("size"), item.get("sha256")
        if not isinstance(size, int) or size < 0 or not _is_sha256(digest):
            raise ManifestError(f"manifest: file {item.get('path')!r} has no valid size/sha256")
        files.append(FileEntry(_checked_path(item.get("path"), "file"), size, str(digest)))
    links = [
        LinkEntry(_checked_path(i.get("path"), "link"), str(i.get("target", "")))
        for i in _need(data, "links", list)
        if isinstance(i, dict)
    ]
    skipped = [
        SkippedEntry(str(i.get("path", "")), str(i.get("why", "")))
        for i in data.get("skipped", [])
        if isinstance(i, dict)
    ]
    manifest = Manifest(
        mercury_version=_need(data, "mercury_version", str),
        created_at=_need(data, "created_at", str),
        instance=_need(data, "instance", str),
        database=DatabaseInfo(
            kind=kind,
            revision=revision,
            member=_checked_path(db.get("member"), "database"),
            counts=dict(counts),
        ),
        files=files,
        links=links,
        skipped=skipped,
        config_included=bool(data.get("config_included", False)),
        database_url_masked=bool(data.get("database_url_masked", False)),
        format_version=version,
    )
    paths = [f.path for f in files] + [link.path for link in links]
    if len(set(paths)) != len(paths):
        raise ManifestError("manifest: a path is listed twice")
    link_paths = {link.path for link in links}
    for path in paths:
        parts = path.split("/")
        if any("/".join(parts[:i]) in link_paths for i in range(1, len(parts))):
            raise ManifestError(f"manifest: {path!r} lies below a link")
    if manifest.database.member not in manifest.file_map():
        raise ManifestError("manifest: the database member is not among the files")
    return manifest


def _is_sha256(value: Any) -> bool:
    return (
        isinstance(value, str) and len(value) == 64 and all(c in "0123456789abcdef" for c in value)
    )


class MemberCheck:
    """Tracks an archive's members against its manifest while it is read.

    Every regular file must be listed with the same size and sha256, every link with the
    same target; `finish` then says what the manifest lists that never came.
    """

    def __init__(self, manifest: Manifest) -> None:
        self._files = manifest.file_map()
        self._links = manifest.link_map()
        self._seen: set[str] = set()

    def file(self, path: str, size: int, sha256: str) -> None:
        entry = self._files.get(path)
        if entry is None or path in self._seen:
            raise ManifestError(f"archive: {path} is not in the manifest (or appears twice)")
        if entry.size != size or entry.sha256 != sha256:
            raise ManifestError(
                f"archive: {path} does not match its checksum in the manifest: the archive "
                "is damaged or was changed; use another backup"
            )
        self._seen.add(path)

    def link(self, path: str, target: str) -> None:
        entry = self._links.get(path)
        if entry is None or entry.target != target or path in self._seen:
            raise ManifestError(f"archive: link {path} is not in the manifest as it is")
        self._seen.add(path)

    def finish(self) -> None:
        missing = sorted((set(self._files) | set(self._links)) - self._seen)
        if missing:
            more = f" and {len(missing) - 1} more" if len(missing) > 1 else ""
            raise ManifestError(
                f"archive: {missing[0]}{more} listed in the manifest is missing: the archive "
                "is incomplete; use another backup"
            )


def sha256_hex() -> Any:
    """A new sha256 hasher (one place that names the algorithm the manifest uses)."""
    return hashlib.sha256()
