"""`mercury service install` started under a REAL systemd: systemd as PID 1 in a container.

The machine running the tests has no systemd as PID 1, but Docker can run one: an image
with systemd (tests/images/systemd) started with /lib/systemd/systemd as its command. The
repo (with its .venv), the Python the venv is built on, and the site's folder are
bind-mounted at the SAME paths as on the host, with the host's Docker socket: agents'
containers are started by the host engine and bind-mount host paths, so every path Mercury
hands to Docker must mean the same inside and out. --network host makes the web chat and
the fake model server on 127.0.0.1 reachable both ways.

What this proves that `systemd-analyze verify` cannot: the rendered sandbox (ProtectSystem,
ProtectHome, PrivateTmp, ...) leaves Mercury able to start, reach Docker and answer a
message; systemd restarts it after a crash; a stop is clean, not a timeout; uninstall
removes it. Both as root (--as-root) and as a dedicated user (--user mercury, which needs
the host's docker gid as a group in the container and a /root it can enter). Space images
stay off (`disk.space_limit: watch`): a loop mount made inside this container would be
invisible to the host engine.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import sys
import time
import urllib.request
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import docker
import pytest

from mercury.core.service_unit import parse_show
from tests.fakes.model_server import FakeModelServer
from tests.integration.conftest import instance_containers
from tests.integration.mercury_site import Mercury, echo_responder

REPO = Path(__file__).resolve().parents[2]
DOCKERFILE_DIR = REPO / "tests" / "images" / "systemd"
MERCURY_BIN = str(REPO / ".venv" / "bin" / "mercury")
UNIT = "mercury.service"
DEADLINE_S = 180.0  # generous: polls end as soon as the state is reached
# systemd 252 (bookworm) restarts after RestartSec=30s; newer ones after 2 s.
RESTART_DEADLINE_S = 240.0


@pytest.fixture(scope="session")
def systemd_image(docker_client: docker.DockerClient, base_image: str) -> str:
    """tests/images/systemd FROM the base image, built once; the tag hashes both."""
    digest = hashlib.sha256(docker_client.images.get(base_image).id.encode())
    for path in sorted(p for p in DOCKERFILE_DIR.rglob("*") if p.is_file()):
        digest.update(path.name.encode() + b"\0" + path.read_bytes())
    tag = f"mercury-test-systemd:{digest.hexdigest()[:12]}"
    try:
        docker_client.images.get(tag)
    except docker.errors.ImageNotFound:
        docker_client.images.build(
            path=str(DOCKERFILE_DIR),
            tag=tag,
            buildargs={"BASE_IMAGE": base_image},
            rm=True,
            pull=False,
        )
    return tag


class Systemd:
    """One systemd container; commands run in it with `docker exec`."""

    def __init__(self, container: Any) -> None:
        self.container = container

    def run(self, *cmd: str) -> tuple[int, str]:
        code, output = self.container.exec_run(
            list(cmd), environment={"COLUMNS": "200", "NO_COLOR": "1", "TERM": "dumb"}
        )
        return int(code), output.decode(errors="replace")

    def show(self, *props: str) -> dict[str, str]:
        code, out = self.run("systemctl", "show", UNIT, "--property=" + ",".join(props))
        assert code == 0, out
        return parse_show(out)

    def journal(self) -> str:
        return self.run("journalctl", "-u", UNIT, "--no-pager", "-n", "80")[1]


def wait_for(what: str, check: Callable[[], bool], timeout: float = DEADLINE_S) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if check():
            return
        time.sleep(0.5)
    raise AssertionError(f"timed out waiting for {what}")


def answers(url: str) -> bool:
    try:
        with urllib.request.urlopen(f"{url}/healthz", timeout=2):
            return True
    except OSError:
        return False


@contextlib.contextmanager
def systemd_container(
    client: docker.DockerClient, image: str, site_dir: Path, instance: str
) -> Iterator[Systemd]:
    """systemd as PID 1 with the mounts the module doc names; always removed afterwards,
    with the site's agent containers; the unit's journal is printed when the body fails."""
    python_home = str(Path(sys.base_prefix).resolve())
    volumes = {
        str(REPO): {"bind": str(REPO), "mode": "ro"},
        python_home: {"bind": python_home, "mode": "ro"},
        str(site_dir): {"bind": str(site_dir), "mode": "rw"},
        "/var/run/docker.sock": {"bind": "/var/run/docker.sock", "mode": "rw"},
        "/sys/fs/cgroup": {"bind": "/sys/fs/cgroup", "mode": "rw"},
    }
    container = client.containers.run(
        image,
        ["/lib/systemd/systemd"],
        detach=True,
        cap_add=["SYS_ADMIN"],
        security_opt=["seccomp=unconfined"],
        network_mode="host",
        volumes=volumes,
        tmpfs={"/run": "", "/run/lock": ""},
        labels={"mercury-test": "systemd"},
    )
    box = Systemd(container)
    try:
        wait_for(
            "systemd to come up",
            lambda: box.run("systemctl", "is-system-running")[1].strip() in ("running", "degraded"),
        )
        yield box
    except BaseException:
        print(f"--- journalctl -u {UNIT} ---\n{box.journal()}", file=sys.stderr)
        raise
    finally:
        with contextlib.suppress(docker.errors.APIError):
            container.remove(force=True)
        for c in instance_containers(client, instance):
            with contextlib.suppress(docker.errors.APIError):
                c.remove(force=True)


def test_service_runs_restarts_and_stops_under_real_systemd(
    docker_client: docker.DockerClient,
    systemd_image: str,
    site: Callable[..., Mercury],
    fake: FakeModelServer,
) -> None:
    fake.responder = echo_responder()
    m = site(extra={"disk": {"space_limit": "watch"}})
    config = str(m.root / "mercury.yaml")
    with systemd_container(docker_client, systemd_image, m.root, m.instance) as box:
        code, out = box.run(MERCURY_BIN, "service", "install", "--as-root", "--config", config)
        assert code == 0, out

        wait_for("mercury service status: active", lambda: box.run(
            MERCURY_BIN, "service", "status")[0] == 0)  # fmt: skip
        wait_for("the web chat", lambda: answers(m.url))
        m.post("s1", "under systemd")
        assert m.wait_replies("s1", 1)[0]["text"] == "re: under systemd"

        props = box.show(
            "User", "ProtectSystem", "ProtectHome", "PrivateTmp", "NoNewPrivileges",
            "ReadWritePaths", "ExecStart", "NRestarts", "MainPID",
        )  # fmt: skip
        assert props["User"] == "root"
        assert props["ProtectSystem"] == "strict"
        assert props["ProtectHome"] == "read-only"  # the interpreter resolves into /root
        assert props["PrivateTmp"] == "no"  # the site is in pytest's /tmp folder
        assert props["NoNewPrivileges"] == "yes"
        assert str(m.data_dir) in props["ReadWritePaths"].split()
        assert f"path={REPO}/.venv/bin/python" in props["ExecStart"]
        assert props["NRestarts"] == "0"

        code, out = box.run(MERCURY_BIN, "status", "--config", config)
        assert code == 0, out
        assert f"Mercury {m.instance}: running" in out

        # A crash: systemd starts it again, and it answers again.
        first_pid = props["MainPID"]
        code, out = box.run("sh", "-c", f"kill -KILL {first_pid}")  # not systemctl kill
        assert code == 0, out

        def restarted() -> bool:
            now = box.show("NRestarts", "ActiveState", "MainPID")
            return (now["NRestarts"], now["ActiveState"]) == ("1", "active") and now[
                "MainPID"
            ] not in ("0", first_pid)

        wait_for("systemd to restart mercury", restarted, timeout=RESTART_DEADLINE_S)
        wait_for("the web chat after the restart", lambda: answers(m.url))
        m.post("s2", "after a crash")
        assert m.wait_replies("s2", 1)[0]["text"] == "re: after a crash"

        code, out = box.run("systemctl", "stop", UNIT)
        assert code == 0, out
        stopped = box.show("ActiveState", "Result", "ExecMainStatus", "ExecMainCode")
        assert stopped["ActiveState"] == "inactive", stopped
        assert stopped["Result"] == "success", stopped  # not "timeout"
        assert not answers(m.url)
        assert instance_containers(docker_client, m.instance) == []  # its runs cleaned up

        code, out = box.run(MERCURY_BIN, "service", "uninstall")
        assert code == 0, out
        assert box.run("test", "-e", f"/etc/systemd/system/{UNIT}")[0] == 1
        code, out = box.run(MERCURY_BIN, "service", "status")
        assert code == 3, out
        assert "not installed" in out


def test_dedicated_user_service_under_real_systemd(
    docker_client: docker.DockerClient,
    systemd_image: str,
    site: Callable[..., Mercury],
    fake: FakeModelServer,
) -> None:
    """`--user mercury`: refused while the interpreter is closed to that user (in /root),
    then, once it can reach it, a service without capabilities that runs agents as itself."""
    fake.responder = echo_responder()
    m = site(extra={"disk": {"space_limit": "watch"}})
    m.root.chmod(0o755)  # pytest's tmp folder is root's alone; the user must read the config
    config = str(m.root / "mercury.yaml")
    socket_gid = os.stat("/var/run/docker.sock").st_gid
    with systemd_container(docker_client, systemd_image, m.root, m.instance) as box:
        code, out = box.run("groupadd", "-g", str(socket_gid), "docker")
        assert code == 0, out
        install = [MERCURY_BIN, "service", "install", "--user", "mercury", "--config", config]
        code, out = box.run(*install)
        assert code == 1, out
        assert (
            out.strip()
            .splitlines()[-1]
            .startswith(f"error: the service user mercury cannot run {REPO}/.venv/bin/python")
        ), out
        assert box.run("test", "-e", f"/etc/systemd/system/{UNIT}")[0] == 1

        code, out = box.run("chmod", "755", "/root")  # the container's /root, not the host's
        assert code == 0, out
        code, out = box.run(*install)
        assert code == 0, out
        wait_for("mercury service status: active", lambda: box.run(
            MERCURY_BIN, "service", "status")[0] == 0)  # fmt: skip
        wait_for("the web chat", lambda: answers(m.url))
        m.post("s1", "as a dedicated user")
        assert m.wait_replies("s1", 1)[0]["text"] == "re: as a dedicated user"

        props = box.show("User", "SupplementaryGroups", "CapabilityBoundingSet", "MainPID")
        assert props["User"] == "mercury"
        assert props["SupplementaryGroups"] == "docker"
        assert props["CapabilityBoundingSet"] == ""
        code, uid = box.run("id", "-u", "mercury")
        assert code == 0, uid
        code, status_line = box.run("sh", "-c", f"grep ^Uid: /proc/{props['MainPID']}/status")
        assert status_line.split()[1:] == [uid.strip()] * 4, status_line
        # Its space belongs to it: agents ran as its uid (container.user auto).
        space = m.data_dir / "spaces" / "s1"
        assert space.stat().st_uid == int(uid)

        code, out = box.run("systemctl", "stop", UNIT)
        assert code == 0, out
        assert box.show("Result")["Result"] == "success"
        code, out = box.run(MERCURY_BIN, "service", "uninstall")
        assert code == 0, out
