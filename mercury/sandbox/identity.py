"""Who the agent is on the host: the uid:gid its container runs as, and files made for it.

Everything a container writes into its space is owned, on the host, by the container's
uid. If that uid were a real login user (uid 1000 is the first one on most Linux
machines), that person could read every space and plant symlinks in them. So by default
(`container.user: auto`) a root Mercury runs agents as `AUTO_CONTAINER_ID`, an id no host
account has; a Mercury without root runs them as its own uid, because it cannot hand files
to anyone else without making them world-writable. `host_owner_of()` tells the operator
when the chosen id does belong to someone (doctor and start-up warn).
"""

from __future__ import annotations

import grp
import os
import pwd
from dataclasses import dataclass
from pathlib import Path

from mercury.config import AUTO_CONTAINER_ID, ContainerConfig


@dataclass(frozen=True)
class ContainerIdentity:
    uid: int
    gid: int

    @property
    def user(self) -> str:
        """The `uid:gid` string Docker takes."""
        return f"{self.uid}:{self.gid}"


class IdentityError(ValueError):
    """The configured container user cannot work for this Mercury process (one line)."""


def parse_user(user: str) -> tuple[int, int]:
    """`"2000:2000"` or `"2000"` -> (uid, gid)."""
    uid, _, gid = user.partition(":")
    return int(uid), int(gid or uid)


def resolve_identity(setting: str, euid: int, egid: int) -> ContainerIdentity:
    """The container's uid:gid for `container.user` = `setting` in a process with euid/egid.

    Pure: the decision only. A non-root Mercury can only give files to itself, so an
    explicit other uid is refused with the fix rather than worked around with mode 0777.
    """
    if setting == "auto":
        if euid == 0:
            return ContainerIdentity(AUTO_CONTAINER_ID, AUTO_CONTAINER_ID)
        return ContainerIdentity(euid, egid)
    uid, gid = parse_user(setting)
    if uid == 0:
        raise IdentityError(f"container.user: {setting!r}: containers never run as root")
    if euid != 0 and uid != euid:
        raise IdentityError(
            f"container.user: {setting!r} needs Mercury to run as root, to hand the space "
            f"folders to uid {uid}; Mercury runs as uid {euid}. Run it as root, or set "
            "container.user to auto (agents then run as Mercury's own uid)"
        )
    return ContainerIdentity(uid, gid)


def container_identity(config: ContainerConfig) -> ContainerIdentity:
    """`resolve_identity` for this process."""
    return resolve_identity(config.user, os.geteuid(), os.getegid())


def host_owner_of(ident: ContainerIdentity, *, etc: Path = Path("/etc")) -> str | None:
    """Who on this host already has the container's ids, if anyone (None: nobody).

    Only meaningful when Mercury runs as root (otherwise the id is Mercury's own). Looks at
    the account databases and at the subordinate id ranges of rootless containers.
    """
    if ident.uid == os.geteuid():
        return None
    try:
        return f"uid {ident.uid} is the host account {pwd.getpwuid(ident.uid).pw_name!r}"
    except KeyError:
        pass
    try:
        return f"gid {ident.gid} is the host group {grp.getgrgid(ident.gid).gr_name!r}"
    except KeyError:
        pass
    for name, value in (("subuid", ident.uid), ("subgid", ident.gid)):
        try:
            lines = (etc / name).read_text().splitlines()
        except OSError:
            continue
        for line in lines:
            owner, _, rest = line.partition(":")
            start, _, count = rest.partition(":")
            inside = start.isdigit() and count.isdigit()
            if inside and int(start) <= value < int(start) + int(count):
                return f"id {value} is in {owner}'s subordinate range in /etc/{name}"
    return None
