"""A scripted stand-in for the agent: input.json's `prompt` says how to behave.

- echo TEXT: ok, reply TEXT
- fail MSG: ok:false, error MSG
- crash N: print 60 numbered lines to stderr, exit N without a result
- oom: allocate memory until the kernel kills us
- sleep S: sleep S seconds, then ok
- malformed: write invalid JSON to result.json
- result-then-exit [S] [N] [D]: after D s (0) write a result, sleep S (0.5), exit N (0)
- result-then-hang [D]: after D s (0) write a result, then sleep for a long time
- forkbomb: fork until refused; reply {"count", "errno", "error"}
- write-root: try writing outside the writable mounts; reply {path: "ok" | errno}
- ls-space: reply the sorted list of every path under /space
- read PATH: reply {"exists", "content"}
- env: reply the environment the process started with, as JSON
- id: reply uid, gid, groups, capabilities, no_new_privs
- outbox NAME: write /space/outbox/NAME and list it in files
- connect PATH: connect to a unix socket, send the run id, reply with its answer
"""

from __future__ import annotations

import json
import os
import socket
import sys
import time

IO_DIR = os.environ.get("MERCURY_IO_DIR", "/run/mercury-io")


def write_result(data: dict) -> None:
    """Atomically: a reader never sees half a file."""
    tmp = os.path.join(IO_DIR, ".result.json.tmp")
    with open(tmp, "w", encoding="utf-8") as fh:
        json.dump(data, fh)
    os.rename(tmp, os.path.join(IO_DIR, "result.json"))


def ok(reply: str, files: list[str] | None = None) -> None:
    write_result(
        {
            "ok": True,
            "reply": reply,
            "usage": {"input_tokens": 3, "output_tokens": 5, "model": "testagent"},
            "files": files or [],
        }
    )


def forkbomb() -> None:
    count = 0
    errno_, error = None, None
    while count < 100_000:
        try:
            pid = os.fork()
        except OSError as exc:
            errno_, error = exc.errno, str(exc)
            break
        if pid == 0:
            time.sleep(120)
            os._exit(0)
        count += 1
    ok(json.dumps({"count": count, "errno": errno_, "error": error}))
    time.sleep(120)


def write_root() -> None:
    outcome: dict[str, object] = {}
    for path in ("/x", "/etc/x", "/usr/x", "/tmp/x", "/space/x"):
        try:
            with open(path, "w") as fh:
                fh.write("x")
            outcome[path] = "ok"
        except OSError as exc:
            outcome[path] = exc.errno
    ok(json.dumps(outcome))


def ls_space() -> None:
    found = []
    for root, dirs, files in os.walk("/space"):
        for name in dirs + files:
            found.append(os.path.relpath(os.path.join(root, name), "/space"))
    ok(json.dumps(sorted(found)))


def ids() -> None:
    status = {}
    with open("/proc/self/status") as fh:
        for line in fh:
            key, _, value = line.partition(":")
            status[key] = value.strip()
    ok(
        json.dumps(
            {
                "uid": os.getuid(),
                "gid": os.getgid(),
                "groups": os.getgroups(),
                "cap_eff": status.get("CapEff"),
                "cap_bnd": status.get("CapBnd"),
                "no_new_privs": status.get("NoNewPrivs"),
            }
        )
    )


def main() -> None:
    with open(os.path.join(IO_DIR, "input.json"), encoding="utf-8") as fh:
        payload = json.load(fh)
    command, _, arg = str(payload.get("prompt", "")).partition(" ")

    if command == "echo":
        ok(arg)
    elif command == "fail":
        write_result({"ok": False, "error": arg})
    elif command == "crash":
        # One stream: Docker reads stdout and stderr separately and does not keep their
        # relative order when both are written in a burst.
        for i in range(60):
            print(f"crash-line-{i}", file=sys.stderr, flush=True)
        sys.exit(int(arg or 1))
    elif command == "oom":
        hog = []
        while True:
            hog.append(b"\x01" * (8 * 1024 * 1024))
    elif command == "sleep":
        time.sleep(float(arg))
        ok("slept")
    elif command == "malformed":
        tmp = os.path.join(IO_DIR, ".result.json.tmp")
        with open(tmp, "w") as fh:
            fh.write('{"ok": tru')
        os.rename(tmp, os.path.join(IO_DIR, "result.json"))
    elif command == "result-then-exit":
        parts = arg.split()
        time.sleep(float(parts[2]) if len(parts) > 2 else 0)
        ok("done before exit")
        time.sleep(float(parts[0]) if parts else 0.5)
        sys.exit(int(parts[1]) if len(parts) > 1 else 0)
    elif command == "result-then-hang":
        time.sleep(float(arg or 0))
        ok("done, still running")
        time.sleep(600)
    elif command == "forkbomb":
        forkbomb()
    elif command == "write-root":
        write_root()
    elif command == "ls-space":
        ls_space()
    elif command == "read":
        try:
            with open(arg, encoding="utf-8") as fh:
                ok(json.dumps({"exists": True, "content": fh.read()}))
        except OSError as exc:
            ok(json.dumps({"exists": False, "error": exc.errno}))
    elif command == "env":
        # The environment as the container gave it, before Python adds to os.environ
        # (PEP 538 sets LC_CTYPE under the C locale).
        with open("/proc/self/environ", "rb") as fh:
            items = [item.split(b"=", 1) for item in fh.read().split(b"\0") if item]
        ok(json.dumps({k.decode(): v.decode() for k, v in items}))
    elif command == "id":
        ids()
    elif command == "outbox":
        os.makedirs("/space/outbox", exist_ok=True)
        with open(f"/space/outbox/{arg}", "w", encoding="utf-8") as fh:
            fh.write(f"made by run {os.environ.get('MERCURY_RUN_ID')}\n")
        ok(f"wrote {arg}", [f"outbox/{arg}"])
    elif command == "connect":
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
            sock.settimeout(5)
            sock.connect(arg)
            sock.sendall(os.environ.get("MERCURY_RUN_ID", "").encode() + b"\n")
            ok(sock.recv(1024).decode().strip())
    else:
        write_result({"ok": False, "error": f"testagent: unknown prompt {command!r}"})


if __name__ == "__main__":
    main()
