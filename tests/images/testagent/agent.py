"""A scripted stand-in for the agent: input.json's `prompt` says how to behave.

- echo TEXT: ok, reply TEXT
- fail MSG: ok:false, error MSG
- crash N: print 60 numbered lines to stderr, exit N without a result
- oom: allocate memory until the kernel kills us
- sleep S: sleep S seconds, then ok
- echo-after S TEXT: sleep S seconds, then reply TEXT (a run that takes a while)
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
Attacks on the host side of the wall (tests/integration/test_attacks_*.py):
- outbox-swap NAME TARGET S: list outbox/NAME, then keep swapping it between a regular
  file and a symlink to TARGET for S seconds after the result is written
- outbox-link NAME TARGET: outbox/NAME is a symlink to TARGET; list it
- outbox-dirlink DIR TARGET FILE: outbox/DIR is a symlink to folder TARGET; list DIR/FILE
- outbox-sparse NAME SIZE N: a sparse file of SIZE bytes, listed N times
- outbox-n N SIZE: N files of SIZE bytes, all listed
- outbox-many N: N entries in "files" (one real file among them)
- result-deep N: a result.json nested N levels deep
- plant-link PATH TARGET: replace PATH (file or folder) with a symlink to TARGET
- stat PATH: reply {mode, uid, gid} of PATH (lstat)
- fill PATH MB DELAY: write MB MiB into PATH, 1 MiB at a time, DELAY s apart; reply
  {written, errno}
- flood N S: open N connections to the host API socket, hold them S s; reply how many
  the host accepted and kept open
- whoami: GET /v1/whoami on the host API with the run token; reply status and body
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
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


API_SOCKET = "/run/mercury-api/api.sock"


def swap_forever(path: str, target: str, seconds: float) -> None:
    """Atomically flip `path` between a harmless file and a symlink to `target`."""
    folder = os.path.dirname(path)
    end = time.monotonic() + seconds
    while time.monotonic() < end:
        tmp = os.path.join(folder, ".swap-link")
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        os.symlink(target, tmp)
        os.rename(tmp, path)
        tmp = os.path.join(folder, ".swap-file")
        with open(tmp, "w") as fh:
            fh.write("innocent\n")
        os.rename(tmp, path)


def outbox_file(name: str, data: bytes = b"innocent\n") -> str:
    os.makedirs("/space/outbox", exist_ok=True)
    with contextlib.suppress(FileNotFoundError):
        os.unlink(f"/space/outbox/{name}")  # a link left by an earlier run
    with open(f"/space/outbox/{name}", "wb") as fh:
        fh.write(data)
    return f"outbox/{name}"


def replace_with_link(path: str, target: str) -> None:
    if os.path.islink(path) or os.path.isfile(path):
        os.unlink(path)
    elif os.path.isdir(path):
        shutil.rmtree(path)
    os.symlink(target, path)


def nested(depth: int) -> str:
    return '{"ok": true, "reply": "deep", "x": ' + "[" * depth + "]" * depth + "}"


def whoami(token: str) -> dict:
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
        sock.settimeout(5)
        sock.connect(API_SOCKET)
        sock.sendall(
            b"GET /v1/whoami HTTP/1.1\r\nHost: mercury\r\nConnection: close\r\n"
            + f"Authorization: Bearer {token}\r\n\r\n".encode()
        )
        data = b""
        while chunk := sock.recv(65536):
            data += chunk
    head, _, body = data.partition(b"\r\n\r\n")
    return {"status": int(head.split()[1]), "body": json.loads(body or b"null")}


def flood(count: int, hold: float) -> dict:
    socks = []
    failed = 0
    for _ in range(count):
        try:
            sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        except OSError:  # out of file descriptors
            failed += 1
            continue
        try:
            sock.connect(API_SOCKET)
            socks.append(sock)
        except OSError:
            failed += 1
            sock.close()
    time.sleep(hold)
    kept = 0
    for sock in socks:
        sock.setblocking(False)
        try:
            kept += sock.recv(1) != b""  # b"": the host closed it
        except BlockingIOError:
            kept += 1  # still open, nothing to read
        except OSError:
            pass
    return {"connected": len(socks), "failed": failed, "kept": kept}


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
    elif command == "echo-after":
        delay, _, text = arg.partition(" ")
        time.sleep(float(delay))
        ok(text)
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
    elif command == "outbox-swap":
        name, target, seconds = arg.split()
        ok("sending it", [outbox_file(name)])
        swap_forever(f"/space/outbox/{name}", target, float(seconds))
    elif command == "outbox-link":
        name, target = arg.split()
        os.makedirs("/space/outbox", exist_ok=True)
        replace_with_link(f"/space/outbox/{name}", target)
        ok("linked", [f"outbox/{name}"])
    elif command == "outbox-dirlink":
        folder, target, name = arg.split()
        os.makedirs("/space/outbox", exist_ok=True)
        replace_with_link(f"/space/outbox/{folder}", target)
        ok("linked a folder", [f"outbox/{folder}/{name}", f"/space/outbox/{folder}/{name}"])
    elif command == "outbox-sparse":
        name, size, count = arg.split()
        os.makedirs("/space/outbox", exist_ok=True)
        with open(f"/space/outbox/{name}", "wb") as fh:
            fh.truncate(int(size))
        ok("sparse", [f"outbox/{name}"] * int(count))
    elif command == "outbox-n":
        count, size = (int(x) for x in arg.split())
        ok("many", [outbox_file(f"f{i:03d}.bin", b"x" * size) for i in range(count)])
    elif command == "outbox-many":
        real = outbox_file("real.txt")
        ok("listed a lot", [real] + [f"outbox/none-{i}" for i in range(int(arg))])
    elif command == "result-deep":
        tmp = os.path.join(IO_DIR, ".result.json.tmp")
        with open(tmp, "w") as fh:
            fh.write(nested(int(arg)))
        os.rename(tmp, os.path.join(IO_DIR, "result.json"))
    elif command == "plant-link":
        path, target = arg.split()
        replace_with_link(path, target)
        ok("planted")
    elif command == "stat":
        st = os.lstat(arg)
        ok(json.dumps({"mode": st.st_mode & 0o7777, "uid": st.st_uid, "gid": st.st_gid}))
    elif command == "fill":
        path, mib, delay = arg.split()
        written, err = 0, None
        try:
            with open(path, "wb") as fh:
                for _ in range(int(mib)):
                    fh.write(b"\xab" * 1024 * 1024)
                    fh.flush()
                    os.fsync(fh.fileno())
                    written += 1024 * 1024
                    time.sleep(float(delay))
        except OSError as exc:
            err = exc.errno
        ok(json.dumps({"written": written, "errno": err}))
    elif command == "flood":
        count, hold = arg.split()
        ok(json.dumps(flood(int(count), float(hold))))
    elif command == "whoami":
        ok(json.dumps(whoami(payload["api"]["token"])))
    else:
        write_result({"ok": False, "error": f"testagent: unknown prompt {command!r}"})


if __name__ == "__main__":
    main()
