"""`mercury run` as a real process on a tmp site, driven over its web chat API.

Shared by the pipeline tests and the end-to-end attack tests; the `fake` and `site`
fixtures that build it live in conftest.py. `mercury(...)` runs one CLI command.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
import uuid
from pathlib import Path
from typing import Any

from tests.fakes.model_server import FakeModelServer, Text, Turn

PASSWORD = "test-dashboard-password-123"
MERCURY = [sys.executable, "-m", "mercury.cli"]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def mercury(
    *args: str,
    cwd: Path,
    env: dict[str, str] | None = None,
    timeout: float = 120,
    stdin: str | None = None,
) -> subprocess.CompletedProcess[str]:
    """`mercury *args` as a subprocess in `cwd`, without the caller's MERCURY_* variables."""
    full_env = {k: v for k, v in os.environ.items() if not k.startswith("MERCURY_")}
    full_env.update({"COLUMNS": "200", "NO_COLOR": "1", "TERM": "dumb"})
    full_env.update(env or {})
    return subprocess.run(
        [*MERCURY, *args],
        cwd=cwd,
        env=full_env,
        capture_output=True,
        text=True,
        timeout=timeout,
        input=stdin if stdin is not None else "",
    )


def last_user_text(body: dict[str, Any]) -> str:
    """The newest user text in a model request, in either wire format."""
    for msg in reversed(body.get("messages", [])):
        if msg.get("role") != "user":
            continue
        content = msg.get("content")
        if isinstance(content, str):
            return content
        texts = [b.get("text", "") for b in content or [] if b.get("type") == "text"]
        if texts:
            return texts[-1]
    return ""


def echo_responder(delay: float = 0.0) -> Any:
    def respond(body: dict[str, Any]) -> Turn:
        text = last_user_text(body).split(":", 1)[-1].strip()
        return Turn([Text(f"re: {text}")], delay=delay)

    return respond


class Mercury:
    """A `mercury run` process on a tmp site, driven over its web chat API."""

    def __init__(self, root: Path, image: str, fake: FakeModelServer, **cfg: Any) -> None:
        self.root = root
        self.port = free_port()
        self.instance = f"p{uuid.uuid4().hex[:10]}"
        self.url = f"http://127.0.0.1:{self.port}"
        self.proc: subprocess.Popen[str] | None = None
        limits = cfg.get("rate_limits", {"burst": 100, "burst_window": 60})
        config = {
            "instance": self.instance,
            "data_dir": str(root / "data"),
            "server": {"host": "127.0.0.1", "port": self.port},
            "log": {"format": "json", "level": "info"},
            "container": {
                "image": image,
                "memory": "512m",
                "timeout": cfg.get("timeout", 60),
                "max_concurrency": cfg.get("max_concurrency", 2),
                # Off unless a test asks (warm=True): a waiting container per active space
                # costs each test its making and removal; tests/integration/
                # test_warm_containers.py, tests/adapters/test_streaming.py and the
                # pipeline's mercury-run test prove the default (on).
                "warm": {"enabled": bool(cfg.get("warm", False))},
            },
            "model": {"chain": [{"provider": "anthropic", "model": "claude-test",
                                 "base_url": fake.url}]},
            "rate_limits": limits,
        }  # fmt: skip
        for key, value in cfg.get("extra", {}).items():  # whole sections or top-level keys
            if isinstance(value, dict) and isinstance(config.get(key), dict):
                config[key] = {**config[key], **value}
            else:
                config[key] = value
        self.data_dir = Path(config["data_dir"])
        (root / "mercury.yaml").write_text(json.dumps(config))
        (root / ".env").write_text(
            f"MERCURY_DASHBOARD_PASSWORD={PASSWORD}\nANTHROPIC_API_KEY=sk-ant-pipeline-test-000\n"
        )

    def env(self) -> dict[str, str]:
        return {k: v for k, v in os.environ.items() if not k.startswith("MERCURY_")}

    def start(self, *args: str) -> None:
        """Start `mercury run` (with extra command-line `args`); wait until it is healthy."""
        env = self.env()
        self.log = open(self.root / f"mercury-{time.monotonic_ns()}.log", "w")  # noqa: SIM115
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "mercury.cli", "run", *args],
            cwd=self.root, env=env, stdout=self.log, stderr=subprocess.STDOUT, text=True,
        )  # fmt: skip
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            assert self.proc.poll() is None, self.logs()
            try:
                with urllib.request.urlopen(f"{self.url}/healthz", timeout=2):
                    return
            except OSError:
                time.sleep(0.1)
        raise AssertionError("mercury did not come up:\n" + self.logs())

    def logs(self) -> str:
        return "".join(p.read_text() for p in sorted(self.root.glob("mercury-*.log")))

    def stop(self, sig: int = signal.SIGTERM) -> int:
        assert self.proc is not None
        if self.proc.poll() is None:
            self.proc.send_signal(sig)
        code = self.proc.wait(timeout=90)
        self.log.close()
        return code

    def request(self, method: str, path: str, body: dict[str, Any] | None = None) -> Any:
        data = json.dumps(body).encode() if body is not None else None
        req = urllib.request.Request(
            self.url + path, data=data, method=method,
            headers={"Authorization": f"Bearer {PASSWORD}", "Content-Type": "application/json"},
        )  # fmt: skip
        with urllib.request.urlopen(req, timeout=10) as resp:
            return json.loads(resp.read())

    def post(self, space: str, text: str, client_id: str | None = None) -> str:
        body: dict[str, Any] = {"space": space, "text": text}
        if client_id:
            body["client_id"] = client_id
        return str(self.request("POST", "/api/chat/messages", body)["id"])

    def upload(self, space: str, name: str, data: bytes, text: str = "") -> str:
        """POST /api/chat/files with one file (multipart), as a script would."""
        boundary = uuid.uuid4().hex
        parts = [
            f'--{boundary}\r\nContent-Disposition: form-data; name="space"\r\n\r\n{space}\r\n',
            f'--{boundary}\r\nContent-Disposition: form-data; name="text"\r\n\r\n{text}\r\n',
            f'--{boundary}\r\nContent-Disposition: form-data; name="file"; filename="{name}"'
            "\r\nContent-Type: application/octet-stream\r\n\r\n",
        ]
        body = "".join(parts).encode() + data + f"\r\n--{boundary}--\r\n".encode()
        req = urllib.request.Request(
            self.url + "/api/chat/files", data=body, method="POST",
            headers={"Authorization": f"Bearer {PASSWORD}",
                     "Content-Type": f"multipart/form-data; boundary={boundary}"},
        )  # fmt: skip
        with urllib.request.urlopen(req, timeout=10) as resp:
            return str(json.loads(resp.read())["id"])

    def fetch(self, url: str) -> bytes:
        auth = {"Authorization": f"Bearer {PASSWORD}"}
        req = urllib.request.Request(self.url + url, headers=auth)
        with urllib.request.urlopen(req, timeout=10) as resp:
            return bytes(resp.read())

    def messages(self, space: str) -> list[dict[str, Any]]:
        return list(self.request("GET", f"/api/chat/messages?space={space}")["messages"])

    def replies(self, space: str) -> list[dict[str, Any]]:
        """The bot's replies: not a streamed answer's preview (edited as the model writes,
        withdrawn once the reply is out), nor a withdrawn message."""
        return [
            m
            for m in self.messages(space)
            if m["role"] == "assistant" and not m.get("preview") and not m.get("deleted")
        ]

    def wait_replies(self, space: str, n: int, timeout: float = 120) -> list[dict[str, Any]]:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            got = self.replies(space)
            if len(got) >= n:
                return got
            time.sleep(0.2)
        raise AssertionError(
            f"{space}: wanted {n} replies, got {self.messages(space)}\n{self.logs()[-4000:]}"
        )
