"""Faults injected for real into a running `mercury run`: its agent image deleted, its
Docker engine killed and restarted.

The image tests use the host's engine: the image Mercury builds is made of the session's
agent image layers (same Dockerfile, same base), so each build is a cache hit and
`docker rmi -f` of the configured tag deletes only that name. The engine tests run
Mercury against a private `dockerd` (tests/integration/dockerd.py), shared by the module:
killing the host's engine would take every other test (and anything else on it) down.
"""

from __future__ import annotations

import asyncio
import contextlib
import io
import json
import os
import signal
import tarfile
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import docker
import pytest

from mercury.config import Config, ContainerConfig
from mercury.core.router import unavailable_notice
from mercury.sandbox.hardening import LABEL_INSTANCE
from mercury.sandbox.runner import ContainerRunner
from mercury.sandbox.types import ImageBuildState, RunReason, RunRequest
from tests.fakes.model_server import FakeModelServer
from tests.integration.dockerd import PrivateEngine
from tests.integration.mercury_site import Mercury, echo_responder
from tests.integration.test_image_build import remove_with_descendants

pytestmark = pytest.mark.docker


def events(m: Mercury, name: str) -> list[dict[str, Any]]:
    """The JSON log records of `m` whose event is `name`."""
    found = []
    for line in m.logs().splitlines():
        with contextlib.suppress(ValueError):
            record = json.loads(line)
            if isinstance(record, dict) and record.get("event") == name:
                found.append(record)
    return found


def wait_for(what: str, check: Callable[[], bool], timeout: float = 60.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if check():
            return
        time.sleep(0.1)
    raise AssertionError(f"timed out waiting for {what}")


def assert_answered(m: Mercury, sent: dict[str, list[str]], settle: float = 2.0) -> None:
    """Every message got exactly one real answer (the echo), in order, and nothing else."""
    for space, texts in sent.items():
        m.wait_replies(space, len(texts))
    time.sleep(settle)  # a duplicate or a late failure notice would show up by now
    for space, texts in sent.items():
        got = [r["text"] for r in m.replies(space)]
        assert got == [f"re: {t}" for t in texts], f"{space}: {got}\n{m.logs()[-3000:]}"


# --------------------------------------------------------------------------- the agent image


def test_a_missing_agent_image_is_built_at_start_and_rebuilt_once_when_deleted(
    site: Any,
    fake: FakeModelServer,
    base_image: str,
    agent_image: str,
    docker_client: docker.DockerClient,
) -> None:
    tag = f"mercury-test-rebuilt:{uuid.uuid4().hex[:12]}"
    m = site(extra={"container": {"image": tag, "base_image": base_image}})
    try:
        m.start()
        fake.responder = echo_responder()
        m.post("img-a", "first")
        assert_answered(m, {"img-a": ["first"]}, settle=0)
        # Built at start, from the configured base, of the session's cached layers.
        assert docker_client.images.get(tag).id == docker_client.images.get(agent_image).id
        assert len(events(m, "agent image built")) == 1

        docker_client.images.remove(tag, force=True)  # docker rmi -f
        sent = {"img-a": ["second", "third"], "img-b": ["fourth"], "img-c": ["fifth"]}
        for space, texts in sent.items():
            for text in texts:
                m.post(space, text)
        assert_answered(m, {"img-a": ["first", *sent["img-a"]], "img-b": ["fourth"],
                            "img-c": ["fifth"]})  # fmt: skip
        # One rebuild for every run that found the image gone.
        assert len(events(m, "agent image built")) == 2, m.logs()[-4000:]
        assert len(events(m, "agent image missing; building it")) == 2
        assert docker_client.images.get(tag).id == docker_client.images.get(agent_image).id
        assert m.stop() == 0
    finally:
        with contextlib.suppress(docker.errors.ImageNotFound):
            docker_client.images.remove(tag, noprune=True)


@pytest.fixture
def broken_base(docker_client: docker.DockerClient) -> Iterator[str]:
    """A base with no shell and no python: the agent image's first RUN step fails."""
    data = io.BytesIO()
    with tarfile.open(fileobj=data, mode="w") as tar:
        info = tarfile.TarInfo("hello.txt")
        info.size = 2
        tar.addfile(info, io.BytesIO(b"hi"))
    repo = f"mercury-test-broken-base-{uuid.uuid4().hex[:8]}"
    docker_client.api.import_image_from_data(data.getvalue(), repository=repo, tag="1")
    image_id = docker_client.images.get(f"{repo}:1").id
    yield f"{repo}:1"
    remove_with_descendants(docker_client, image_id)


def test_an_agent_image_that_cannot_be_built_fails_messages_with_a_plain_notice(
    site: Any, fake: FakeModelServer, broken_base: str
) -> None:
    tag = f"mercury-test-unbuildable:{uuid.uuid4().hex[:12]}"
    m = site(extra={"container": {"image": tag, "base_image": broken_base}})
    m.start()
    fake.responder = echo_responder()
    m.post("bad-a", "one")
    m.post("bad-b", "two")
    m.wait_replies("bad-a", 1)
    m.wait_replies("bad-b", 1)
    time.sleep(2)  # no spinning: nothing more comes
    for space in ("bad-a", "bad-b"):
        assert [r["text"] for r in m.replies(space)] == [unavailable_notice("image")]
    assert "operator" in unavailable_notice("image")
    assert fake.requests == []
    # One build, and the operator is told why it failed.
    (failed,) = events(m, "agent image build failed")
    assert "RUN" in failed["error"], failed
    assert failed["fix"].startswith("fix the cause, then run `mercury image build`")
    assert m.stop() == 0


# --------------------------------------------------------------------------- the engine


@pytest.fixture(scope="module")
def engine(agent_image: str, test_image: str) -> Iterator[PrivateEngine]:
    """A dockerd of the module's own, with the agent and test images loaded into it."""
    private = PrivateEngine()
    try:
        private.start()
        private.load(agent_image)
        private.load(test_image)
        yield private
    finally:
        private.close()


def instance_containers(engine: PrivateEngine, instance: str) -> list[Any]:
    client = engine.client()
    try:
        return list(
            client.containers.list(
                ignore_removed=True, all=True, filters={"label": f"{LABEL_INSTANCE}={instance}"}
            )
        )
    finally:
        client.close()


@pytest.fixture
def on_engine(site: Any, engine: PrivateEngine) -> Iterator[Callable[..., Mercury]]:
    """Factory: a started `mercury run` whose DOCKER_HOST is the private engine."""
    made: list[Mercury] = []
    if not engine.answers():  # an earlier test failed mid-outage
        engine.start()

    def make(**cfg: Any) -> Mercury:
        m: Mercury = site(**cfg)
        made.append(m)
        saved = os.environ.get("DOCKER_HOST")
        os.environ["DOCKER_HOST"] = engine.host  # copied into the `mercury run` process
        try:
            m.start()
        finally:
            if saved is None:
                del os.environ["DOCKER_HOST"]
            else:
                os.environ["DOCKER_HOST"] = saved
        return m

    yield make
    for m in made:
        if m.proc is not None and m.proc.poll() is None:
            m.stop(signal.SIGKILL)
    if not engine.answers():
        engine.start()
    engine.remove_all_containers()


async def test_a_create_refused_by_a_dead_engine_is_retried_once_it_is_back(
    engine: PrivateEngine, test_image: str, tmp_path: Path
) -> None:
    if not engine.answers():
        engine.start()
    (tmp_path / "resources").mkdir()
    (tmp_path / "api").mkdir()
    config = Config(
        instance=f"t{uuid.uuid4().hex[:12]}",
        data_dir=tmp_path / "data",
        container=ContainerConfig(image=test_image, memory="128m", pids=64, timeout=20),
    )
    client = engine.client()
    runner = ContainerRunner(
        config,
        ImageBuildState(test_image),
        client=client,
        resources_dir=tmp_path / "resources",
        api_socket_dir=tmp_path / "api",
    )

    def request(prompt: str) -> RunRequest:
        return RunRequest(run_id=uuid.uuid4().hex[:12], space_id="s1", input={"prompt": prompt})

    try:
        engine.kill()
        refused = await runner.run(request("echo never"))
        assert (refused.reason, refused.retry, refused.container_name) == (
            RunReason.CRASHED,
            True,
            None,
        ), refused
        assert refused.error is not None and refused.error.startswith("create failed")
        held = runner.hold_reason()
        assert held is not None and "Docker engine" in held
        waiting = await runner.run(request("echo not yet"))
        assert waiting.retry and waiting.error is not None
        assert waiting.error.startswith("not started")
        await asyncio.to_thread(engine.start)
        await asyncio.wait_for(runner.health.wait_up(), timeout=30)
        assert runner.hold_reason() is None
        back = await runner.run(request("echo back"))
        assert (back.reason, back.reply) == (RunReason.OK, "back")
        await runner.wait_cleanups()
        assert instance_containers(engine, config.instance) == []
    finally:
        if not engine.answers():
            await asyncio.to_thread(engine.start)
        await runner.aclose()
        client.close()


def test_an_engine_crash_mid_run_loses_and_doubles_no_message(
    on_engine: Callable[..., Mercury], fake: FakeModelServer, engine: PrivateEngine
) -> None:
    m = on_engine(max_concurrency=2)
    # The first run's model call outlasts the outage: the engine's restart kills its
    # container, so it must be run again.
    fake.responder = echo_responder(delay=60)
    m.post("out-a", "one")
    wait_for("the first model call", lambda: bool(fake.requests))
    fake.responder = echo_responder(delay=0.3)
    m.post("out-a", "two")
    m.post("out-b", "three")
    m.post("out-c", "four")
    engine.kill()
    time.sleep(3)
    engine.start()
    assert_answered(m, {"out-a": ["one", "two"], "out-b": ["three"], "out-c": ["four"]})
    assert events(m, "docker engine answers again"), m.logs()[-3000:]
    # Nothing of the killed run is left: its removal waited for the engine. What may
    # remain are the warm containers made since the engine came back (the ones the
    # outage killed are dropped), waiting for their spaces' next messages.
    wait_for(
        "no container but waiting warm ones left",
        lambda: all(
            c.labels.get("mercury.warm") == "true" and c.status == "running"
            for c in instance_containers(engine, m.instance)
        ),
        20,
    )
    assert m.stop() == 0
    assert instance_containers(engine, m.instance) == []  # the waiting ones go at shutdown


def test_an_outage_past_the_limit_fails_waiting_messages_with_a_plain_notice(
    on_engine: Callable[..., Mercury], fake: FakeModelServer, engine: PrivateEngine
) -> None:
    m = on_engine(extra={"container": {"engine_outage_limit": "3s"}})
    fake.responder = echo_responder()
    m.post("lim-a", "before")
    m.wait_replies("lim-a", 1)
    engine.kill()
    m.post("lim-a", "during one")
    m.post("lim-b", "during two")
    a = m.wait_replies("lim-a", 2, timeout=60)
    b = m.wait_replies("lim-b", 1, timeout=60)
    assert [r["text"] for r in a] == ["re: before", unavailable_notice("engine")]
    assert [r["text"] for r in b] == [unavailable_notice("engine")]
    assert "operator" in unavailable_notice("engine")
    # When the engine is back, messages are answered again.
    engine.start()
    m.post("lim-a", "after")
    replies = m.wait_replies("lim-a", 3, timeout=60)
    assert replies[-1]["text"] == "re: after"
    assert m.stop() == 0


def test_a_container_whose_removal_failed_in_the_outage_is_removed_when_the_engine_returns(
    on_engine: Callable[..., Mercury], fake: FakeModelServer, engine: PrivateEngine
) -> None:
    m = on_engine()
    fake.responder = echo_responder(delay=3)
    m.post("rm-a", "slow")
    wait_for("the model call", lambda: bool(fake.requests))
    engine.kill()
    # The agent goes on without its engine: its result is read from the io dir and the
    # reply goes out while the engine is down; removing its container cannot.
    (reply,) = m.wait_replies("rm-a", 1)
    assert reply["text"] == "re: slow"
    time.sleep(1)
    engine.start()
    wait_for("the container's removal", lambda: not instance_containers(engine, m.instance), 20)
    assert m.proc is not None and m.proc.poll() is None  # removed by the running Mercury
    assert m.stop() == 0


def test_a_shutdown_during_an_outage_does_not_wait_for_the_engine(
    on_engine: Callable[..., Mercury], fake: FakeModelServer, engine: PrivateEngine
) -> None:
    m = on_engine()
    fake.responder = echo_responder(delay=2)
    m.post("down-a", "slow")
    wait_for("the model call", lambda: bool(fake.requests))
    engine.kill()
    m.wait_replies("down-a", 1)
    wait_for("the removal to wait", lambda: bool(events(m, "run.remove_waits_for_engine")))
    assert m.proc is not None
    m.proc.send_signal(signal.SIGTERM)
    m.proc.wait(timeout=20)  # not held up by a removal that waits for the dead engine
    assert m.stop() == 0
    assert not events(m, "shutdown timed out; exiting anyway")
    # The run's container is left, with the reason, to the next start's orphan cleanup;
    # so is the warm container made for the space's next message.
    left = events(m, "run.remove_failed")
    assert 1 <= len(left) <= 2, left
    assert all("next start" in e["hint"] for e in left)
