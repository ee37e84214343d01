"""The one way every `mercury` command loads its config and fails (mercury/cli/common.py).

Driven through click's own CliRunner on a real command, without a subprocess: the
subprocess paths are covered by tests/integration/test_cli.py.
"""

from __future__ import annotations

from pathlib import Path

import click
import pytest
from click.testing import CliRunner

from mercury.cli.common import (
    CONFIG_ERROR_EXIT,
    config_option,
    config_path_option,
    fail,
    load_or_exit,
    remember_config_path,
)
from mercury.cli.run import run_overrides
from mercury.cli.sandbox import container_overrides


@click.group()
@config_path_option
@click.pass_context
def group(ctx: click.Context, config_path: Path | None) -> None:
    remember_config_path(ctx, config_path)


@group.command()
@config_option
def port() -> None:
    click.echo(load_or_exit().config.server.port)


@group.command()
@click.argument("message")
def boom(message: str) -> None:
    fail(message, code=3)


def write(path: Path, port: int) -> Path:
    path.write_text(f"server: {{port: {port}}}\n")
    return path


def test_fail_prints_one_error_line_as_written_and_exits_with_the_code(
    capsys: pytest.CaptureFixture[str],
) -> None:
    # Brackets and colons are not rich markup or emoji codes here: printed as written.
    with pytest.raises(SystemExit) as exc:
        fail("cannot use [bold]x[/] :smile: here", code=3)
    assert exc.value.code == 3
    captured = capsys.readouterr()
    assert captured.out == ""
    assert captured.err == "error: cannot use [bold]x[/] :smile: here\n"


def test_config_is_accepted_before_or_after_the_command_name(tmp_path: Path) -> None:
    runner = CliRunner()
    before = write(tmp_path / "before.yaml", 8001)
    after = write(tmp_path / "after.yaml", 8002)
    r = runner.invoke(group, ["--config", str(before), "port"])
    assert (r.exit_code, r.output) == (0, "8001\n")
    r = runner.invoke(group, ["port", "--config", str(after)])
    assert (r.exit_code, r.output) == (0, "8002\n")
    # Given twice, the one nearest the command wins.
    r = runner.invoke(group, ["--config", str(before), "port", "--config", str(after)])
    assert (r.exit_code, r.output) == (0, "8002\n")


def test_a_broken_config_exits_2_with_one_line_per_problem(tmp_path: Path) -> None:
    path = tmp_path / "mercury.yaml"
    path.write_text("container: {memory: lots}\nserver: {prot: 1}\n")
    r = CliRunner().invoke(group, ["port", "--config", str(path)])
    assert r.exit_code == CONFIG_ERROR_EXIT == 2
    assert sorted(r.output.strip().splitlines()) == [
        'config: container.memory: expected a size like 512m or 2g, got "lots"',
        "config: server.prot: unknown key (did you mean 'port'?)",
    ]


def test_a_command_failure_is_one_line_and_its_code() -> None:
    r = CliRunner().invoke(group, ["boom", "no [engine]"])
    assert (r.exit_code, r.output) == (3, "error: no [engine]\n")


@pytest.mark.parametrize(
    ("host", "port", "level", "expected"),
    [
        (None, None, None, {}),
        ("0.0.0.0", None, None, {"server": {"host": "0.0.0.0"}}),
        (None, 9000, "debug", {"server": {"port": 9000}, "log": {"level": "debug"}}),
        ("::", 0, None, {"server": {"host": "::", "port": 0}}),
    ],
)
def test_run_overrides_only_what_was_given(
    host: str | None, port: int | None, level: str | None, expected: dict[str, object]
) -> None:
    assert run_overrides(host, port, level) == expected


def test_sandbox_overrides_only_what_was_given() -> None:
    assert container_overrides(None, None, None) == {}
    assert container_overrides("30s", None, "none") == {
        "container": {"timeout": "30s", "network": "none"}
    }
