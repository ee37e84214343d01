"""Building the agent image (container/Dockerfile) on the Docker engine.

Every function here blocks on the engine; async callers run them in a thread.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import docker
from docker.errors import APIError, DockerException, ImageNotFound
from requests.exceptions import ConnectionError as RequestsConnectionError

from mercury.config import ContainerConfig
from mercury.logging import scrub_text
from mercury.sandbox.engine import EngineUnavailable, engine_endpoint
from mercury.sandbox.identity import container_identity

# The base `scripts/build-base-image` makes when no registry can provide python:3.12-slim.
LOCAL_BASE_IMAGE = "mercury-base:bookworm"
BUILD_BASE_COMMAND = f"scripts/build-base-image {LOCAL_BASE_IMAGE}"
BUILD_IMAGE_COMMAND = f"mercury image build --base {LOCAL_BASE_IMAGE}"

# Labels on every agent image: which base it came from, for `docker image inspect` and doctor.
LABEL_IMAGE = "mercury.image"
LABEL_BASE = "mercury.base-image"

LOG_TAIL_LINES = 40

OnEvent = Callable[[str], None]


def _ignore(_line: str) -> None:
    pass


class BaseImageUnavailable(Exception):
    """The base image is neither on the engine nor pullable; the message says how to fix it."""

    def __init__(self, base: str, reason: str) -> None:
        self.base = base
        self.reason = reason
        self.commands = [BUILD_BASE_COMMAND, BUILD_IMAGE_COMMAND]
        lines = [
            f"base image {base} is not on this engine and cannot be pulled ({reason}).",
            "Build a local base (debootstrap, no registry needed) and the agent image on it, "
            "from the Mercury source directory:",
            *(f"  {cmd}" for cmd in self.commands),
            f"(or set container.base_image: {LOCAL_BASE_IMAGE} in mercury.yaml)",
        ]
        super().__init__("\n".join(lines))


class ImageBuildError(Exception):
    """The build failed. `step` is the Dockerfile step that failed, `log_tail` its last lines."""

    def __init__(self, message: str, *, step: str | None = None, log_tail: list[str]) -> None:
        self.step = step
        self.error = message
        self.log_tail = log_tail
        super().__init__(f"{step} failed: {message}" if step else message)


def agent_context_dir() -> Path:
    """The agent image's build context: `container/` at the root of the Mercury source tree."""
    # mercury/sandbox/images.py -> <root>/container
    path = Path(__file__).resolve().parents[2] / "container"
    if not (path / "Dockerfile").is_file():
        raise FileNotFoundError(
            f"{path / 'Dockerfile'} not found: building the agent image needs the Mercury "
            "source tree (run from a checkout, not an installed wheel)"
        )
    return path


def image_id(client: docker.DockerClient, ref: str) -> str | None:
    """The id of a local image, or None when the engine does not have it."""
    try:
        return str(client.images.get(ref).id)
    except ImageNotFound:
        return None
    except APIError as exc:
        # An invalid reference (e.g. upper-case) cannot name a local image either.
        if exc.status_code == 400:
            return None
        raise
    except RequestsConnectionError as exc:
        raise _engine_gone(exc) from exc


def resolve_base(client: docker.DockerClient, base: str, on_event: OnEvent = _ignore) -> str:
    """Make sure `base` is on the engine: local, else pulled. Returns the reference to use.

    Raises BaseImageUnavailable (whose message has the commands that build one locally).
    """
    if image_id(client, base) is not None:
        return base
    on_event(f"base image {base} is not local; pulling it")
    try:
        for event in client.api.pull(base, stream=True, decode=True):
            if event.get("error"):
                raise BaseImageUnavailable(base, _one_line(event["error"]))
            status = " ".join(str(event[k]) for k in ("id", "status") if event.get(k))
            # Per-layer byte counters arrive many times a second; they are noise in a log.
            if status and not event.get("progressDetail"):
                on_event(status)
    except APIError as exc:
        raise BaseImageUnavailable(base, _one_line(exc.explanation or str(exc))) from None
    except RequestsConnectionError as exc:
        raise _engine_gone(exc) from exc
    except DockerException as exc:
        raise BaseImageUnavailable(base, _one_line(str(exc))) from None
    if image_id(client, base) is None:
        raise BaseImageUnavailable(base, "the pull finished but the image is not there")
    return base


@dataclass(frozen=True)
class BuildPlan:
    """What to build: `tag` FROM `base`, from `context`, for the account `user` (uid, gid)."""

    tag: str
    base: str
    context: Path
    user: tuple[int, int]


def plan_build(
    container: ContainerConfig, *, tag: str | None = None, base: str | None = None
) -> BuildPlan:
    """The agent image build for this config: `container.image` FROM `container.base_image`.

    Checked before the engine is asked anything. Raises IdentityError (a ValueError) when
    container.user cannot work here and FileNotFoundError without the source tree.
    """
    ident = container_identity(container)  # the image's account is the runs' uid
    return BuildPlan(
        tag=tag or container.image,
        base=base or container.base_image,
        context=agent_context_dir(),
        user=(ident.uid, ident.gid),
    )


def run_build(
    client: docker.DockerClient,
    plan: BuildPlan,
    *,
    on_event: OnEvent = _ignore,
    nocache: bool = False,
) -> str:
    """Build `plan`: the base made local (pulled if need be), then the image; its id.

    The one build behind `mercury image build` and `mercury run`'s (re)builds. Raises
    BaseImageUnavailable, ImageBuildError or EngineUnavailable.
    """
    resolve_base(client, plan.base, on_event=on_event)
    return build_agent_image(
        client,
        base=plan.base,
        tag=plan.tag,
        context=plan.context,
        on_event=on_event,
        nocache=nocache,
        user=plan.user,
    )


_STEP_RE = re.compile(r"^Step \d+/\d+ : ")


def build_agent_image(
    client: docker.DockerClient,
    *,
    base: str,
    tag: str,
    context: Path | None = None,
    on_event: OnEvent = _ignore,
    nocache: bool = False,
    labels: Mapping[str, str] | None = None,
    user: tuple[int, int] | None = None,
) -> str:
    """Build container/Dockerfile FROM `base` as `tag`, streaming log lines to `on_event`.

    `user` (uid, gid) is the account the image gets for its agent: the id runs will use
    (identity.container_identity), so tools that look the user up find it; the default is
    the Dockerfile's (the root-install id).

    Call resolve_base first: its error says how to get a base, the builder's does not.
    Returns the image id; raises ImageBuildError naming the failing step.
    """
    ctx = context or agent_context_dir()
    return stream_build(
        client,
        tag=tag,
        on_event=on_event,
        path=str(ctx),
        buildargs={
            "BASE_IMAGE": base,
            **({"AGENT_UID": str(user[0]), "AGENT_GID": str(user[1])} if user else {}),
        },
        labels={LABEL_IMAGE: "agent", LABEL_BASE: base, **(labels or {})},
        nocache=nocache,
    )


def stream_build(
    client: docker.DockerClient, *, tag: str, on_event: OnEvent = _ignore, **build: Any
) -> str:
    """One engine build as `tag` (`build` goes to the SDK's api.build: path or fileobj,
    buildargs, labels, nocache), its log streamed to `on_event` as whole lines.

    Shared by the agent image and the extensions' derived image (ext_image.py), so both
    report a failure the same way. Returns the image id; raises ImageBuildError naming the
    failing step, or EngineUnavailable.
    """
    tail: list[str] = []
    step: str | None = None

    def emit(line: str) -> None:
        nonlocal step
        tail.append(line)
        del tail[:-LOG_TAIL_LINES]
        if _STEP_RE.match(line):
            step = line
        on_event(line)

    try:
        stream = client.api.build(
            tag=tag,
            decode=True,
            rm=True,
            forcerm=True,  # no stopped intermediate containers left behind by a failed step
            pull=False,
            **build,
        )
        for line in _log_lines(stream):
            if isinstance(line, _BuildFailure):
                raise ImageBuildError(line.message, step=_short_step(step), log_tail=list(tail))
            emit(line)
    except APIError as exc:
        message = _one_line(exc.explanation or str(exc))
        raise ImageBuildError(message, step=_short_step(step), log_tail=list(tail)) from None
    except RequestsConnectionError as exc:
        raise _engine_gone(exc) from exc

    # The tag is the source of truth: engines report the new id in different ways
    # ("Successfully built", an aux event), but all of them tag it.
    final = image_id(client, tag)
    if final is None:
        raise ImageBuildError(
            f"the build ended but {tag} is not on the engine",
            step=_short_step(step),
            log_tail=list(tail),
        )
    return final


class _BuildFailure:
    def __init__(self, message: str) -> None:
        self.message = message


def _log_lines(events: Iterable[dict[str, Any]]) -> Iterable[str | _BuildFailure]:
    """Build events -> whole log lines (stream chunks split or join lines arbitrarily)."""
    partial = ""
    for event in events:
        if "error" in event or "errorDetail" in event:
            detail = event.get("errorDetail") or {}
            if partial.strip():
                yield partial.strip()
            yield _BuildFailure(_one_line(str(event.get("error") or detail.get("message", ""))))
            return
        chunk = event.get("stream")
        if chunk is None:
            status = event.get("status")
            if status:  # pulls triggered by the Dockerfile itself, e.g. a multi-stage FROM
                yield str(status)
            continue
        partial += str(chunk)
        *lines, partial = partial.split("\n")
        for line in lines:
            # Progress bars redraw with \r; the last redraw is the one worth keeping.
            text = line.rsplit("\r", 1)[-1].rstrip()
            if text:
                yield text
    if partial.strip():
        yield partial.strip()


def _short_step(step: str | None) -> str | None:
    """`Step 6/9 : RUN a very long command ...` cut to fit one line of an error message."""
    if step is None:
        return None
    return step if len(step) <= 160 else step[:157] + "..."


def _one_line(text: str) -> str:
    lines = [ln.strip() for ln in text.strip().splitlines() if ln.strip()]
    return " / ".join(lines) if lines else "unknown error"


def _engine_gone(exc: BaseException) -> EngineUnavailable:
    reason = _one_line(str(exc))[:160]
    return EngineUnavailable(
        f"Docker engine not reachable at {scrub_text(engine_endpoint())}: {scrub_text(reason)}"
    )
