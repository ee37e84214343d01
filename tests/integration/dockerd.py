"""A private Docker engine for fault tests: its own dockerd, socket, data root and cgroup.

Killing or restarting the host's engine would break every other test (and whatever else
uses it), so engine outages are injected into a second `dockerd` that only the test
talks to. Its folder is short (unix socket paths are limited to ~100 bytes) and lives
under /tmp; `close()` stops the engine and removes everything it made.

The engine runs in a network namespace of its own, with no bridge, iptables or
forwarding: Mercury's runs use network `none`, which needs none of them, and the host's
networking (the main engine's docker0 above all) stays untouched.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path

import docker

# The engine's parent: it starts dockerd on each line read from stdin (printing its pid)
# and, as a child subreaper, reaps every process the engine leaves behind. Killed, dockerd
# takes its containerd down with it; if nobody reaped that zombie at once, the restarted
# dockerd would find it "still running" and wait for its socket in vain. (PID 1 reaps, but
# not always at once.)
_SUPERVISOR = r"""
import ctypes, os, subprocess, sys, threading, time
ctypes.CDLL(None, use_errno=True).prctl(36, 1, 0, 0, 0)  # PR_SET_CHILD_SUBREAPER
def reap():
    while True:
        try:
            os.waitpid(-1, 0)
        except ChildProcessError:
            time.sleep(0.05)
threading.Thread(target=reap, daemon=True).start()
log = open(sys.argv[1], "ab")
for _line in sys.stdin:
    proc = subprocess.Popen(sys.argv[2:], stdout=log, stderr=subprocess.STDOUT,
                            start_new_session=True)
    print(proc.pid, flush=True)
"""


class PrivateEngine:
    """One dockerd of its own. `start()` (again after `kill()`) reuses the data root."""

    def __init__(self) -> None:
        self.name = f"mercury-test-engine-{uuid.uuid4().hex[:8]}"
        self.dir = Path(tempfile.mkdtemp(prefix="mdk", dir="/tmp"))
        self.socket = self.dir / "docker.sock"
        self.host = f"unix://{self.socket}"
        self.pid: int | None = None
        self._log = self.dir / "dockerd.log"
        self._supervisor: subprocess.Popen[str] | None = None

    # ------------------------------------------------------------------ lifecycle

    def start(self, timeout: float = 60.0) -> None:
        """Start dockerd and wait until it answers."""
        assert not self.running, "already running"
        if self._supervisor is None:
            self._supervisor = subprocess.Popen(
                [sys.executable, "-c", _SUPERVISOR, str(self._log),
                 # A network namespace of its own: with --bridge none, dockerd deletes any
                 # `docker0` interface it sees, which would be the host engine's.
                 "unshare", "--net", "--",
                 "dockerd",
                 "--host", self.host,
                 "--data-root", str(self.dir / "root"),
                 "--exec-root", str(self.dir / "exec"),
                 "--pidfile", str(self.dir / "docker.pid"),
                 "--bridge", "none",
                 "--iptables=false",
                 "--ip-masq=false",
                 "--ip-forward=false",
                 "--cgroup-parent", f"/{self.name}"],
                stdin=subprocess.PIPE,
                stdout=subprocess.PIPE,
                text=True,
                # A signal to the test's process group never reaches the engine.
                start_new_session=True,
            )  # fmt: skip
        assert self._supervisor.stdin is not None and self._supervisor.stdout is not None
        self._supervisor.stdin.write("start\n")
        self._supervisor.stdin.flush()
        self.pid = int(self._supervisor.stdout.readline())
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if not self.running:
                raise RuntimeError(f"dockerd exited at start:\n{self.log_tail()}")
            if self.answers():
                return
            time.sleep(0.1)
        raise RuntimeError(f"dockerd did not answer within {timeout:g}s:\n{self.log_tail()}")

    @property
    def running(self) -> bool:
        return self.pid is not None and _alive(self.pid)

    def kill(self) -> None:
        """A crash: SIGKILL, no chance to stop its containers or close its socket."""
        assert self.pid is not None
        with contextlib.suppress(ProcessLookupError):
            os.kill(self.pid, signal.SIGKILL)
        self._wait_gone(30)

    def stop(self) -> None:
        """A clean stop (SIGTERM): dockerd stops its containers and its containerd."""
        if not self.running:
            return
        assert self.pid is not None
        with contextlib.suppress(ProcessLookupError):
            os.kill(self.pid, signal.SIGTERM)
        try:
            self._wait_gone(60)
        except TimeoutError:
            self.kill()

    def close(self) -> None:
        """Stop the engine, with every container of it, and remove its folder and cgroups."""
        if self.pid is not None:
            if not self.running:
                # Killed last: a restart makes it reap what its previous life left running.
                with contextlib.suppress(Exception):
                    self.start()
            with contextlib.suppress(Exception):
                self.remove_all_containers()
            self.stop()
        if self._supervisor is not None:
            self._supervisor.kill()
            self._supervisor.wait(timeout=30)
        # Anything still mounted under the folder (a crash mid-run) goes before the folder.
        mounts = Path("/proc/self/mounts").read_text().splitlines()
        inside = [m.split()[1] for m in mounts if m.split()[1].startswith(str(self.dir))]
        for point in sorted(inside, key=len, reverse=True):
            subprocess.run(["umount", "-l", point], check=False, capture_output=True)
        shutil.rmtree(self.dir, ignore_errors=True)
        for controller in Path("/sys/fs/cgroup").iterdir():
            group = controller / self.name
            if group.is_dir():
                for sub in sorted(group.rglob("*"), key=lambda p: len(p.parts), reverse=True):
                    if sub.is_dir():
                        with contextlib.suppress(OSError):
                            sub.rmdir()
                with contextlib.suppress(OSError):
                    group.rmdir()

    def _wait_gone(self, timeout: float) -> None:
        """Until dockerd and the containerd it ran are gone (reaped)."""
        pidfile = self.dir / "exec" / "containerd" / "containerd.pid"
        containerd = None
        with contextlib.suppress(OSError, ValueError):
            containerd = int(pidfile.read_text().strip())
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            alive = [p for p in (self.pid, containerd) if p is not None and _alive(p)]
            if not alive:
                return
            time.sleep(0.05)
        raise TimeoutError(f"dockerd (or its containerd) still runs after {timeout:g}s")

    # ------------------------------------------------------------------ use

    def client(self, timeout: int = 120) -> docker.DockerClient:
        return docker.DockerClient(base_url=self.host, timeout=timeout)

    def answers(self) -> bool:
        if not self.socket.exists():
            return False
        try:
            client = self.client(timeout=5)
            try:
                return bool(client.ping())
            finally:
                client.close()
        except Exception:
            return False

    def load(self, image: str) -> None:
        """Copy an image from the host's engine into this one (docker save | docker load)."""
        save = subprocess.Popen(["docker", "save", image], stdout=subprocess.PIPE)
        assert save.stdout is not None
        load = subprocess.run(
            ["docker", "-H", self.host, "load", "-q"],
            stdin=save.stdout,
            capture_output=True,
            timeout=300,
            check=False,
        )
        save.stdout.close()
        if save.wait(timeout=300) != 0 or load.returncode != 0:
            raise RuntimeError(f"loading {image} failed: {load.stderr.decode()[-2000:]}")

    def remove_all_containers(self) -> None:
        client = self.client()
        try:
            for container in client.containers.list(ignore_removed=True, all=True):
                with contextlib.suppress(docker.errors.NotFound):
                    container.remove(force=True)
        finally:
            client.close()

    def log_tail(self, lines: int = 40) -> str:
        try:
            return "\n".join(self._log.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return ""


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True
