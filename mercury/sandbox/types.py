"""The runner's contract: what a run is asked to do and what came of it."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from mercury.core.run_reason import RunReason
from mercury.sandbox.imagestate import ImageBuildState
from mercury.sandbox.outputs import DroppedFile, OutputFile

__all__ = ["ImageBuildState", "RunReason", "RunRequest", "RunResult"]


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
    # Extra read-only mounts: host path -> container path (granted extensions' folders).
    readonly_mounts: Mapping[Path, str] = field(default_factory=dict)
    # The extensions the run is granted: their packages in the derived image stay visible,
    # every other extension's are masked (ImageBuildState.packaged).
    extensions: tuple[str, ...] = ()
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
    # Not the message's fault, so not its outcome: the run was not started (low disk, the
    # engine down, the agent image being rebuilt) or the engine cut it short. The caller
    # puts the job back in the queue, not counted as an attempt. `container_name` is set
    # only when a container did start (its run is worth recording, model usage included).
    retry: bool = False

    @property
    def ok(self) -> bool:
        return self.reason is RunReason.OK

    def to_dict(self) -> dict[str, Any]:
        data = asdict(self)
        data["reason"] = self.reason.value
        data["ok"] = self.ok
        return data
