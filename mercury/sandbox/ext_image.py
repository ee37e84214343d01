"""The derived agent image: the agent image plus every enabled extension's install steps.

`mercury-agent-ext:<hash12>` is built FROM the agent image (by id) from a Dockerfile this
module writes. Extension manifests are untrusted text, so the Dockerfile never holds shell
text: every RUN is exec form, a JSON array of argv items (json.dumps), each package
specifier one item after `--`, so even a specifier that slipped past validation reaches
apt/pip/npm as one package name and never a shell. Each RUN is preceded by a comment naming
the extension and the kind of step, and the step numbers are kept beside the Dockerfile,
so a failed build names the extension and the step that broke it.

The tag hashes the base image id and the plan (core/extension_spec.install_hash): a changed
extension set or a rebuilt agent image gives a new tag; stale tags are pruned after a build.
`ExtImageBuilder` is the `builder` of ImageBuildState: runs use the agent image until the
derived one is built.
"""

from __future__ import annotations

import asyncio
import contextlib
import io
import json
import re
import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal

import docker
from docker.errors import APIError, NotFound

from mercury.config import ContainerConfig
from mercury.core.extension_spec import (
    EXT_IMAGE_REPO,
    EXT_VENV_ROOT,
    InstallSteps,
    install_hash,
)
from mercury.logging import get_logger, scrub_text
from mercury.sandbox.agentimage import in_daemon_thread
from mercury.sandbox.engine import connect_engine
from mercury.sandbox.enginewatch import engine_down_error, short_error
from mercury.sandbox.images import (
    LABEL_BASE,
    LABEL_IMAGE,
    ImageBuildError,
    OnEvent,
    image_id,
    stream_build,
)

log = get_logger("mercury.sandbox.images")

Plan = Sequence[tuple[str, InstallSteps]]

LABEL_EXT_HASH = "mercury.ext.hash"
IMAGE_KIND = "agent-ext"

STEP_CHARS = 200  # a progress line shows this much of a Dockerfile step
LOG_TAIL_LINES = 20  # build log lines logged with a failure

# What each kind of step is called in an error: "extension x: pip install step failed".
STEP_KINDS = {
    "apt-update": "apt update",
    "apt": "apt install",
    "apt-clean": "apt cleanup",
    "venv": "python venv",
    "pip": "pip install",
    "npm": "npm install",
}

# Defensive checks at the Dockerfile's edge (the manifest loader validates first): a name
# goes into paths and comments, a newline anywhere would start a Dockerfile instruction.
_NAME_RE = re.compile(r"^[a-z][a-z0-9-]{1,31}$")
_REF_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.:/@-]{0,254}$")
_USER_RE = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9_.:-]{0,63}$")
_CONTROL_RE = re.compile(r"[\x00-\x1f\x7f]")
_STEP_NUMBER_RE = re.compile(r"^Step (\d+)/\d+ : ")
_ANSI_RE = re.compile(r"\x1b\[[0-9;]*[A-Za-z]")
_ERROR_LINE_RE = re.compile(r"^(E:|ERROR:|error:|npm ERR!|npm error|fatal:)", re.IGNORECASE)


def _ignore(_line: str) -> None:
    pass


# --------------------------------------------------------------------------- Dockerfile


@dataclass(frozen=True)
class DockerPlan:
    """A rendered Dockerfile and which extension each of its RUN steps belongs to.

    `steps` holds (step number as the classic builder counts it, extension, kind); an
    apt update or cleanup shared by several extensions names them all, comma-separated.
    """

    dockerfile: str
    hash: str
    steps: tuple[tuple[int, str, str], ...]

    def step(self, number: int) -> tuple[str, str] | None:
        """(extension, kind) of Dockerfile step `number`, or None for a step of ours."""
        for n, extension, kind in self.steps:
            if n == number:
                return extension, kind
        return None


def ext_image_tag(base_image_id: str, plan: Plan, *, repo: str = EXT_IMAGE_REPO) -> str:
    """The derived image's tag for this agent image and install plan (`repo`: tests use
    one of their own, so that their prunes leave everyone else's images alone)."""
    return f"{repo}:{install_hash(base_image_id, tuple(plan))}"


def render_dockerfile(base_image_ref: str, plan: Plan, *, user: str) -> DockerPlan:
    """The Dockerfile of the derived image FROM `base_image_ref` (the agent image's id).

    Only exec-form RUN lines; system packages first (pip builds may need them), then per
    extension its venv and pip installs, then its npm installs; back to `user` (the agent
    image's account) at the end. Raises ValueError naming a value that cannot be written
    safely (the loader's validation should have refused it already).
    """
    if not _REF_RE.match(base_image_ref):
        raise ValueError(f"base image reference {base_image_ref!r} is not an image id or tag")
    if not _USER_RE.match(user):
        raise ValueError(f"image user {user!r} is not a user name or uid:gid")
    for name, steps in plan:
        if not _NAME_RE.match(name):
            raise ValueError(f"extension name {name!r} does not match {_NAME_RE.pattern}")
        for kind in ("apt", "pip", "npm"):
            for spec in getattr(steps, kind):
                _check_spec(name, kind, spec)

    digest = install_hash(base_image_ref, tuple(plan))
    lines = [
        "# Mercury's derived agent image: the agent image plus extensions' install steps.",
        "# Written by mercury/sandbox/ext_image.py. Every RUN is exec form: no shell.",
    ]
    steps: list[tuple[int, str, str]] = []
    count = 0

    def instruction(text: str) -> None:
        nonlocal count
        count += 1
        lines.append(text)

    def run(extension: str, kind: str, argv: list[str]) -> None:
        lines.append("")
        lines.append(f"# extension {extension}: {kind}")
        instruction("RUN " + json.dumps(argv))
        steps.append((count, extension, kind))

    instruction(f"FROM {base_image_ref}")
    # Labels first: they make the build cache of every later step specific to this plan, so
    # a new plan never reuses an old `apt-get update` layer (stale lists, vanished .debs).
    instruction(
        "LABEL "
        + " ".join(
            f"{key}={json.dumps(value)}"
            for key, value in (
                (LABEL_IMAGE, IMAGE_KIND),
                (LABEL_EXT_HASH, digest),
                (LABEL_BASE, base_image_ref),
            )
        )
    )
    instruction("USER root")

    apt = [(name, steps_.apt) for name, steps_ in plan if steps_.apt]
    if apt:
        everyone = ", ".join(name for name, _ in apt)
        # ARG, not ENV: set for the build's RUN steps only, not in the runs' environment.
        instruction("ARG DEBIAN_FRONTEND=noninteractive")
        run(everyone, "apt-update", ["apt-get", "update"])
        for name, packages in apt:
            argv = ["apt-get", "install", "-y", "--no-install-recommends", "--", *packages]
            run(name, "apt", argv)
        # What `rm -rf /var/lib/apt/lists/*` does, without a shell for the glob.
        cleanup = ["find", "/var/lib/apt/lists", "/var/cache/apt/archives", "-mindepth", "1"]
        run(everyone, "apt-clean", [*cleanup, "-delete"])
    for name, install in plan:
        root = f"{EXT_VENV_ROOT}/{name}"
        if install.pip:
            run(name, "venv", ["python3", "-m", "venv", root])
            run(name, "pip", [f"{root}/bin/pip", "install", "--no-cache-dir", "--", *install.pip])
        if install.npm:
            run(
                name,
                "npm",
                ["npm", "install", "-g", "--prefix", f"{root}/node", "--", *install.npm],
            )
    lines.append("")
    instruction(f"USER {user}")
    return DockerPlan(dockerfile="\n".join(lines) + "\n", hash=digest, steps=tuple(steps))


def _check_spec(name: str, kind: str, spec: object) -> None:
    if not isinstance(spec, str) or not spec:
        raise ValueError(f"extension {name}: install.{kind} has an empty or non-text entry")
    if _CONTROL_RE.search(spec):
        raise ValueError(f"extension {name}: install.{kind} entry {spec!r} has control characters")
    if spec.startswith("-"):
        raise ValueError(f"extension {name}: install.{kind} entry {spec!r} looks like an option")


# --------------------------------------------------------------------------- build


class ExtImageBuildError(Exception):
    """The derived image did not build. `extension` and `kind` name the failing step when
    it is one of an extension's (None for a step of ours); `log_tail` is its last lines."""

    def __init__(
        self,
        error: str,
        *,
        extension: str | None = None,
        kind: str | None = None,
        step: str | None = None,
        log_tail: Sequence[str] = (),
    ) -> None:
        self.error = error
        self.extension = extension
        self.kind = kind
        self.step = step
        self.log_tail = list(log_tail)
        if extension is not None and kind is not None:
            what = STEP_KINDS.get(kind, kind)
            message = f"extension {extension}: {what} step failed: {error}"
        else:
            message = f"extension image build failed: {error}"
        super().__init__(message)


def build_ext_image(
    client: docker.DockerClient,
    base_image: str,
    plan: Plan,
    *,
    on_event: OnEvent = _ignore,
    repo: str = EXT_IMAGE_REPO,
) -> str:
    """Build the derived image of `plan` FROM the agent image `base_image`; its tag.

    Returns at once when the tag is already on the engine. Blocking. Raises
    ExtImageBuildError (naming the extension and step), ValueError for an empty or unsafe
    plan, EngineUnavailable when the engine goes away.
    """
    if not any(steps.apt or steps.pip or steps.npm for _, steps in plan):
        raise ValueError("no extension has install steps: there is no derived image to build")
    base_id = image_id(client, base_image)
    if base_id is None:
        raise ExtImageBuildError(f"the agent image {base_image} is not on the engine")
    tag = ext_image_tag(base_id, plan, repo=repo)
    if image_id(client, tag) is not None:
        return tag
    config = client.api.inspect_image(base_id).get("Config") or {}
    rendered = render_dockerfile(base_id, plan, user=str(config.get("User") or "root"))
    on_event(f"building {tag} FROM {base_image} ({base_id[:19]})")
    try:
        stream_build(
            client,
            tag=tag,
            on_event=on_event,
            fileobj=io.BytesIO(rendered.dockerfile.encode()),  # the whole (empty) context
        )
    except ImageBuildError as exc:
        raise _explain(exc, rendered) from None
    return tag


def _explain(exc: ImageBuildError, rendered: DockerPlan) -> ExtImageBuildError:
    """The engine's failure mapped back onto the extension whose step it was."""
    tail = [_ANSI_RE.sub("", line) for line in exc.log_tail]
    owner = None
    match = _STEP_NUMBER_RE.match(exc.step or "")
    if match:
        owner = rendered.step(int(match.group(1)))
        # Only the lines the failed step printed say why it failed.
        starts = [i for i, line in enumerate(tail) if _STEP_NUMBER_RE.match(line)]
        own = tail[starts[-1] + 1 :] if starts else tail
    else:
        own = tail
    reasons = [line.strip() for line in own if _ERROR_LINE_RE.match(line.strip())]
    error = scrub_text(reasons[-1] if reasons else exc.error)[:300]
    extension, kind = owner if owner else (None, None)
    return ExtImageBuildError(error, extension=extension, kind=kind, step=exc.step, log_tail=tail)


def prune_ext_images(
    client: docker.DockerClient, keep: str | None, *, repo: str = EXT_IMAGE_REPO
) -> list[str]:
    """Remove every `mercury-agent-ext:*` tag (of `repo`) but `keep`; the tags removed.

    Never forced: an image some container (running or stopped) was made from is skipped,
    and so is one the engine refuses to remove; the next prune tries again.
    """
    used = {str(c.get("ImageID", "")) for c in client.api.containers(all=True)}
    removed: list[str] = []
    for image in client.api.images(name=repo):
        if image.get("Id") in used:
            continue
        for tag in image.get("RepoTags") or []:
            if tag == keep or not tag.startswith(f"{repo}:"):
                continue
            try:
                client.api.remove_image(tag, force=False)
            except NotFound:
                continue
            except APIError as exc:
                log.info("stale ext image kept", tag=tag, why=short_error(exc))
                continue
            removed.append(tag)
    return removed


# --------------------------------------------------------------------------- background


@dataclass(frozen=True)
class ExtImageStatus:
    """What `mercury doctor` and the dashboard show of the derived image."""

    state: Literal["none", "building", "ready", "failed"]
    tag: str | None = None
    step: str | None = None
    error: str | None = None


class ExtImageBuilder:
    """Builds the derived image for `plan` FROM `container.image`; the `builder` callable of
    ImageBuildState. The build runs in a daemon thread on a connection of its own, like
    the agent image's (agentimage.py): it may take minutes and must not hold up a stop."""

    def __init__(
        self, container: ContainerConfig, plan: Plan, *, repo: str = EXT_IMAGE_REPO
    ) -> None:
        self.container = container
        self.plan = tuple(plan)
        self.repo = repo
        self._state: Literal["none", "building", "ready", "failed"] = "none"
        self._tag: str | None = None
        self._step: str | None = None
        self._error: str | None = None

    def status(self) -> ExtImageStatus:
        return ExtImageStatus(self._state, self._tag, self._step, self._error)

    async def __call__(self) -> str:
        """Build (or find) the derived image; its tag. Logs progress, and a failure
        (extension, step, log tail) before raising it."""
        base = self.container.image
        started = time.monotonic()
        self._state, self._step, self._error = "building", None, None

        def on_event(line: str) -> None:
            # In the build's daemon thread, which may outlive Mercury's stop: a log line then
            # must not turn into a logging-error traceback.
            with contextlib.suppress(Exception):
                if line.startswith("Step "):
                    self._step = line[:STEP_CHARS]
                    log.info("ext image build", base=base, step=line[:STEP_CHARS])
                else:
                    log.debug("ext image build", base=base, line=line[:STEP_CHARS])

        def build() -> tuple[str, list[str]]:
            client, _info = connect_engine()
            try:
                tag = build_ext_image(client, base, self.plan, on_event=on_event, repo=self.repo)
                return tag, prune_ext_images(client, keep=tag, repo=self.repo)
            finally:
                client.close()

        try:
            tag, pruned = await in_daemon_thread(build)
        except asyncio.CancelledError:
            self._state = "none"
            raise
        except Exception as exc:
            self._state, self._error = "failed", short_error(exc)
            if engine_down_error(exc):
                log.warning("ext image build cut short by the engine", error=self._error)
                raise
            failed = exc if isinstance(exc, ExtImageBuildError) else None
            log.error(
                "ext image build failed",
                base=base,
                extension=failed.extension if failed else None,
                kind=failed.kind if failed else None,
                step=failed.step if failed else None,
                error=self._error,
                log_tail=failed.log_tail[-LOG_TAIL_LINES:] if failed else None,
                meanwhile="runs use the agent image without the extensions' installs",
            )
            raise
        self._state, self._tag, self._step = "ready", tag, None
        log.info(
            "ext image built",
            tag=tag,
            seconds=round(time.monotonic() - started, 1),
            pruned=pruned or None,
        )
        return tag
