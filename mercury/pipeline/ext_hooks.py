"""The executor's side of extensions' host hooks (extensions/hooks.py): what a run's
before_run hooks add or refuse, and what its after_reply hooks make of the reply.

Files an after_reply hook adds are copied into the run's outputs folder, beside the files
the agent sent, so they are kept, delivered and removed exactly like those.
"""

from __future__ import annotations

import asyncio
import shutil
from dataclasses import replace
from pathlib import Path

from mercury.extensions.hooks import BeforeRunOutcome, ExtensionHooks, RunContext
from mercury.logging import get_logger
from mercury.pipeline.payload import JobPayload
from mercury.sandbox.outputs import OutputFile, outputs_root
from mercury.sandbox.types import RunResult

log = get_logger("mercury.extensions.hooks")

MAX_HOOK_FILE_BYTES = 50 * 1024 * 1024
NO_OUTCOME = BeforeRunOutcome()


def run_context(payload: JobPayload, run_id: str, space_id: str) -> RunContext:
    return RunContext(
        extension="",
        settings={},
        run_id=run_id,
        space_id=space_id,
        platform=payload.platform,
        user=payload.user_key,
        author=payload.author_name,
        role=payload.role,
        prompt=payload.prompt,
        task_id=payload.task_id,
    )


async def before_run(
    hooks: ExtensionHooks | None, names: tuple[str, ...], ctx: RunContext
) -> BeforeRunOutcome:
    if hooks is None or not hooks or not names:
        return NO_OUTCOME
    return await hooks.before_run(names, ctx)


def _copy_in(files: list[Path], folder: Path) -> list[OutputFile]:
    """Copies of the hook's files in the run's outputs folder (regular files only)."""
    kept: list[OutputFile] = []
    for source in files:
        try:
            if not source.is_file() or source.is_symlink():
                raise OSError("not a regular file")
            size = source.stat().st_size
            if size > MAX_HOOK_FILE_BYTES:
                raise OSError(f"over {MAX_HOOK_FILE_BYTES} bytes")
            folder.mkdir(parents=True, exist_ok=True)
            target = folder / f"hook-{len(kept)}-{source.name}"
            shutil.copyfile(source, target)
            kept.append(OutputFile(target, source.name, size))
        except OSError as exc:
            log.error("extension hook file not sent", file=str(source), error=str(exc))
    return kept


async def after_reply(
    hooks: ExtensionHooks | None,
    names: tuple[str, ...],
    ctx: RunContext,
    text: str,
    result: RunResult,
    data_dir: Path,
) -> tuple[str | None, RunResult]:
    """(the reply's text, None when a hook suppressed it; the result with added files)."""
    if hooks is None or not hooks or not names:
        return text, result
    new_text, files = await hooks.after_reply(names, ctx, text)
    if new_text is None or not files:
        return new_text, result
    folder = outputs_root(data_dir) / result.run_id
    added = await asyncio.to_thread(_copy_in, files, folder)
    return new_text, replace(result, files=[*result.files, *added])
