"""Host-side hooks of extensions: `hooks.py` in the extension's folder, named by
`hooks:` in its extension.yaml.

A hooks file is the operator's own code running in Mercury's process with Mercury's
rights (unlike everything else of an extension, which runs in the run's container): read
it before enabling the extension. It may define, each sync or async:

- `before_run(ctx: RunContext) -> BeforeRun | None`: add to the prompt, add environment
  variables to the run's container (checked like `container.env`: never a credential), or
  refuse the run with a message for the user;
- `after_reply(ctx: RunContext, reply: str) -> AfterReply | None`: rewrite the reply,
  suppress it, or add files (host paths, copied into the reply);
- `startup(ctx: ExtensionContext)` and `shutdown(ctx: ExtensionContext)`;
- `JOBS = [Job(run=fn, every="1h")]` or `Job(run=fn, cron="0 9 * * *")`: host-side jobs,
  `fn(ctx: ExtensionContext)`, while Mercury runs.

Hooks of an extension run only for runs granted that extension. A hook that raises or
takes longer than HOOK_TIMEOUT_S is logged for the operator and skipped: the run goes on
as if the hook were not there (a refusal must be a return value, never an accident).
Extension code imports its types from here: `from mercury.extensions.hooks import
BeforeRun, AfterReply, Job`.
"""

from __future__ import annotations

import asyncio
import contextlib
import importlib.util
import inspect
import sys
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from types import ModuleType
from typing import Any

from croniter import croniter

from mercury.core.durations import DurationError, parse_duration
from mercury.logging import first_line, get_logger

log = get_logger("mercury.extensions.hooks")

HOOK_TIMEOUT_S = 10.0
MIN_JOB_INTERVAL_S = 1.0


@dataclass(frozen=True)
class ExtensionContext:
    """What every hook gets: its extension's name and settings (the operator's values)."""

    extension: str
    settings: Mapping[str, Any]


@dataclass(frozen=True)
class RunContext(ExtensionContext):
    """One run, as before_run and after_reply see it."""

    run_id: str = ""
    space_id: str = ""
    platform: str = ""
    user: str | None = None  # "platform:user_id" of the person who asked; None for the operator
    author: str = ""
    role: str = ""
    prompt: str = ""
    task_id: int | None = None


@dataclass(frozen=True)
class BeforeRun:
    prompt: str = ""  # added to the run's prompt, after a blank line
    env: Mapping[str, str] = field(default_factory=dict)  # added to the container's env
    refuse: str | None = None  # the run does not start; the user gets this text


@dataclass(frozen=True)
class AfterReply:
    text: str | None = None  # the reply's new text (None: unchanged)
    suppress: bool = False  # nothing is sent (the run is still recorded)
    files: Sequence[Path | str] = ()  # host files added to the reply


@dataclass(frozen=True)
class Job:
    """A host-side job of an extension: `run(ctx)` every `every` (a duration, "15m") or
    at `cron` times (UTC)."""

    run: Callable[[ExtensionContext], Any]
    every: str | None = None
    cron: str | None = None
    name: str = ""


@dataclass(frozen=True)
class BeforeRunOutcome:
    """What all of a run's before_run hooks decided together."""

    prompt: str = ""
    env: Mapping[str, str] = field(default_factory=dict)
    refused: str | None = None  # the text for the user
    refused_by: str | None = None


@dataclass
class _Loaded:
    name: str
    settings: Mapping[str, Any]
    module: ModuleType
    jobs: list[Job] = field(default_factory=list)


def load_hooks_module(name: str, path: Path) -> ModuleType:
    """Import an extension's hooks file under a module name of its own."""
    module_name = f"mercury_ext_hooks_{name.replace('-', '_')}"
    spec = importlib.util.spec_from_file_location(module_name, path)
    if spec is None or spec.loader is None:
        raise ImportError(f"cannot load {path}")
    module = importlib.util.module_from_spec(spec)
    sys.modules[module_name] = module
    spec.loader.exec_module(module)
    return module


def _check_job(job: object, where: str) -> Job:
    if not isinstance(job, Job) or not callable(job.run):
        raise ValueError(f"{where}: not a Job(run=..., every=... or cron=...)")
    if (job.every is None) == (job.cron is None):
        raise ValueError(f"{where}: give exactly one of every and cron")
    if job.every is not None:
        try:
            seconds = parse_duration(job.every)
        except DurationError as exc:
            raise ValueError(f"{where}: every: {exc}") from None
        if seconds < MIN_JOB_INTERVAL_S:
            raise ValueError(f"{where}: every: at least {MIN_JOB_INTERVAL_S:g}s")
    elif not croniter.is_valid(job.cron or ""):
        raise ValueError(f"{where}: cron: {job.cron!r} is not a cron expression")
    return job


async def _call(fn: Callable[..., Any], *args: Any, timeout: float = HOOK_TIMEOUT_S) -> Any:
    """Call a sync or async hook with a deadline (a sync one in a thread)."""
    if inspect.iscoroutinefunction(fn):
        return await asyncio.wait_for(fn(*args), timeout)
    result = await asyncio.wait_for(asyncio.to_thread(fn, *args), timeout)
    if inspect.isawaitable(result):
        return await asyncio.wait_for(result, timeout)
    return result


class ExtensionHooks:
    """The hooks files of the enabled extensions, loaded at start (an error there stops
    start-up, naming the extension: ValueError)."""

    def __init__(self, extensions: Mapping[str, tuple[Path, Mapping[str, Any]]]) -> None:
        """`extensions`: name -> (hooks file, settings), for those that have one."""
        self._loaded: dict[str, _Loaded] = {}
        for name, (path, settings) in sorted(extensions.items()):
            try:
                module = load_hooks_module(name, path)
            except Exception as exc:
                raise ValueError(
                    f"extensions.enabled: {name}: hooks: {type(exc).__name__}: {first_line(exc)}"
                ) from exc
            jobs = [
                _check_job(job, f"extensions.enabled: {name}: hooks: JOBS[{i}]")
                for i, job in enumerate(getattr(module, "JOBS", None) or [])
            ]
            self._loaded[name] = _Loaded(name, dict(settings), module, jobs)
        self._tasks: list[asyncio.Task[None]] = []

    def __bool__(self) -> bool:
        return bool(self._loaded)

    def _hook(self, name: str, hook: str) -> Callable[..., Any] | None:
        loaded = self._loaded.get(name)
        fn = getattr(loaded.module, hook, None) if loaded else None
        return fn if callable(fn) else None

    def context(self, name: str) -> ExtensionContext:
        return ExtensionContext(name, self._loaded[name].settings)

    async def _run_hook(self, name: str, hook: str, *args: Any) -> Any:
        """One hook's return value; None when it is missing, fails or times out."""
        fn = self._hook(name, hook)
        if fn is None:
            return None
        try:
            return await _call(fn, *args)
        except Exception as exc:
            log.error(
                "extension hook failed",
                extension=name,
                hook=hook,
                error=f"{type(exc).__name__}: {first_line(exc)}",
                meanwhile="skipped: the run goes on without it",
            )
            return None

    async def before_run(self, names: Sequence[str], ctx: RunContext) -> BeforeRunOutcome:
        """The before_run hooks of the run's granted extensions, in name order: the first
        refusal wins; prompt additions and env are merged."""
        prompts: list[str] = []
        env: dict[str, str] = {}
        for name in names:
            if self._hook(name, "before_run") is None:
                continue
            out = await self._run_hook(
                name, "before_run", RunContext(**{**ctx.__dict__, "extension": name,
                                                  "settings": self._loaded[name].settings})
            )  # fmt: skip
            if out is None:
                continue
            if not isinstance(out, BeforeRun):
                log.error("extension hook returned something else", extension=name,
                          hook="before_run", got=type(out).__name__)  # fmt: skip
                continue
            if out.refuse:
                log.info("run refused by an extension", extension=name, run_id=ctx.run_id)
                return BeforeRunOutcome(refused=str(out.refuse), refused_by=name)
            if out.prompt:
                prompts.append(str(out.prompt))
            env.update({str(k): str(v) for k, v in out.env.items()})
        return BeforeRunOutcome(prompt="\n\n".join(prompts), env=env)

    async def after_reply(
        self, names: Sequence[str], ctx: RunContext, text: str
    ) -> tuple[str | None, list[Path]]:
        """The after_reply hooks in name order, each seeing the text the previous left:
        (the reply's text, None when one suppressed it; files to add)."""
        files: list[Path] = []
        current: str | None = text
        for name in names:
            if current is None or self._hook(name, "after_reply") is None:
                continue
            run_ctx = RunContext(
                **{**ctx.__dict__, "extension": name, "settings": self._loaded[name].settings}
            )
            out = await self._run_hook(name, "after_reply", run_ctx, current)
            if not isinstance(out, AfterReply):
                continue
            if out.suppress:
                log.info("reply suppressed by an extension", extension=name, run_id=ctx.run_id)
                current = None
                continue
            if out.text is not None:
                current = str(out.text)
            files += [Path(f) for f in out.files]
        return current, files

    async def startup(self) -> None:
        for name in self._loaded:
            await self._run_hook(name, "startup", self.context(name))
        for name, loaded in self._loaded.items():
            for job in loaded.jobs:
                self._tasks.append(asyncio.get_running_loop().create_task(self._job(name, job)))

    async def shutdown(self) -> None:
        for task in self._tasks:
            task.cancel()
        for task in self._tasks:
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task
        self._tasks.clear()
        for name in self._loaded:
            await self._run_hook(name, "shutdown", self.context(name))

    async def _job(self, name: str, job: Job) -> None:
        """Run `job` at its times until cancelled; a failing run is logged, not fatal."""
        label = job.name or getattr(job.run, "__name__", "job")
        cron = croniter(job.cron, datetime.now(UTC)) if job.cron else None
        while True:
            if cron is not None:
                wait = (cron.get_next(datetime) - datetime.now(UTC)).total_seconds()
            else:
                wait = parse_duration(job.every or "")
            await asyncio.sleep(max(0.0, wait))
            try:
                await _call(job.run, self.context(name), timeout=max(HOOK_TIMEOUT_S, wait))
                log.info("extension job ran", extension=name, job=label)
            except Exception as exc:
                log.error("extension job failed", extension=name, job=label,
                          error=f"{type(exc).__name__}: {first_line(exc)}")  # fmt: skip


def hooks_of(extensions: Sequence[Any]) -> ExtensionHooks:
    """ExtensionHooks for the loaded extensions (LoadedExtension) that have a hooks file."""
    return ExtensionHooks(
        {
            ext.name: (ext.folder / ext.spec.hooks, ext.settings)
            for ext in extensions
            if ext.spec.hooks
        }
    )


__all__ = [
    "AfterReply",
    "BeforeRun",
    "BeforeRunOutcome",
    "ExtensionContext",
    "ExtensionHooks",
    "Job",
    "RunContext",
    "hooks_of",
]
