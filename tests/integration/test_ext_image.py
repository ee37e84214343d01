"""The derived extension image (sandbox/ext_image.py) built on the real Docker engine.

FROM the real agent image (conftest's `agent_image`), with real pip and apt steps (these
builds reach the package registries, so there is one small build per test). The tags go to
a repository of this session's own, so the prunes here never touch anyone else's images.
"""

from __future__ import annotations

import contextlib
import uuid
from collections.abc import Iterator
from pathlib import Path

import docker
import pytest
from docker.errors import APIError, NotFound

from mercury.checks import Status
from mercury.config import Config, ContainerConfig, ExtensionsConfig
from mercury.core.extension_spec import EXT_VENV_ROOT, InstallSteps
from mercury.doctor import check_ext_image
from mercury.sandbox.ext_image import (
    ExtImageBuilder,
    ExtImageBuildError,
    build_ext_image,
    ext_image_tag,
    prune_ext_images,
)
from mercury.sandbox.images import image_id

pytestmark = pytest.mark.docker

FIRST = (("six-reader", InstallSteps(pip=("six",))),)
SECOND = (("six-writer", InstallSteps(pip=("six",))),)
BROKEN = (("broken-ext", InstallSteps(apt=("mercury-no-such-package",))),)


@pytest.fixture(scope="module")
def repo(docker_client: docker.DockerClient) -> Iterator[str]:
    """A repository of this module's own; every tag in it removed at the end."""
    name = f"mercury-test-ext-{uuid.uuid4().hex[:8]}"
    yield name
    for image in docker_client.api.images(name=name):
        for tag in image.get("RepoTags") or []:
            with contextlib.suppress(NotFound, APIError):
                docker_client.api.remove_image(tag, force=True)


@pytest.fixture(scope="module")
def first_tag(docker_client: docker.DockerClient, agent_image: str, repo: str) -> str:
    lines: list[str] = []
    try:
        return build_ext_image(docker_client, agent_image, FIRST, on_event=lines.append, repo=repo)
    except ExtImageBuildError as exc:
        pytest.fail(f"{exc}\n" + "\n".join(lines[-40:]), pytrace=False)


def run_in(client: docker.DockerClient, image: str, entrypoint: list[str]) -> str:
    out = client.containers.run(
        image, entrypoint=entrypoint, remove=True, network_mode="none", stderr=True
    )
    return bytes(out).decode().strip()


def test_the_extensions_venv_has_its_package_and_the_image_keeps_the_agents_user(
    docker_client: docker.DockerClient, agent_image: str, repo: str, first_tag: str
) -> None:
    base_id = image_id(docker_client, agent_image)
    assert base_id is not None
    assert first_tag == ext_image_tag(base_id, FIRST, repo=repo)

    python = f"{EXT_VENV_ROOT}/six-reader/bin/python"
    code = "import os, six; print(os.getuid(), os.getgid(), six.__file__)"
    uid, gid, where = run_in(docker_client, first_tag, [python, "-c", code]).split()
    assert where.startswith(f"{EXT_VENV_ROOT}/six-reader/lib/")

    agent_config = docker_client.api.inspect_image(agent_image)["Config"]
    derived = docker_client.api.inspect_image(first_tag)
    assert derived["Config"]["User"] == agent_config["User"] == f"{uid}:{gid}"
    assert derived["Config"]["Entrypoint"] == agent_config["Entrypoint"]
    labels = derived["Config"]["Labels"]
    assert labels["mercury.image"] == "agent-ext"
    assert labels["mercury.ext.hash"] == first_tag.split(":", 1)[1]
    assert labels["mercury.base-image"] == base_id
    # The agent's own venv knows nothing of the extension's packages.
    agent_python = "/opt/mercury-agent/bin/python"
    out = run_in(docker_client, first_tag, [agent_python, "-c", "import importlib.util as u;"
                                            " print(u.find_spec('six') is None)"])  # fmt: skip
    assert out == "True"

    # Built once: asking again finds the tag and builds nothing.
    lines: list[str] = []
    assert build_ext_image(docker_client, agent_image, FIRST, on_event=lines.append, repo=repo) == (
        first_tag
    )
    assert lines == []


async def test_a_new_plan_builds_a_new_tag_and_prunes_the_old_one_unless_a_container_uses_it(
    docker_client: docker.DockerClient, agent_image: str, repo: str, first_tag: str
) -> None:
    assert image_id(docker_client, first_tag) is not None
    holder = docker_client.containers.create(first_tag, entrypoint=["true"], network_mode="none")
    try:
        builder = ExtImageBuilder(ContainerConfig(image=agent_image), SECOND, repo=repo)
        assert builder.status().state == "none"
        second_tag = await builder()
        status = builder.status()
        assert (status.state, status.tag, status.error) == ("ready", second_tag, None)
        assert second_tag != first_tag and second_tag.startswith(f"{repo}:")
        assert image_id(docker_client, second_tag) is not None
        # A container made from the old image keeps it: pruning is never forced.
        assert image_id(docker_client, first_tag) is not None
    finally:
        holder.remove(force=True)
    assert prune_ext_images(docker_client, keep=second_tag, repo=repo) == [first_tag]
    assert image_id(docker_client, first_tag) is None
    assert image_id(docker_client, second_tag) is not None
    assert prune_ext_images(docker_client, keep=second_tag, repo=repo) == []


async def test_a_failing_apt_step_names_the_extension_and_the_step(
    docker_client: docker.DockerClient, agent_image: str, repo: str
) -> None:
    builder = ExtImageBuilder(ContainerConfig(image=agent_image), BROKEN, repo=repo)
    with pytest.raises(ExtImageBuildError) as caught:
        await builder()
    err = caught.value
    assert (err.extension, err.kind) == ("broken-ext", "apt")
    assert str(err) == (
        "extension broken-ext: apt install step failed: "
        "E: Unable to locate package mercury-no-such-package"
    )
    assert err.step is not None and "mercury-no-such-package" in err.step
    status = builder.status()
    assert status.state == "failed" and status.error is not None
    assert "broken-ext" in status.error
    base_id = image_id(docker_client, agent_image)
    assert base_id is not None
    assert image_id(docker_client, ext_image_tag(base_id, BROKEN, repo=repo)) is None


def test_doctor_says_whether_the_current_plans_image_is_on_the_engine(
    docker_client: docker.DockerClient, agent_image: str, tmp_path: Path
) -> None:
    name = f"doctor-{uuid.uuid4().hex[:8]}"  # a plan no other image on the engine has
    folder = tmp_path / "extensions" / name
    folder.mkdir(parents=True)
    (folder / "extension.yaml").write_text(
        f'name: {name}\nversion: "1.0"\ndescription: six\ninstall:\n  pip: ["six"]\n'
    )

    def config(enabled: list[str]) -> Config:
        return Config(
            data_dir=tmp_path / "data",
            container=ContainerConfig(image=agent_image),
            extensions=ExtensionsConfig(dir=tmp_path / "extensions", enabled=enabled),
        )

    none = check_ext_image(config([]), docker_client)
    assert (none.status, none.detail) == (Status.OK, "no extension installs: none needed")
    broken = check_ext_image(config(["not-there"]), docker_client)
    assert broken.status is Status.FAIL and "not-there" in broken.detail

    base_id = image_id(docker_client, agent_image)
    assert base_id is not None
    # The real repository, as `mercury run` builds it.
    tag = ext_image_tag(base_id, ((name, InstallSteps(pip=("six",))),))
    missing = check_ext_image(config([name]), docker_client)
    assert missing.status is Status.WARN and not missing.failed
    assert missing.detail.startswith(f"{tag} not built yet: runs use the plain agent image")
    assert "mercury run" in missing.hint
    # The doctor looks for the tag alone (offline, nothing else is knowable): any image
    # under it counts, so the agent image stands in for a build here.
    repo, _, version = tag.partition(":")
    docker_client.api.tag(agent_image, repo, version)
    try:
        ready = check_ext_image(config([name]), docker_client)
        assert (ready.status, ready.detail) == (Status.OK, f"{tag} ready ({name})")
        assert check_ext_image(config([name]), None).status is Status.SKIP
    finally:
        docker_client.api.remove_image(tag)  # only the tag: the agent image has its own
