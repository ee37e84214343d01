"""`mercury backup PATH` / `mercury restore PATH`: one archive with a manifest.

Both work on the install named by --config: `backup` beside a running Mercury (the
database is snapshotted, not locked), `restore` only while none runs. What is in an
archive and why: mercury/ops/backup.py; what a restore checks first: mercury/ops/restore.py.
"""

from __future__ import annotations

import asyncio
import json
import os
from pathlib import Path
from typing import TYPE_CHECKING, Any

import click

from mercury.cli.common import config_option, fail, load_or_exit, out

if TYPE_CHECKING:
    from mercury.ops.manifest import Manifest


def _size(n: int) -> str:
    value = float(n)
    for unit in ("B", "KiB", "MiB", "GiB"):
        if value < 1024 or unit == "GiB":
            return f"{value:.0f} {unit}" if unit == "B" else f"{value:.1f} {unit}"
        value /= 1024
    return f"{n} B"  # pragma: no cover


def _counts_line(counts: dict[str, int]) -> str:
    main = ("spaces", "messages", "tasks", "roles", "runs")
    shown = [f"{counts[t]:,} {t}" for t in main if t in counts]
    rest = sum(n for t, n in counts.items() if t not in main)
    return ", ".join(shown) + (f", {rest:,} other rows" if rest else "")


def _manifest_summary(manifest: Manifest) -> dict[str, Any]:
    return {
        "mercury_version": manifest.mercury_version,
        "created_at": manifest.created_at,
        "instance": manifest.instance,
        "database": manifest.database.kind,
        "revision": manifest.database.revision,
        "counts": manifest.database.counts,
        "spaces": manifest.space_ids(),
        "files": len(manifest.files),
        "links": len(manifest.links),
        "skipped": [{"path": s.path, "why": s.why} for s in manifest.skipped],
    }


@click.command()
@click.argument("path", type=click.Path())
@click.option("--json", "as_json", is_flag=True, help="Print the result as JSON.")
@config_option
def backup(path: str, as_json: bool) -> None:
    """Write a consistent snapshot of this install into one archive.

    PATH is the archive to write (.tar.gz), or a folder to write a dated one into (a PATH
    ending in / is a folder, made if missing). Safe
    while Mercury runs. Holds the database, every space's files and the config file
    (without secrets: .env is never included, so keep a copy of it somewhere safe).
    """
    from mercury.ops.backup import make_backup
    from mercury.ops.manifest import BackupError
    from mercury.storage import StorageError

    loaded = load_or_exit()
    try:
        result = asyncio.run(make_backup(loaded, Path(path), folder=path.endswith(("/", os.sep))))
    except (BackupError, StorageError) as exc:
        fail(str(exc))
    manifest = result.manifest
    if as_json:
        summary = {"path": str(result.path), "size": result.size} | _manifest_summary(manifest)
        click.echo(json.dumps(summary, indent=2))
        return
    out.print(f"Backup written: {result.path} ({_size(result.size)})", soft_wrap=True)
    out.print(
        f"Database ({manifest.database.kind}, schema {manifest.database.revision or 'empty'}): "
        f"{_counts_line(manifest.database.counts)}",
        soft_wrap=True,
    )
    out.print(
        f"Files: {len(manifest.files):,} in {len(manifest.space_ids())} spaces and the config"
        + (f", {len(manifest.links)} links kept as links" if manifest.links else ""),
        soft_wrap=True,
    )
    for skipped in manifest.skipped:
        out.print(f"  skipped {skipped.path}: {skipped.why}", soft_wrap=True)
    if manifest.database_url_masked:
        out.print("The database password in mercury.yaml was masked in the archive.")
    out.print("Not included: .env (the secrets). Keep a copy of it apart from the backups.")


@click.command()
@click.argument("path", type=click.Path(dir_okay=False, path_type=Path))
@click.option("--force", is_flag=True, help="Replace an install that already holds data.")
@click.option(
    "--with-config",
    is_flag=True,
    help="Also replace mercury.yaml with the backup's (data_dir and database_url are kept).",
)
@click.option("--json", "as_json", is_flag=True, help="Print the result as JSON.")
@config_option
def restore(path: Path, force: bool, with_config: bool, as_json: bool) -> None:
    """Restore an archive made by `mercury backup` into this install.

    Every file is checked against the archive's manifest before anything is replaced.
    Mercury must be stopped. An older backup is migrated to this version's schema.
    """
    from mercury.ops.manifest import BackupError
    from mercury.ops.restore import restore_backup
    from mercury.storage import StorageError

    loaded = load_or_exit()
    try:
        result = asyncio.run(restore_backup(loaded, path, force=force, with_config=with_config))
    except (BackupError, StorageError) as exc:
        fail(str(exc))
    manifest = result.manifest
    if as_json:
        summary = _manifest_summary(manifest) | {
            "revision_before": result.revision_before,
            "revision_after": result.revision_after,
            "restored_counts": result.counts,
            "restored_spaces": result.spaces,
            "config_restored": str(result.config_restored) if result.config_restored else None,
            "notes": result.notes,
        }
        click.echo(json.dumps(summary, indent=2))
        return
    out.print(
        f"Restored the backup of {manifest.instance} made {manifest.created_at} "
        f"by Mercury {manifest.mercury_version}.",
        soft_wrap=True,
    )
    out.print(
        f"Database at schema {result.revision_after}: {_counts_line(result.counts)}",
        soft_wrap=True,
    )
    out.print(f"Spaces: {len(result.spaces)} folders, {len(manifest.files):,} files checked.")
    if result.config_restored:
        out.print(f"Config: {result.config_restored} (the old one: *.before-restore)")
    for note in result.notes:
        out.print(f"Note: {note}", soft_wrap=True)
    out.print("Put the secrets (.env) in place, then start Mercury.")
