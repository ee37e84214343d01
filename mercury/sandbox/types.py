"""The runner's contract: what a run is asked to do and what came of it."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import asdict, dataclass, field
from enum import StrEnum
from pathlib import Path
from typing import Any

from mercury.sandbox.outputs import DroppedFile, OutputFile


class RunReason(StrEnum):
    OK = "ok"
    ERROR = "error"  # the agent reported ok:false (or wrote an unreadable result)
    CRASHED = "crashed"  # exited without a result, or could not be started
    OOM = "oom"
    TIMEOUT = "timeout"
    ABORTED = "aborted"
    # Stopped because the space outgrew disk.space_size (watched spaces) or the host's
    # free disk fell below disk.min_free while it ran.
    DISK = "disk"


@dataclass(frozen=True)
class RunRequest:
    """One message's run. `input` becomes input.json; the rest overrides config."""

    run_id: str
    space_id: str
    input: Mapping[str, Any]
    image: str | None = None  # None = ImageBuildState.current_image()
    timeout_s: float | None = None
    memory: int | None = None  # bytes; swap included
    network: str | None = None
    env: Mapping[str, str] = field(default_factory=dict)  # granted by config or extensions
    # Extra read-only mounts: host path -> container path (extension skill dirs).
    readonly_mounts: Mapping[Path, str] = field(default_factory=dict)
    # The run's own host API socket folder (RunHost.open_run), mounted at /run/mercury-api.
    api_socket_dir: Path | None = None


@dataclass(frozen=True)
class RunResult:
    run_id: str
    space_id: str
    reason: RunReason
    exit_code: int | None = None
    reply: str | None = None
    error: str | None = None  # for the operator; never shown raw to a chat user
    duration_ms: int = 0
    usage: dict[str, Any] = field(default_factory=dict)
    # Host-owned copies of the outbox files it sent (data_dir/outputs/<run_id>/...): the
    # caller delivers them, then removes them (outputs.remove_outputs).
    files: list[OutputFile] = field(default_factory=list)
    dropped_files: list[DroppedFile] = field(default_factory=list)  # listed but not sent
    image: str | None = None
    container_name: str | None = None
    log_tail: str | None = None  # last lines of the container log when it crashed
    result: dict[str, Any] | None = None  # the full result.json, when there was one

    @property
    def ok(self) -> bool:
        return self.reason is RunReason.OK

    def to_dict(self) -> dict[str, Any]:
        data = asdict(self)
        data["reason"] = self.reason.value
        data["ok"] = self.ok
        return data


class ImageBuildState:
    """Which agent image runs use, while a derived image may be (re)built in the background.

    Runs use the derived image once it is built and the base agent image until then, so a
    slow build never holds up a message. `builder` builds the derived image and returns
    its tag; None means there is no derived image (no extensions) and the base is used.
    """

    def __init__(
        self,
        base_image: str,
        builder: Callable[[], Awaitable[str]] | None = None,
        derived_image: str | None = None,
    ) -> None:
        self.base_image = base_image
        self.derived_image = derived_image
        self._builder = builder
        self._task: asyncio.Task[str | None] | None = None
        self.last_error: str | None = None
        self.rebuilds = 0

    def current_image(self) -> str:
        return self.derived_image or self.base_image

    @property
    def building(self) -> bool:
        return self._task is not None and not self._task.done()

    def rebuild(self) -> asyncio.Task[str | None] | None:
        """Start a background rebuild (one at a time); runs use the base image meanwhile."""
        if self._builder is None:
            return None
        if self.building:
            return self._task
        self.derived_image = None
        self.rebuilds += 1
        self._task = asyncio.get_running_loop().create_task(self._build())
        return self._task

    async def _build(self) -> str | None:
        assert self._builder is not None
        try:
            tag = await self._builder()
        except Exception as exc:  # the base image keeps serving; the operator sees why
            self.last_error = f"{type(exc).__name__}: {exc}"
            return None
        self.derived_image = tag
        self.last_error = None
        return tag

    async def wait(self) -> str | None:
        if self._task is None:
            return self.derived_image
        return await self._task
