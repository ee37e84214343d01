"""Extensions' host hooks (extensions/hooks.py): real hooks files on disk, imported and
called as `mercury run` does; time only where a job's interval is the point (1 s)."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest

from mercury.extensions import hooks as hooks_mod
from mercury.extensions.hooks import ExtensionHooks, RunContext

CTX = RunContext(extension="", settings={}, run_id="r1", space_id="s1", platform="web",
                 user="web:ada", author="Ada", role="member", prompt="hello")  # fmt: skip


def hooks_file(tmp_path: Path, name: str, body: str) -> Path:
    path = tmp_path / name / "hooks.py"
    path.parent.mkdir(parents=True)
    path.write_text(
        "from pathlib import Path\n"
        "from mercury.extensions.hooks import AfterReply, BeforeRun, Job\n" + body
    )
    return path


def load(tmp_path: Path, **bodies: str) -> ExtensionHooks:
    return ExtensionHooks(
        {
            name: (hooks_file(tmp_path, name, body), {"greeting": f"hi from {name}"})
            for name, body in bodies.items()
        }
    )


async def test_before_run_adds_to_the_prompt_and_env_in_name_order(tmp_path: Path) -> None:
    hooks = load(
        tmp_path,
        beta="def before_run(ctx):\n    return BeforeRun(prompt=ctx.settings['greeting'])\n",
        alpha=(
            "async def before_run(ctx):\n"
            "    return BeforeRun(prompt='for ' + ctx.author, env={'LANG_HINT': 'fr'})\n"
        ),
    )
    out = await hooks.before_run(("alpha", "beta"), CTX)
    assert out.prompt == "for Ada\n\nhi from beta"
    assert dict(out.env) == {"LANG_HINT": "fr"} and out.refused is None


async def test_a_refusal_wins_and_only_granted_extensions_run(tmp_path: Path) -> None:
    hooks = load(
        tmp_path,
        gate="def before_run(ctx):\n    return BeforeRun(refuse='Not here, ' + ctx.author)\n",
        other="def before_run(ctx):\n    raise AssertionError('must not run')\n",
    )
    out = await hooks.before_run(("gate",), CTX)
    assert (out.refused, out.refused_by) == ("Not here, Ada", "gate")
    assert (await hooks.before_run((), CTX)).refused is None


async def test_a_failing_or_slow_hook_is_skipped(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(hooks_mod, "HOOK_TIMEOUT_S", 0.2)
    hooks = load(
        tmp_path,
        boom="def before_run(ctx):\n    raise RuntimeError('bug')\n",
        slow="import asyncio\nasync def before_run(ctx):\n    await asyncio.sleep(5)\n",
        fine="def before_run(ctx):\n    return BeforeRun(prompt='ok')\n",
    )
    out = await hooks.before_run(("boom", "fine", "slow"), CTX)
    assert out.prompt == "ok" and out.refused is None


async def test_after_reply_rewrites_suppresses_and_adds_files(tmp_path: Path) -> None:
    extra = tmp_path / "report.txt"
    extra.write_text("attached")
    hooks = load(
        tmp_path,
        a=f"def after_reply(ctx, reply):\n    return AfterReply(text=reply.upper(), "
        f"files=[{str(extra)!r}])\n",
        b="def after_reply(ctx, reply):\n    return AfterReply(text=reply + '!')\n",
    )
    text, files = await hooks.after_reply(("a", "b"), CTX, "done")
    assert text == "DONE!" and files == [extra]
    quiet = load(
        tmp_path / "q", q="def after_reply(ctx, reply):\n    return AfterReply(suppress=True)\n"
    )
    assert (await quiet.after_reply(("q",), CTX, "done"))[0] is None


async def test_startup_shutdown_and_a_job(tmp_path: Path) -> None:
    log = tmp_path / "events.txt"
    hooks = load(
        tmp_path,
        j=(
            f"LOG = Path({str(log)!r})\n"
            "def note(word):\n"
            "    LOG.write_text((LOG.read_text() if LOG.exists() else '') + word + '\\n')\n"
            "def startup(ctx):\n    note('start ' + ctx.extension)\n"
            "def shutdown(ctx):\n    note('stop')\n"
            "def tick(ctx):\n    note('tick')\n"
            "JOBS = [Job(run=tick, every='1s')]\n"
        ),
    )
    await hooks.startup()
    for _ in range(100):
        if "tick" in (log.read_text() if log.exists() else ""):
            break
        await asyncio.sleep(0.05)
    await hooks.shutdown()
    lines = log.read_text().split()
    assert lines[:2] == ["start", "j"] and "tick" in lines and lines[-1] == "stop"


@pytest.mark.parametrize(
    ("jobs", "why"),
    [
        ("JOBS = [Job(run=print)]", "exactly one of every and cron"),
        ("JOBS = [Job(run=print, every='soon')]", "every:"),
        ("JOBS = [Job(run=print, cron='every day')]", "is not a cron expression"),
        ("JOBS = ['nope']", "not a Job"),
    ],
)
def test_bad_jobs_stop_start_up_naming_the_extension(tmp_path: Path, jobs: str, why: str) -> None:
    with pytest.raises(ValueError, match=r"extensions\.enabled: bad: hooks: JOBS\[0\]") as err:
        load(tmp_path, bad=jobs + "\n")
    assert why in str(err.value)


def test_a_hooks_file_that_does_not_import_stops_start_up(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match=r"extensions\.enabled: broken: hooks: NameError"):
        load(tmp_path, broken="undefined_name\n")
