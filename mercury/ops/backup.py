"""`mercury backup PATH`: a consistent snapshot of a running install in one archive.

What goes in (manifest.json first, see manifest.py):
- database/mercury.db: SQLite's online backup API from the live file into a temp file.
  Mercury's database is in WAL mode, where a reader never blocks a writer, so the copy is
  taken in one step (one read transaction: a consistent snapshot); a database in another
  journal mode is copied in small steps, so a writer waits at most one step. Or
  database/mercury.pgdump: `pg_dump --format=custom` of PostgreSQL, run on a snapshot
  exported from a REPEATABLE READ transaction, in which the row counts are taken too, so
  the manifest's counts are exactly the dump's.
- spaces/<id>/...: every space's files, walked without following a link (archive_files.py);
  an unmounted space image (disk.space_limit: image) as space-images/<id>.img.
- config/mercury.yaml: the config file with a password in database_url masked, and
  config/extensions/...: the operator's extensions folder. Never `.env` (every secret is
  there), never session-signing.key.
Not in it: the runs' io dirs, host-API sockets and web uploads still in flight (they
belong to runs that end with the process), the queue's containers (made per message).

The database is read first, the spaces' files after it: a file written in between is in
the archive although its message is not; both halves are each consistent.

The archive is written to a hidden temp file beside PATH (mode 0600: it holds every
conversation) and renamed only when complete, so PATH is never half an archive.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import sqlite3
import tarfile
import tempfile
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

import yaml

from mercury import __version__
from mercury.config import LoadedConfig
from mercury.core.backups import (
    CONFIG_DIR,
    DATABASE_DIR,
    IMAGES_DIR,
    SPACES_DIR,
    archive_name,
)
from mercury.ops.archive_files import Listing, add_bytes, add_file, add_tree
from mercury.ops.manifest import MANIFEST_NAME, BackupError, DatabaseInfo, Manifest

SQLITE_MEMBER = f"{DATABASE_DIR}/mercury.db"
PG_MEMBER = f"{DATABASE_DIR}/mercury.pgdump"
SQLITE_STEP_PAGES = 256  # outside WAL mode: pages copied per step (writers wait one step)


@dataclass(frozen=True)
class BackupResult:
    path: Path
    size: int
    manifest: Manifest


def model_table_names() -> list[str]:
    """Mercury's tables (the models'), in a stable order: what the manifest counts."""
    from mercury.storage.models import Base

    return sorted(Base.metadata.tables)


def sqlite_path(url: str) -> Path | None:
    """The file of a SQLite database URL, or None for PostgreSQL."""
    from mercury.storage.db import SQLITE_DRIVER, parse_database_url

    parsed = parse_database_url(url)
    if parsed.drivername != SQLITE_DRIVER:
        return None
    if parsed.database in (None, "", ":memory:"):
        raise BackupError("database_url: an in-memory database cannot be backed up")
    return Path(str(parsed.database)).expanduser().resolve()


def sqlite_facts(conn: sqlite3.Connection) -> tuple[str | None, dict[str, int]]:
    """The schema revision and the row count of every Mercury table in a SQLite database."""
    present = {r[0] for r in conn.execute("SELECT name FROM sqlite_master WHERE type='table'")}
    revision = None
    if "alembic_version" in present:
        row = conn.execute("SELECT version_num FROM alembic_version").fetchone()
        revision = row[0] if row else None
    counts = {
        t: int(conn.execute(f'SELECT count(*) FROM "{t}"').fetchone()[0])
        for t in model_table_names()
        if t in present
    }
    return revision, counts


def snapshot_sqlite(src: Path, dst: Path) -> tuple[str | None, dict[str, int]]:
    """Copy the live database `src` into `dst` with SQLite's online backup API."""
    if not src.is_file():
        raise BackupError(
            f"no database at {src}: start Mercury here once (`mercury run`) or check --config"
        )
    try:
        source = sqlite3.connect(str(src), timeout=30)
        try:
            mode = str(source.execute("PRAGMA journal_mode").fetchone()[0]).lower()
            target = sqlite3.connect(str(dst))
            try:
                pages = -1 if mode == "wal" else SQLITE_STEP_PAGES
                source.backup(target, pages=pages, sleep=0.005)
                target.execute("PRAGMA journal_mode=DELETE")  # one self-contained file
                check = target.execute("PRAGMA quick_check").fetchone()[0]
                if check != "ok":
                    raise BackupError(f"the database copy fails SQLite's check: {check}")
                return sqlite_facts(target)
            finally:
                target.close()
        finally:
            source.close()
    except sqlite3.Error as exc:
        raise BackupError(f"cannot copy the database {src}: {exc}") from exc


async def dump_postgres(url: str, dst: Path) -> tuple[str | None, dict[str, int]]:
    """`pg_dump --format=custom` into `dst`, with counts from the very same snapshot."""
    from mercury.ops.pgtools import find_tool, pg_connect, run_tool

    conn, parsed = await pg_connect(url)
    try:
        async with conn.transaction(isolation="repeatable_read", readonly=True):
            snapshot = await conn.fetchval("SELECT pg_export_snapshot()")
            major = int(await conn.fetchval("SHOW server_version_num")) // 10000
            present = {
                r[0]
                for r in await conn.fetch(
                    "SELECT tablename FROM pg_tables WHERE schemaname = current_schema()"
                )
            }
            revision = None
            if "alembic_version" in present:
                revision = await conn.fetchval("SELECT version_num FROM alembic_version")
            counts = {
                t: int(await conn.fetchval(f'SELECT count(*) FROM "{t}"'))
                for t in model_table_names()
                if t in present
            }
            tool = find_tool("pg_dump", major)
            cmd = [tool, "--format=custom", f"--snapshot={snapshot}", f"--file={dst}"]
            await run_tool(cmd, parsed, "pg_dump")
    finally:
        await conn.close()
    return revision, counts


def masked_config(text: str) -> tuple[str, bool]:
    """The config file's text with a password in database_url replaced by ***."""
    from sqlalchemy.engine import make_url

    from mercury.storage import safe_url

    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError:
        return text, False
    url = data.get("database_url") if isinstance(data, dict) else None
    if not isinstance(url, str):
        return text, False
    try:
        password = make_url(url).password
    except Exception:
        password = None
    if not password:
        return text, False
    if url in text:
        text = text.replace(url, safe_url(url))
    else:
        data["database_url"] = safe_url(url)
        text = yaml.safe_dump(data, sort_keys=False)
    return text.replace(str(password), "***"), True


def destination(path: Path, instance: str, now: datetime, *, folder: bool = False) -> Path:
    """Where the archive goes: PATH, or a dated name inside PATH when it is a folder.

    `folder`: the operator wrote PATH with a trailing slash, so it is meant as a folder
    (made, 0700, when missing) and never taken for an archive's file name.
    """
    if folder and not path.exists():
        try:
            path.mkdir(parents=True, mode=0o700)
        except OSError as exc:
            raise BackupError(f"cannot create the folder {path}: {exc.strerror}") from exc
    if folder and not path.is_dir():
        raise BackupError(f"{path} is not a folder")
    if path.is_dir():
        return path / archive_name(instance, now)
    if path.exists() or path.is_symlink():
        raise BackupError(f"{path} already exists: name a new file or a folder")
    if not path.parent.is_dir():
        raise BackupError(f"{path.parent} is not a folder: create it first")
    return path


async def make_backup(
    loaded: LoadedConfig, path: Path, *, now: datetime | None = None, folder: bool = False
) -> BackupResult:
    """Write the archive; BackupError with one line when it cannot be made."""
    config = loaded.config
    now = now or datetime.now(UTC)
    final = destination(path, config.instance, now, folder=folder)
    work = Path(tempfile.mkdtemp(prefix=".mercury-backup-", dir=final.parent))
    try:
        url = config.resolved_database_url()
        db_file = sqlite_path(url)
        if db_file is not None:
            kind, member, snap = "sqlite", SQLITE_MEMBER, work / "mercury.db"
            revision, counts = snapshot_sqlite(db_file, snap)
        else:
            kind, member, snap = "postgresql", PG_MEMBER, work / "mercury.pgdump"
            revision, counts = await dump_postgres(url, snap)
        listing = Listing()
        body_path = work / "body.tar"
        masked = False
        with tarfile.open(body_path, "w", format=tarfile.PAX_FORMAT) as body:
            add_file(body, member, snap, work, listing)
            snap.unlink()
            add_tree(body, config.data_dir / "spaces", SPACES_DIR, work, listing)
            _add_unmounted_images(body, config.data_dir, work, listing)
            if loaded.path is not None and loaded.path.is_file():
                text, masked = masked_config(loaded.path.read_text())
                add_bytes(body, f"{CONFIG_DIR}/mercury.yaml", text.encode(), listing)
            if config.extensions.dir.is_dir():
                add_tree(body, config.extensions.dir, f"{CONFIG_DIR}/extensions", work, listing)
        manifest = Manifest(
            mercury_version=__version__,
            created_at=now.astimezone(UTC).isoformat(),
            instance=config.instance,
            database=DatabaseInfo(kind=kind, revision=revision, member=member, counts=counts),
            files=listing.files,
            links=listing.links,
            skipped=listing.skipped,
            config_included=loaded.path is not None,
            database_url_masked=masked,
        )
        size = _write_archive(final, manifest, body_path)
        return BackupResult(final, size, manifest)
    except OSError as exc:
        raise BackupError(f"cannot write the backup: {exc.strerror or exc}") from exc
    finally:
        shutil.rmtree(work, ignore_errors=True)


def _add_unmounted_images(
    tar: tarfile.TarFile, data_dir: Path, work: Path, listing: Listing
) -> None:
    """A space image whose folder is not mounted holds that space's only copy: add it."""
    from mercury.sandbox.space_images import images_root

    root = images_root(data_dir)
    if not root.is_dir():
        return
    for image in sorted(root.glob("*.img")):
        mount_point = data_dir / "spaces" / image.stem
        if image.is_symlink() or os.path.ismount(mount_point):
            continue  # a mounted space's files were read through its folder
        add_file(tar, f"{IMAGES_DIR}/{image.name}", image, work, listing)


def _write_archive(final: Path, manifest: Manifest, body_path: Path) -> int:
    """manifest.json, then the body's members, gzipped into a temp file renamed to `final`."""
    import io

    tmp = final.parent / f".{final.name}.{os.getpid()}.partial"
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o600)
    try:
        with os.fdopen(fd, "wb") as raw:
            with tarfile.open(fileobj=raw, mode="w:gz", format=tarfile.PAX_FORMAT) as out:
                data = manifest.to_bytes()
                info = tarfile.TarInfo(MANIFEST_NAME)
                info.size, info.mode, info.mtime = len(data), 0o600, int(datetime.now().timestamp())
                out.addfile(info, io.BytesIO(data))
                with tarfile.open(body_path, "r") as body:
                    for member in body:
                        out.addfile(member, body.extractfile(member) if member.isreg() else None)
            raw.flush()
            os.fsync(raw.fileno())
        os.replace(tmp, final)
    except BaseException:
        with contextlib.suppress(OSError):
            tmp.unlink()
        raise
    dir_fd = os.open(final.parent, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(dir_fd)
    finally:
        os.close(dir_fd)
    return final.stat().st_size
