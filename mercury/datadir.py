"""The data dir is Mercury's alone: 0700, files 0600, whatever made them.

It holds the database, every space's files, the runs' io dirs (with their tokens), the
host API sockets and the web chat's uploads. Nobody else on the host needs any of it
(containers get their own folders through bind mounts, which do not need the parents to
be open), so the folder is closed to other users; a SQLite database elsewhere
(database_url) is made 0600 as well. The commands that run Mercury (`mercury run`,
`mercury sandbox run`) also set the process umask to 077, so whatever they create is
private from the start.
"""

from __future__ import annotations

import os
import stat
from pathlib import Path

from mercury.config import Config

_SQLITE_PREFIX = "sqlite+aiosqlite:///"


class DataDirError(OSError):
    """The data dir cannot be made private (one line naming the path and the fix)."""


def prepare_data_dir(config: Config) -> Path:
    """Create the data dir or close it (0700), and tighten the SQLite files to 0600."""
    path = config.data_dir
    try:
        path.mkdir(parents=True, exist_ok=True, mode=0o700)
        st = path.lstat()
    except OSError as exc:
        raise DataDirError(f"data_dir: cannot create {path}: {exc.strerror}") from exc
    if not stat.S_ISDIR(st.st_mode):
        raise DataDirError(f"data_dir: {path} is not a folder")
    if st.st_uid != os.geteuid():
        raise DataDirError(
            f"data_dir: {path} belongs to uid {st.st_uid}, not to Mercury's uid {os.geteuid()}; "
            "give it to Mercury's user (chown) or choose another data_dir"
        )
    if stat.S_IMODE(st.st_mode) != 0o700:
        os.chmod(path, 0o700)
    url = config.resolved_database_url()
    if url.startswith(_SQLITE_PREFIX):
        db = Path(url[len(_SQLITE_PREFIX) :].split("?", 1)[0])
        for candidate in (db, Path(f"{db}-wal"), Path(f"{db}-shm"), Path(f"{db}-journal")):
            try:
                mode = stat.S_IMODE(candidate.lstat().st_mode)
            except OSError:
                continue
            if mode & 0o077:
                os.chmod(candidate, 0o600)
    return path
