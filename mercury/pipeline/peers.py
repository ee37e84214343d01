"""The other Mercury processes of this database, read for the decisions in core/peers.py.

The heartbeat rows come from storage (adapter_status.read_processes); whether a pid of
this host exists is asked of the kernel here (signal 0), so core stays free of I/O.
Used at start: by the dispatcher's recovery (whose running jobs belong to dead processes)
and by mercury/app.py (SQLite refuses a second live process).
"""

from __future__ import annotations

import os
import socket
from datetime import datetime

from mercury.core.peers import Here, Peer, live_process_ids, sqlite_refusal
from mercury.core.roles import run_tag
from mercury.storage import Database
from mercury.storage.adapter_status import read_processes
from mercury.storage.models import utcnow
from mercury.storage.session import Store


def pid_alive(pid: int) -> bool:
    """Whether a process with this pid exists on this host (it may belong to another user)."""
    if pid <= 0:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    except OSError:
        return False
    return True


def here(process_id: str | None = None) -> Here:
    """This process, as the heartbeat rows name processes."""
    return Here(host=socket.gethostname(), pid=os.getpid(), process_id=process_id)


async def read_peers(store: Store, *, host: str | None = None) -> list[Peer]:
    """Every process row (newest first), with `pid_alive` checked for those of `host`."""
    host = socket.gethostname() if host is None else host
    return [
        Peer(
            id=p.id,
            host=p.host,
            pid=p.pid,
            interval_s=p.interval_s,
            started_at=p.started_at,
            updated_at=p.updated_at,
            stopped_at=p.stopped_at,
            pid_alive=pid_alive(p.pid) if p.host == host else None,
        )
        for p in await read_processes(store)
    ]


async def second_sqlite_process(db: Database, *, now: datetime | None = None) -> str | None:
    """On SQLite: the one line refusing start while another live process uses the file.

    None on PostgreSQL, which serves several processes."""
    if db.dialect != "sqlite":
        return None
    me = here()
    return sqlite_refusal(await read_peers(db, host=me.host), now or utcnow(), me)


async def live_run_tags(db: Database, process_id: str, *, now: datetime | None = None) -> set[str]:
    """The run tags (core/roles.py) of the other live processes of this database: their
    containers, io dirs and sockets on a shared engine and data dir are not orphans."""
    me = here(process_id)
    live = live_process_ids(await read_peers(db, host=me.host), now or utcnow(), me)
    return {run_tag(p) for p in live if p != process_id}


__all__ = ["here", "live_run_tags", "pid_alive", "read_peers", "second_sqlite_process"]
