"""`mercury image ...`: build the agent image, with a live view of the build log."""

from __future__ import annotations

import time
from collections import deque
from typing import Any

import click
from rich.console import Console, Group, RenderableType
from rich.live import Live
from rich.spinner import Spinner
from rich.text import Text

from mercury.cli.common import config_option, err, fail, load_or_exit, out

# How many log lines the live view keeps on screen, and how many a failure prints.
LIVE_LINES = 10
FAILURE_TAIL = 20


class BuildView:
    """The build log as it happens: a spinner, the current step and the last lines.

    In a terminal it redraws in place (rich Live); anywhere else (CI logs, pipes) every line
    is printed as it comes, so nothing is lost and nothing is redrawn.
    """

    def __init__(self, console: Console, title: str) -> None:
        self.console = console
        self.live_mode = console.is_terminal
        self.title = title
        self.step = ""
        self.lines: deque[str] = deque(maxlen=LIVE_LINES)
        self.started = time.monotonic()
        self._spinner = Spinner("dots", style="cyan")
        self._live: Live | None = None

    def __enter__(self) -> BuildView:
        if self.live_mode:
            # transient: the summary printed afterwards replaces the scrolling view.
            self._live = Live(self, console=self.console, refresh_per_second=10, transient=True)
            self._live.__enter__()
        return self

    def __exit__(self, *exc: Any) -> None:
        if self._live is not None:
            self._live.__exit__(*exc)
            self._live = None

    def __call__(self, line: str) -> None:
        """The on_event callback: one log line."""
        if line.startswith("Step "):
            self.step = line
        if self.live_mode:
            self.lines.append(line)  # Live redraws on its own refresh thread
        else:
            self.console.print(line, markup=False, highlight=False, soft_wrap=True)

    def __rich__(self) -> RenderableType:
        elapsed = time.monotonic() - self.started
        header = Text.assemble((self.title, "bold"), f"  {elapsed:4.0f}s  ", (self.step, "cyan"))
        width = max(self.console.width - 4, 20)
        # One line, however long the step: a wrapped header makes the view jump.
        header.truncate(width - 2, overflow="ellipsis")
        self._spinner.update(text=header)
        log = Text("\n".join("  " + ln[:width] for ln in self.lines), style="dim", no_wrap=True)
        return Group(self._spinner, log)


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
def image() -> None:
    """Agent image commands."""


@image.command("build")
@click.option(
    "--base", metavar="IMAGE", default=None, help="Base image (default: container.base_image)."
)
@click.option("--tag", metavar="TAG", default=None, help="Tag to build (default: container.image).")
@click.option("--if-missing", is_flag=True, help="Do nothing when TAG already exists.")
@click.option("--no-cache", is_flag=True, help="Rebuild every layer, ignoring Docker's cache.")
@config_option
def build(base: str | None, tag: str | None, if_missing: bool, no_cache: bool) -> None:
    """Build the agent image (container/Dockerfile) FROM a base image."""
    from mercury.sandbox.engine import (
        ENGINE_HINT,
        EngineUnavailable,
        connect_engine,
        use_docker_host,
    )
    from mercury.sandbox.identity import IdentityError
    from mercury.sandbox.images import (
        BaseImageUnavailable,
        ImageBuildError,
        image_id,
        plan_build,
        run_build,
    )

    cfg = load_or_exit().config
    try:
        # The same build `mercury run` makes when the image is missing.
        plan = plan_build(cfg.container, tag=tag, base=base)
    except (IdentityError, FileNotFoundError) as exc:
        fail(str(exc))
    tag, base = plan.tag, plan.base

    use_docker_host(cfg.container.docker_host)  # a worker's own engine, as `mercury worker`
    try:
        client, _info = connect_engine()
    except EngineUnavailable as exc:
        fail(f"{exc}; {ENGINE_HINT}")

    view = BuildView(out, f"building {tag} from {base}")
    try:
        if if_missing:
            existing = image_id(client, tag)
            if existing is not None:
                out.print(
                    f"{tag} already exists ({existing}); not rebuilding (--if-missing)",
                    soft_wrap=True,
                )
                return
        view.started = time.monotonic()
        with view:
            image_ref = run_build(client, plan, on_event=view, nocache=no_cache)
    except BaseImageUnavailable as exc:
        fail(str(exc))
    except ImageBuildError as exc:
        if view.live_mode and exc.log_tail:
            # The live view was transient: show what led to the failure.
            err.print("last lines of the build log:", style="dim")
            for line in exc.log_tail[-FAILURE_TAIL:]:
                err.print(f"  {line}", markup=False, soft_wrap=True)
        fail(f"image build failed: {exc}")
    except EngineUnavailable as exc:
        fail(f"{exc}; {ENGINE_HINT}")
    except KeyboardInterrupt:
        fail("image build interrupted", code=130)
    finally:
        client.close()

    elapsed = time.monotonic() - view.started
    out.print(f"built {tag} {image_ref} in {elapsed:.0f}s", soft_wrap=True)
