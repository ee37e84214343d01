"""`mercury restore ARCHIVE`: put a backup into the install named by --config.

Order, so that a refusal never leaves the install changed:
1. read manifest.json (the archive's first member) and refuse what this code cannot take:
   a newer backup format, a schema revision it does not know (the line names the Mercury
   version that made it), a SQLite backup into a PostgreSQL install or the reverse;
2. refuse while a Mercury runs on the install: for SQLite, a process holding the
   database file open (/proc/*/fd, the same test `fuser` makes); for PostgreSQL, a
   session named `mercury` (Database sets that application_name) on the database; and a
   space folder that is still a mount point (an image mounted by a running Mercury);
3. refuse an install that holds data (spaces or messages in its database, space folders on
   disk) unless --force;
4. unpack into a staging folder inside data_dir, checking every member against the
   manifest's size and sha256 and that nothing is missing or extra: a damaged or altered
   archive is refused here, with the install still untouched;
5. only then replace the database (SQLite: the file, its stale -wal/-shm removed first;
   PostgreSQL: drop Mercury's tables, `pg_restore --no-owner` into the configured
   database), compare its row counts with the manifest's, swap the spaces folder in,
   optionally the config (--with-config), and migrate to this code's head revision (an
   older backup is upgraded exactly as `mercury run` would).
"""

from __future__ import annotations

import contextlib
import os
import secrets
import shutil
import sqlite3
import tarfile
import tempfile
import zlib
from dataclasses import dataclass, field
from pathlib import Path

import yaml

from mercury import __version__
from mercury.config import LoadedConfig
from mercury.core.backups import (
    CONFIG_DIR,
    CONTENT_TABLES,
    IMAGES_DIR,
    SPACES_DIR,
    SchemaVerdict,
    TargetState,
    count_mismatches,
    kind_mismatch_message,
    newer_schema_message,
    non_empty_reason,
    schema_verdict,
)
from mercury.ops.archive_files import hand_over, unpack
from mercury.ops.backup import model_table_names, sqlite_facts, sqlite_path
from mercury.ops.manifest import (
    MANIFEST_NAME,
    MAX_MANIFEST_BYTES,
    BackupError,
    Manifest,
    ManifestError,
    MemberCheck,
    parse_manifest,
)

_ARCHIVE_ERRORS = (tarfile.TarError, EOFError, zlib.error, OSError)


@dataclass
class RestoreResult:
    manifest: Manifest
    revision_before: str | None
    revision_after: str | None
    counts: dict[str, int]
    spaces: list[str]
    config_restored: Path | None = None
    notes: list[str] = field(default_factory=list)


def known_revisions() -> list[str]:
    """This code's schema revisions, oldest first."""
    from alembic.script import ScriptDirectory

    from mercury.storage.migrate import alembic_config

    script = ScriptDirectory.from_config(alembic_config())
    return [r.revision for r in reversed(list(script.walk_revisions()))]


def read_manifest(tar: tarfile.TarFile) -> Manifest:
    """The first member, which must be manifest.json."""
    first = tar.next()
    if first is None or first.name != MANIFEST_NAME or not first.isreg():
        raise ManifestError("archive: manifest.json is not its first member: not a Mercury backup")
    if first.size > MAX_MANIFEST_BYTES:
        raise ManifestError("archive: manifest.json is implausibly large")
    handle = tar.extractfile(first)
    assert handle is not None
    return parse_manifest(handle.read())


def check_compatible(manifest: Manifest, target_kind: str) -> SchemaVerdict:
    """Refuse what this code cannot restore (format, schema revision, database kind)."""
    mismatch = kind_mismatch_message(manifest.database.kind, target_kind)
    if mismatch:
        raise BackupError(mismatch)
    known = known_revisions()
    verdict = schema_verdict(manifest.database.revision, known)
    if verdict is SchemaVerdict.UNKNOWN:
        assert manifest.database.revision is not None
        raise BackupError(
            newer_schema_message(
                manifest.database.revision, manifest.mercury_version, known[-1], __version__
            )
        )
    return verdict


def processes_holding(paths: list[Path]) -> list[int]:
    """Other processes with one of `paths` open (Linux /proc; unreadable ones are skipped)."""
    wanted = {str(p) for p in paths}
    found: list[int] = []
    proc = Path("/proc")
    if not proc.is_dir():
        return found
    for entry in proc.iterdir():
        if not entry.name.isdigit() or int(entry.name) == os.getpid():
            continue
        try:
            fds = os.listdir(entry / "fd")
        except OSError:
            continue
        for fd in fds:
            try:
                if os.readlink(entry / "fd" / fd) in wanted:
                    found.append(int(entry.name))
                    break
            except OSError:
                continue
    return found


async def refuse_if_running(loaded: LoadedConfig, url: str, db_file: Path | None) -> None:
    """BackupError when a Mercury (or anything) is using this install's database."""
    data_dir = loaded.config.data_dir
    if db_file is not None:
        pids = processes_holding([db_file, Path(f"{db_file}-wal")])
        if pids:
            raise BackupError(
                f"the database {db_file} is open in process {', '.join(map(str, pids))}: "
                "stop Mercury (`mercury service stop` or Ctrl-C) before restoring"
            )
    else:
        from mercury.ops.pgtools import pg_connect

        conn, _ = await pg_connect(url)
        try:
            n = await conn.fetchval(
                "SELECT count(*) FROM pg_stat_activity WHERE datname = current_database() "
                "AND application_name = 'mercury' AND pid <> pg_backend_pid()"
            )
        finally:
            await conn.close()
        if n:
            raise BackupError(
                f"{n} Mercury sessions are connected to the database: stop Mercury before restoring"
            )
    root = data_dir / "spaces"
    if root.is_dir():
        mounted = sorted(p.name for p in root.iterdir() if os.path.ismount(p))
        if mounted:
            raise BackupError(
                f"space {mounted[0]} is mounted at {root / mounted[0]}: stop Mercury "
                "(or `umount` it) before restoring"
            )


async def target_state(loaded: LoadedConfig, url: str, db_file: Path | None) -> TargetState:
    """Rows in the content tables and space folders on disk of the install."""
    counts: dict[str, int] = {}
    if db_file is not None:
        if db_file.is_file():
            with contextlib.closing(sqlite3.connect(str(db_file), timeout=30)) as conn:
                counts = {t: n for t, n in sqlite_facts(conn)[1].items() if t in CONTENT_TABLES}
    else:
        counts = {t: n for t, n in (await pg_counts(url)).items() if t in CONTENT_TABLES}
    root = loaded.config.data_dir / "spaces"
    on_disk = sorted(p.name for p in root.iterdir()) if root.is_dir() else []
    return TargetState(counts, on_disk)


async def pg_counts(url: str) -> dict[str, int]:
    from mercury.ops.pgtools import pg_connect

    conn, _ = await pg_connect(url)
    try:
        present = {
            r[0]
            for r in await conn.fetch(
                "SELECT tablename FROM pg_tables WHERE schemaname = current_schema()"
            )
        }
        return {
            t: int(await conn.fetchval(f'SELECT count(*) FROM "{t}"'))
            for t in model_table_names()
            if t in present
        }
    finally:
        await conn.close()


async def restore_backup(
    loaded: LoadedConfig, archive: Path, *, force: bool = False, with_config: bool = False
) -> RestoreResult:
    """Restore `archive` into the install of `loaded`; BackupError with one line if not."""
    from mercury.datadir import DataDirError, prepare_data_dir

    config = loaded.config
    if not archive.is_file():
        raise BackupError(f"{archive}: no such file")
    url = config.resolved_database_url()
    db_file = sqlite_path(url)
    try:
        tar = tarfile.open(archive, "r|gz")  # noqa: SIM115 - closed by the `with` below
    except _ARCHIVE_ERRORS as exc:
        raise BackupError(f"{archive}: not a Mercury backup (not a .tar.gz: {exc})") from None
    with tar:
        try:
            manifest = read_manifest(tar)
        except _ARCHIVE_ERRORS as exc:
            raise BackupError(f"{archive}: not a Mercury backup ({exc})") from None
        verdict = check_compatible(manifest, "sqlite" if db_file else "postgresql")
        if with_config and loaded.path is None:
            raise BackupError("--with-config: this install has no config file to replace")
        await refuse_if_running(loaded, url, db_file)
        if not force:
            reason = non_empty_reason(await target_state(loaded, url, db_file))
            if reason:
                raise BackupError(reason)
        try:
            prepare_data_dir(config)
        except DataDirError as exc:
            raise BackupError(str(exc)) from None
        staging = Path(tempfile.mkdtemp(prefix=".restore-", dir=config.data_dir))
        try:
            try:
                unpack(tar, staging, MemberCheck(manifest))
            except _ARCHIVE_ERRORS as exc:
                raise BackupError(
                    f"{archive}: the archive is damaged or cut short ({exc}); use another backup"
                ) from None
            # Everything checked: from here on the install is changed.
            result = RestoreResult(manifest, manifest.database.revision, None, {}, [])
            await _restore_database(manifest, staging, url, db_file)
            _restore_folders(loaded, staging, result)
            if with_config:
                _restore_config(loaded, staging, result)
        finally:
            shutil.rmtree(staging, ignore_errors=True)
    await _migrate(url, verdict, result)
    return result


async def _restore_database(
    manifest: Manifest, staging: Path, url: str, db_file: Path | None
) -> None:
    staged = staging / manifest.database.member
    if db_file is not None:
        with contextlib.closing(sqlite3.connect(str(staged))) as conn:
            counts = sqlite_facts(conn)[1]
        _check_counts(manifest, counts)
        db_file.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
        temp = db_file.parent / f".{db_file.name}.restore-{secrets.token_hex(4)}"
        shutil.move(str(staged), temp)
        os.chmod(temp, 0o600)
        for suffix in ("-wal", "-shm", "-journal"):  # the old database's, never the new one's
            Path(f"{db_file}{suffix}").unlink(missing_ok=True)
        os.replace(temp, db_file)
        return
    from mercury.ops.pgtools import find_tool, pg_connect, run_tool

    # One transaction for the whole replacement: pg_restore turns the dump into SQL, and
    # psql runs the old tables' DROPs and that SQL between one BEGIN and COMMIT. A restore
    # that fails half-way (a bad dump, a full disk, a conflicting object) leaves the
    # install's database exactly as it was, never emptied.
    conn, parsed = await pg_connect(url)
    try:
        major = int(await conn.fetchval("SHOW server_version_num")) // 10000
        names = [
            str(row[0])
            for row in await conn.fetch(
                "SELECT tablename FROM pg_tables WHERE schemaname = current_schema()"
            )
        ]
    finally:
        await conn.close()
    pg_restore, psql = find_tool("pg_restore", major), find_tool("psql", major)
    script = staged.with_name("restore.sql")
    drops = staged.with_name("drop.sql")
    drops.write_text(
        "".join(
            f'DROP TABLE IF EXISTS "{n.replace(chr(34), chr(34) * 2)}" CASCADE;\n' for n in names
        )
    )
    await run_tool(
        [pg_restore, "--no-owner", "--no-privileges", f"--file={script}", str(staged)],
        parsed,
        "pg_restore",
    )
    await run_tool(
        [
            psql,
            "--no-psqlrc",
            "--quiet",
            "--single-transaction",
            "--set=ON_ERROR_STOP=1",
            f"--dbname={parsed.database}",
            "--command=SET client_min_messages TO warning",
            f"--file={drops}",
            f"--file={script}",
        ],
        parsed,
        "restoring the database (nothing was changed)",
    )
    _check_counts(manifest, await pg_counts(url))


def _check_counts(manifest: Manifest, counts: dict[str, int]) -> None:
    wrong = count_mismatches(manifest.database.counts, counts)
    if wrong:
        raise BackupError(f"the restored database does not match the manifest: {wrong[0]}")


def _swap_in(staged: Path, live: Path) -> str | None:
    """Put `staged` (or nothing) at `live`, the old one moved aside then deleted."""
    old = live.with_name(f".{live.name}.replaced-{secrets.token_hex(4)}")
    had_old = live.exists() or live.is_symlink()
    if had_old:
        os.replace(live, old)
    if staged.is_dir():
        os.replace(staged, live)
    if had_old:
        shutil.rmtree(old, ignore_errors=True)
        if old.exists():
            return f"the replaced {live.name} could not be removed entirely: delete {old}"
    return None


def _restore_folders(loaded: LoadedConfig, staging: Path, result: RestoreResult) -> None:
    from mercury.sandbox.identity import IdentityError, container_identity
    from mercury.sandbox.space_images import images_root
    from mercury.sandbox.spaces import private_dir, spaces_root

    data_dir = loaded.config.data_dir
    for staged, live in (
        (staging / SPACES_DIR, spaces_root(data_dir)),
        (staging / IMAGES_DIR, images_root(data_dir)),
    ):
        note = _swap_in(staged, live)
        if note:
            result.notes.append(note)
    root = private_dir(spaces_root(data_dir))
    result.spaces = sorted(p.name for p in root.iterdir() if p.is_dir())
    with contextlib.suppress(IdentityError, OSError):
        ident = container_identity(loaded.config.container)
        hand_over(root, ident.uid, ident.gid)


def _restore_config(loaded: LoadedConfig, staging: Path, result: RestoreResult) -> None:
    """The backup's mercury.yaml over this one's, keeping where this install's data lives."""
    assert loaded.path is not None
    staged = staging / CONFIG_DIR / "mercury.yaml"
    if not staged.is_file():
        result.notes.append("the backup holds no config file: this install's is kept")
        return
    text = staged.read_text()
    new = yaml.safe_load(text) or {}
    current = yaml.safe_load(loaded.path.read_text()) if loaded.path.is_file() else {}
    current = current if isinstance(current, dict) else {}
    merged = dict(new)
    for key in ("data_dir", "database_url"):  # where this install's data is, not the old one's
        if key in current:
            merged[key] = current[key]
        else:
            merged.pop(key, None)
    if merged != new:
        text = yaml.safe_dump(merged, sort_keys=False)
    if loaded.path.is_file():
        shutil.copy2(loaded.path, loaded.path.with_name(loaded.path.name + ".before-restore"))
    loaded.path.write_text(text)
    result.config_restored = loaded.path
    extensions = staging / CONFIG_DIR / "extensions"
    target = loaded.config.extensions.dir
    if extensions.is_dir():
        if target.exists() and any(target.iterdir()):
            result.notes.append(f"kept the existing extensions folder {target}")
        else:
            with contextlib.suppress(FileNotFoundError):
                target.rmdir()
            shutil.move(str(extensions), target)


async def _migrate(url: str, verdict: SchemaVerdict, result: RestoreResult) -> None:
    from mercury.logging import first_line
    from mercury.storage.migrate import current_revision, upgrade

    try:
        await upgrade(url)
        result.revision_after = await current_revision(url)
    except Exception as exc:
        raise BackupError(
            f"the backup was restored but migrating it failed: {first_line(exc)}; "
            "run `mercury db upgrade` to retry"
        ) from None
    db_file = sqlite_path(url)
    if db_file is not None:
        with contextlib.closing(sqlite3.connect(str(db_file), timeout=30)) as conn:
            result.counts = sqlite_facts(conn)[1]
    else:
        result.counts = await pg_counts(url)
    if verdict is SchemaVerdict.OLDER:
        result.notes.append(
            f"migrated from schema revision {result.revision_before} to {result.revision_after}"
        )
