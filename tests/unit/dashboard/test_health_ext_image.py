"""The Health page's extension-image row from the running build (pages/health.py): a
build under way shows its step, a failed one why; otherwise the doctor's row stands."""

from __future__ import annotations

from types import SimpleNamespace

from mercury.checks import Status
from mercury.dashboard.pages.health import ext_image_row
from mercury.sandbox.ext_image import ExtImageStatus
from mercury.sandbox.imagestate import ImageBuildState


class Builder:
    """The status side of ExtImageBuilder (its build needs an engine; not called here)."""

    def __init__(self, status: ExtImageStatus) -> None:
        self._status = status

    def status(self) -> ExtImageStatus:
        return self._status

    async def __call__(self) -> str:
        raise AssertionError("not built in this test")


def deps_with(status: ExtImageStatus | None) -> object:
    builder = Builder(status) if status is not None else None
    return SimpleNamespace(runner=SimpleNamespace(images=ImageBuildState("agent", builder)))


def test_a_build_under_way_shows_its_step() -> None:
    row = ext_image_row(deps_with(ExtImageStatus("building", step="Step 4/9 : RUN [...]")))
    assert row is not None and row.status is Status.WARN
    assert row.detail == "building: Step 4/9 : RUN [...]"


def test_a_failed_build_says_why() -> None:
    failed = ExtImageStatus("failed", error="extension web-reader: pip install step failed: x")
    row = ext_image_row(deps_with(failed))
    assert row is not None and row.status is Status.FAIL
    assert "web-reader: pip install step failed" in row.detail


def test_otherwise_the_doctors_row_stands() -> None:
    assert ext_image_row(deps_with(ExtImageStatus("ready", tag="mercury-agent-ext:abc"))) is None
    assert ext_image_row(deps_with(None)) is None
    assert ext_image_row(SimpleNamespace(runner=None)) is None
