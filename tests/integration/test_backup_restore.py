"""`mercury backup` / `mercury restore` as real commands on real databases and folders.

The live test backs up a running `mercury run` (fake model, real containers) while
messages keep arriving, restores it into a fresh install and compares what came back with
what the source holds. The others need no Docker: installs made by `mercury db upgrade`
and filled through the storage functions, on SQLite and on throwaway PostgreSQL databases.
"""

from __future__ import annotations

import asyncio
import io
import json
import os
import tarfile
import threading
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy.ext.asyncio import create_async_engine

from mercury.storage import Database, MessageRole, default_sqlite_url, downgrade, head_revision
from mercury.storage.db import parse_database_url
from tests.fakes.model_server import FakeModelServer
from tests.integration.mercury_site import echo_responder, mercury
from tests.integration.test_storage import fresh_postgres_database, postgres_server_url

__all__ = ["postgres_server_url"]

COMPARED = {
    "spaces": "id, name",
    "messages": "id, space_id, role, text, author_id",
    "tasks": "id, space_id, prompt, interval_s",
    "roles": "space_id, platform, user_id, role",
}


async def rows(url: str, table: str) -> list[tuple[Any, ...]]:
    engine = create_async_engine(parse_database_url(url))
    try:
        async with engine.connect() as conn:
            result = await conn.exec_driver_sql(
                f"SELECT {COMPARED[table]} FROM {table} ORDER BY {COMPARED[table]}"
            )
            return [tuple(r) for r in result]
    finally:
        await engine.dispose()


async def fill(url: str, spaces: int = 2, messages: int = 5) -> None:
    """Spaces with messages, a task and a role, through the storage functions."""
    from mercury.storage import add_message, get_or_create_space
    from mercury.storage.roles import set_role
    from mercury.storage.tasks import add_task

    db = Database(url)
    try:
        for s in range(spaces):
            sid = f"space{s}"
            await get_or_create_space(db, sid, name=f"Space {s}")
            for i in range(messages):
                await add_message(
                    db, space_id=sid, platform="web", role=MessageRole.USER,
                    text=f"hello {s}.{i} ünïcode", author_id=f"u{i}",
                )  # fmt: skip
            await add_task(db, sid, f"report for {sid}", interval_s=3600)
            await set_role(db, sid, "web", "alice", "admin")
    finally:
        await db.dispose()


def make_install(root: Path, name: str, database_url: str | None = None) -> Path:
    root.mkdir(parents=True, exist_ok=True)
    config: dict[str, Any] = {"instance": name, "data_dir": "data"}
    if database_url:
        config["database_url"] = database_url
    (root / "mercury.yaml").write_text(json.dumps(config))
    (root / ".env").write_text("MERCURY_DASHBOARD_PASSWORD=never-in-a-backup-123\n")
    return root


def cli(root: Path, *args: str) -> Any:
    return mercury(*args, cwd=root)


def ok(root: Path, *args: str) -> dict[str, Any]:
    done = mercury(*args, "--json", cwd=root)
    assert done.returncode == 0, done.stderr
    return dict(json.loads(done.stdout))


def refused(root: Path, *args: str) -> str:
    done = mercury(*args, cwd=root)
    assert done.returncode == 1, done.stdout + done.stderr
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), done.stderr
    return lines[0]


def rewrite(archive: Path, change: Any) -> Path:
    """A copy of `archive` with `change(name, data) -> data` applied to its members."""
    out = archive.with_name("changed.tar.gz")
    with tarfile.open(archive, "r:gz") as src, tarfile.open(out, "w:gz") as dst:
        for member in src:
            data = src.extractfile(member).read() if member.isreg() else None  # type: ignore[union-attr]
            if data is not None:
                data = change(member.name, data)
                member.size = len(data)
            dst.addfile(member, io.BytesIO(data) if data is not None else None)
    return out


@pytest.fixture
async def sqlite_source(tmp_path: Path) -> AsyncIterator[Path]:
    root = make_install(tmp_path / "src", "src")
    assert cli(root, "db", "upgrade").returncode == 0
    await fill(default_sqlite_url(root / "data"))
    space = root / "data" / "spaces" / "space0"
    (space / "inbox").mkdir(parents=True)
    (space / "inbox" / "report.txt").write_text("quarterly numbers\n")
    (space / "big.bin").write_bytes(os.urandom(3 * 1024 * 1024))
    os.symlink("/etc/passwd", space / "passwd-link")
    os.mkfifo(space / "pipe")
    yield root


def tree(root: Path) -> dict[str, Any]:
    """Every entry below `root`: file bytes, link targets (never followed), folders."""
    found: dict[str, Any] = {}
    for folder, dirs, files in os.walk(root):
        for name in [*dirs, *files]:
            path = Path(folder) / name
            rel = str(path.relative_to(root))
            if path.is_symlink():
                found[rel] = ("link", os.readlink(path))
            elif path.is_dir():
                found[rel] = "dir"
            elif path.is_file():
                found[rel] = path.read_bytes()
            else:
                found[rel] = "special"
    return found


async def test_backup_and_restore_a_sqlite_install(sqlite_source: Path, tmp_path: Path) -> None:
    backup = ok(sqlite_source, "backup", str(tmp_path))
    archive = Path(backup["path"])
    assert archive.parent == tmp_path and archive.name.startswith("mercury-src-")
    assert archive.stat().st_mode & 0o777 == 0o600
    assert backup["counts"]["messages"] == 10 and backup["counts"]["tasks"] == 2
    assert {"path": "spaces/space0/pipe", "why": "a FIFO (not read)"} in backup["skipped"]
    with tarfile.open(archive) as tar:
        names = tar.getnames()
        assert names[0] == "manifest.json"
        assert not any(".env" in n or "signing" in n for n in names)
        assert tar.getmember("spaces/space0/passwd-link").issym()

    target = make_install(tmp_path / "dst", "dst")
    restored = ok(target, "restore", str(archive))
    src_url, dst_url = (
        default_sqlite_url(sqlite_source / "data"),
        default_sqlite_url(target / "data"),
    )
    for table in COMPARED:
        assert await rows(dst_url, table) == await rows(src_url, table), table
    assert restored["restored_counts"]["messages"] == 10
    assert restored["revision_after"] == head_revision()
    want = tree(sqlite_source / "data" / "spaces")
    del want["space0/pipe"]  # a FIFO is never read nor restored
    assert tree(target / "data" / "spaces") == want
    assert want["space0/passwd-link"] == ("link", "/etc/passwd")
    # The target's own config is kept unless asked.
    assert json.loads((target / "mercury.yaml").read_text())["instance"] == "dst"


async def test_restore_refuses_a_non_empty_install_without_force(
    sqlite_source: Path, tmp_path: Path
) -> None:
    archive = Path(ok(sqlite_source, "backup", str(tmp_path / "b.tar.gz"))["path"])
    line = refused(sqlite_source, "restore", str(archive))
    assert "not empty (2 spaces, 10 messages" in line and "--force" in line
    (sqlite_source / "data" / "spaces" / "space0" / "new.txt").write_text("after backup")
    await fill(default_sqlite_url(sqlite_source / "data"), spaces=3, messages=1)
    restored = ok(sqlite_source, "restore", "--force", str(archive))
    assert restored["restored_counts"]["messages"] == 10
    assert not (sqlite_source / "data" / "spaces" / "space0" / "new.txt").exists()
    assert not (sqlite_source / "data" / "spaces" / "space0" / "pipe").exists()


async def test_a_tampered_archive_is_refused_before_anything_changes(
    sqlite_source: Path, tmp_path: Path
) -> None:
    archive = Path(ok(sqlite_source, "backup", str(tmp_path / "b.tar.gz"))["path"])
    target = make_install(tmp_path / "dst", "dst")
    evil = rewrite(
        archive,
        lambda name, data: b"QUARTERLY NUMBERS\n" if name.endswith("report.txt") else data,
    )
    line = refused(target, "restore", str(evil))
    assert "spaces/space0/inbox/report.txt does not match its checksum" in line
    assert not (target / "data" / "mercury.db").exists()
    assert not (target / "data" / "spaces").exists()
    cut = tmp_path / "cut.tar.gz"
    cut.write_bytes(archive.read_bytes()[: archive.stat().st_size // 2])
    assert "damaged or cut short" in refused(target, "restore", str(cut))


async def test_a_backup_from_a_newer_schema_is_refused_naming_the_version(
    sqlite_source: Path, tmp_path: Path
) -> None:
    archive = Path(ok(sqlite_source, "backup", str(tmp_path / "b.tar.gz"))["path"])

    def newer(name: str, data: bytes) -> bytes:
        if name != "manifest.json":
            return data
        m = json.loads(data)
        m["database"]["revision"], m["mercury_version"] = "9999", "9.9.9"
        return json.dumps(m).encode()

    target = make_install(tmp_path / "dst", "dst")
    line = refused(target, "restore", str(rewrite(archive, newer)))
    assert "'9999'" in line and "install Mercury 9.9.9 or newer" in line
    assert not (target / "data" / "mercury.db").exists()


async def test_an_older_backup_is_migrated_on_restore(sqlite_source: Path, tmp_path: Path) -> None:
    src_url = default_sqlite_url(sqlite_source / "data")
    await downgrade(src_url, "0008")
    backup = ok(sqlite_source, "backup", str(tmp_path / "old.tar.gz"))
    assert backup["revision"] == "0008"
    target = make_install(tmp_path / "dst", "dst")
    restored = ok(target, "restore", str(tmp_path / "old.tar.gz"))
    assert restored["revision_before"] == "0008"
    assert restored["revision_after"] == head_revision()
    assert any("migrated from schema revision 0008" in n for n in restored["notes"])
    dst_url = default_sqlite_url(target / "data")
    for table in COMPARED:
        assert await rows(dst_url, table) == await rows(src_url, table), table


async def test_restore_refuses_while_the_database_is_open(
    sqlite_source: Path, tmp_path: Path
) -> None:
    archive = Path(ok(sqlite_source, "backup", str(tmp_path / "b.tar.gz"))["path"])
    holder = open(sqlite_source / "data" / "mercury.db", "rb")  # noqa: SIM115
    try:
        line = refused(sqlite_source, "restore", "--force", str(archive))
    finally:
        holder.close()
    assert "is open in process" in line and "stop Mercury" in line


async def test_with_config_brings_the_config_back_without_secrets(
    sqlite_source: Path, tmp_path: Path
) -> None:
    config = json.loads((sqlite_source / "mercury.yaml").read_text())
    config["log"] = {"level": "debug"}
    (sqlite_source / "mercury.yaml").write_text(json.dumps(config))
    archive = Path(ok(sqlite_source, "backup", str(tmp_path / "b.tar.gz"))["path"])
    target = make_install(tmp_path / "dst", "dst")
    restored = ok(target, "restore", "--with-config", str(archive))
    assert restored["config_restored"] == str(target / "mercury.yaml")
    assert json.loads((target / "mercury.yaml").read_text())["log"] == {"level": "debug"}
    assert (target / "mercury.yaml.before-restore").is_file()


# --------------------------------------------------------------------------- PostgreSQL


@pytest.mark.postgres
async def test_backup_and_restore_a_postgres_install(
    postgres_server_url: str, tmp_path: Path
) -> None:
    async with (
        fresh_postgres_database(postgres_server_url) as src_url,
        fresh_postgres_database(postgres_server_url) as dst_url,
    ):
        src = make_install(tmp_path / "src", "src", src_url)
        assert cli(src, "db", "upgrade").returncode == 0
        await fill(src_url, spaces=3, messages=20)
        (src / "data" / "spaces" / "space1").mkdir(parents=True)
        (src / "data" / "spaces" / "space1" / "notes.md").write_text("# notes\n")
        backup = ok(src, "backup", str(tmp_path / "pg.tar.gz"))
        assert backup["database"] == "postgresql" and backup["counts"]["messages"] == 60
        with tarfile.open(tmp_path / "pg.tar.gz") as tar:
            config = tar.extractfile("config/mercury.yaml").read().decode()  # type: ignore[union-attr]
        password = parse_database_url(src_url).password
        assert password and password not in config and "***" in config

        dst = make_install(tmp_path / "dst", "dst", dst_url)
        assert cli(dst, "db", "upgrade").returncode == 0  # an empty, migrated target
        restored = ok(dst, "restore", str(tmp_path / "pg.tar.gz"))
        assert restored["restored_counts"]["messages"] == 60
        for table in COMPARED:
            assert await rows(dst_url, table) == await rows(src_url, table), table
        assert (dst / "data" / "spaces" / "space1" / "notes.md").read_text() == "# notes\n"
        # Recall's index came along: the generated search column answers.
        engine = create_async_engine(parse_database_url(dst_url))
        async with engine.connect() as conn:
            hits = await conn.exec_driver_sql(
                "SELECT count(*) FROM messages WHERE text_search @@ plainto_tsquery('simple', "
                "'hello')"
            )
            assert hits.scalar() == 60
        await engine.dispose()
        # A SQLite install cannot take it, and says how.
        lite = make_install(tmp_path / "lite", "lite")
        assert "restore it into an install whose database_url is postgresql" in refused(
            lite, "restore", str(tmp_path / "pg.tar.gz")
        )


@pytest.mark.postgres
async def test_a_sqlite_backup_into_postgres_is_refused_with_the_way(
    sqlite_source: Path, postgres_server_url: str, tmp_path: Path
) -> None:
    archive = Path(ok(sqlite_source, "backup", str(tmp_path / "b.tar.gz"))["path"])
    async with fresh_postgres_database(postgres_server_url) as url:
        target = make_install(tmp_path / "pg", "pg", url)
        line = refused(target, "restore", str(archive))
    assert "mercury db copy" in line


# --------------------------------------------------------------------------- live


@pytest.mark.docker
def test_backup_of_a_live_instance_under_load(
    site: Any, fake: FakeModelServer, tmp_path: Path
) -> None:
    m = site(max_concurrency=3)
    m.start()
    fake.responder = echo_responder()
    spaces = ["alpha", "beta", "gamma"]
    for s in spaces:
        m.post(s, f"{s}: first")
    for s in spaces:
        m.wait_replies(s, 1)
    url = default_sqlite_url(m.data_dir)

    async def plant() -> list[str]:
        from mercury.storage import list_spaces
        from mercury.storage.roles import set_role
        from mercury.storage.tasks import add_task

        db = Database(url)
        try:
            ids = [s.id for s in await list_spaces(db)]
            await add_task(db, ids[0], "daily summary", interval_s=86400)
            await set_role(db, ids[0], "web", "bob", "member")
            return ids
        finally:
            await db.dispose()

    ids = asyncio.run(plant())
    first = m.data_dir / "spaces" / ids[0]
    (first / "outbox" / "chart.csv").write_text("a,b\n1,2\n")
    os.symlink("/etc/passwd", first / "passwd")
    os.mkfifo(first / "fifo")

    stop = threading.Event()
    sent: list[str] = []

    def load() -> None:
        i = 0
        while not stop.is_set():
            space = spaces[i % len(spaces)]
            m.post(space, f"{space}: message {i} " + "x" * (i % 50))
            sent.append(space)
            i += 1

    worker = threading.Thread(target=load)
    worker.start()
    try:
        while len(sent) < 10:
            stop.wait(0.05)
        done = mercury("backup", str(tmp_path), "--json", cwd=m.root)
        more = len(sent)
        while len(sent) < more + 5:  # still accepting messages after the backup
            stop.wait(0.05)
    finally:
        stop.set()
        worker.join()
    assert done.returncode == 0, done.stderr
    backup = json.loads(done.stdout)
    assert m.stop() == 0

    target = make_install(tmp_path / "restored", "restored")
    restored = ok(target, "restore", backup["path"])
    dst_url = default_sqlite_url(target / "data")
    got = asyncio.run(rows(dst_url, "messages"))
    source = asyncio.run(rows(url, "messages"))
    # Every message in the backup is whole and is the source's; later ones are not in it.
    assert set(got) <= set(source) and len(got) < len(source)
    assert len(got) == backup["counts"]["messages"] == restored["restored_counts"]["messages"]
    for table in ("tasks", "roles", "spaces"):
        assert asyncio.run(rows(dst_url, table)) == asyncio.run(rows(url, table)), table
    mine = target / "data" / "spaces" / ids[0]
    assert (mine / "outbox" / "chart.csv").read_text() == "a,b\n1,2\n"
    assert os.readlink(mine / "passwd") == "/etc/passwd"
    assert not (mine / "fifo").exists()
    assert sorted(p.name for p in (target / "data" / "spaces").iterdir()) == sorted(ids)


@pytest.mark.postgres
async def test_a_postgres_restore_that_fails_half_way_leaves_the_database_as_it_was(
    postgres_server_url: str, tmp_path: Path
) -> None:
    async with (
        fresh_postgres_database(postgres_server_url) as src_url,
        fresh_postgres_database(postgres_server_url) as dst_url,
    ):
        src = make_install(tmp_path / "src", "src", src_url)
        assert cli(src, "db", "upgrade").returncode == 0
        await fill(src_url, spaces=2, messages=5)
        ok(src, "backup", str(tmp_path / "pg.tar.gz"))

        dst = make_install(tmp_path / "dst", "dst", dst_url)
        assert cli(dst, "db", "upgrade").returncode == 0
        await fill(dst_url, spaces=1, messages=3)
        before = {table: await rows(dst_url, table) for table in COMPARED}
        # A sequence the old tables no longer own survives their DROP, so the dump's
        # CREATE SEQUENCE of the same name fails in the middle of the restore.
        engine = create_async_engine(parse_database_url(dst_url))
        async with engine.begin() as conn:
            await conn.exec_driver_sql("ALTER SEQUENCE messages_id_seq OWNED BY NONE")
        await engine.dispose()

        line = refused(dst, "restore", "--force", str(tmp_path / "pg.tar.gz"))
        assert "restoring the database (nothing was changed) failed" in line, line
        assert "messages_id_seq" in line, line
        for table in COMPARED:
            assert await rows(dst_url, table) == before[table], table
