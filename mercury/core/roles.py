"""What one Mercury process does: everything (the default), the gateway, or a worker.

`mercury run` is the all-in-one process. With several machines (docs/scale-out.md)
`mercury run --role gateway` holds the chat connections, the web server, the dashboard and
the scheduler and delivers every reply; `mercury worker` claims jobs and runs their
containers on its own Docker engine. They share one PostgreSQL database and one data dir.
"""

from __future__ import annotations

import enum

SCALE_OUT_DOC = "docs/scale-out.md"


class Role(enum.StrEnum):
    ALL = "all"
    GATEWAY = "gateway"
    WORKER = "worker"

    @property
    def runs_containers(self) -> bool:
        return self is not Role.GATEWAY

    @property
    def talks_to_chats(self) -> bool:
        return self is not Role.WORKER


def role_problem(role: Role, database_url: str) -> str | None:
    """Why this role cannot run on this database (one line naming the key), or None.

    A gateway and workers are several processes on one database: SQLite serves one."""
    if role is Role.ALL or database_url.startswith("postgresql"):
        return None
    what = "a gateway" if role is Role.GATEWAY else "a worker"
    return (
        f"database_url: {what} shares its database with the other processes, and SQLite "
        "serves one process; use PostgreSQL (docs/operations.md#moving-to-postgresql) or "
        f"run everything in one `mercury run` ({SCALE_OUT_DOC})"
    )


def space_limit_for(role: Role, space_limit: str) -> tuple[str, str | None]:
    """The `disk.space_limit` this role uses, and why it refuses the configured one.

    A space image (`image`) is an ext4 file loop-mounted at the space's folder: one kernel
    may mount it at a time, and it is mounted by the process using it. With a gateway and
    workers every process uses every space (the folder is shared), so they watch sizes
    (`watch`) instead; `auto` becomes `watch`, an explicit `image` is refused."""
    if role is Role.ALL:
        return space_limit, None
    if space_limit == "image":
        return space_limit, (
            "disk.space_limit: image mounts each space on one machine, but a gateway and "
            "its workers share every space; use watch (or auto, which is watch here) "
            f"({SCALE_OUT_DOC})"
        )
    return "watch", None


def run_tag(process_id: str) -> str:
    """The tag a process puts in front of its run ids: its id without the "mercury-"."""
    return process_id.removeprefix("mercury-")


__all__ = ["SCALE_OUT_DOC", "Role", "role_problem", "run_tag", "space_limit_for"]
