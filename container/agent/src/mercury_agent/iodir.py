"""The io dir: where the host puts input.json and waits for result.json.

The host treats the mere presence of result.json as "the run is over, here is the complete
answer", so result.json must never be visible half-written: it is written to a temporary
file in the same directory (same filesystem, so the rename is atomic), fsynced, and then
renamed into place.
"""

from __future__ import annotations

import contextlib
import json
import os
import tempfile
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from mercury_agent.contract import InputError

DEFAULT_IO_DIR = Path("/run/mercury-io")
IO_DIR_ENV = "MERCURY_IO_DIR"
INPUT_NAME = "input.json"
RESULT_NAME = "result.json"
# Never ends in ".json", so a host watching for result.json cannot mistake it.
_TMP_PREFIX = ".result."
_TMP_SUFFIX = ".tmp"


def resolve_io_dir(arg: str | os.PathLike[str] | None, env: Mapping[str, str]) -> Path:
    """--io-dir, else $MERCURY_IO_DIR, else /run/mercury-io."""
    if arg:
        return Path(arg)
    if env.get(IO_DIR_ENV):
        return Path(env[IO_DIR_ENV])
    return DEFAULT_IO_DIR


def read_input(io_dir: Path) -> Any:
    """The decoded input.json; InputError when it is missing or not JSON."""
    path = io_dir / INPUT_NAME
    try:
        raw = path.read_bytes()
    except FileNotFoundError:
        raise InputError(f"{path} not found") from None
    except OSError as exc:
        raise InputError(f"cannot read {path}: {exc.strerror or exc}") from None
    try:
        return json.loads(raw.decode("utf-8"))
    except UnicodeDecodeError as exc:
        raise InputError(f"{path} is not UTF-8: {exc.reason} at byte {exc.start}") from None
    except json.JSONDecodeError as exc:
        raise InputError(
            f"{path} is not valid JSON: {exc.msg} (line {exc.lineno}, column {exc.colno})"
        ) from None


def write_result(io_dir: Path, result: Mapping[str, Any]) -> Path:
    """Write result.json atomically (tmp file + fsync + rename); returns its path."""
    data = json.dumps(result, ensure_ascii=False, indent=None).encode("utf-8")
    fd, tmp_name = tempfile.mkstemp(prefix=_TMP_PREFIX, suffix=_TMP_SUFFIX, dir=io_dir)
    tmp = Path(tmp_name)
    try:
        with os.fdopen(fd, "wb") as fh:
            fh.write(data)
            fh.flush()
            os.fsync(fh.fileno())
        # mkstemp makes the file 0600, and the host reading it usually is another uid.
        os.chmod(tmp, 0o644)
        target = io_dir / RESULT_NAME
        os.replace(tmp, target)
    except BaseException:
        with contextlib.suppress(OSError):
            tmp.unlink()
        raise
    _fsync_dir(io_dir)
    return target


def _fsync_dir(path: Path) -> None:
    """Persist the rename itself; best effort (not every filesystem allows it)."""
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)
