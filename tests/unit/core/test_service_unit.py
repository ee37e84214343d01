"""The systemd unit's decisions, one by one, over plain data (mercury/core/service_unit.py).

That systemd accepts the rendered text is tests/integration/test_cli_service.py's job (the
real `systemd-analyze verify`); here each choice is pinned: which directives a systemd
version gets, ProtectHome and PrivateTmp by path, root vs a dedicated user, quoting.
"""

from __future__ import annotations

from dataclasses import replace

import pytest

from mercury.app import RUN_GRACE_S, SHUTDOWN_TIMEOUT_S
from mercury.core.roles import Role
from mercury.core.service_unit import (
    UnitError,
    UnitSpec,
    check_name,
    check_path,
    check_user_name,
    dedicated_user_problem,
    exec_line,
    interpreter_paths,
    is_active,
    mounts_space_images,
    parse_show,
    parse_systemd_version,
    private_tmp,
    protect_home,
    quote_word,
    render_unit,
    restart_directives,
    role_command,
    service_type,
    status_lines,
    stop_timeout,
)

SPEC = UnitSpec(
    name="mercury",
    python="/opt/mercury/venv/bin/python",
    config_path="/srv/mercury/mercury.yaml",
    env_file="/srv/mercury/.env",
    data_dir="/srv/mercury/data",
    stop_timeout_s=stop_timeout(SHUTDOWN_TIMEOUT_S),
    user="mercury",
    docker_group="docker",
    systemd_version=252,
    read_paths=("/srv/mercury/extensions",),
)


def directives(text: str) -> list[tuple[str, str]]:
    """(key, value) of every directive line, in order."""
    return [
        (line.split("=", 1)[0], line.split("=", 1)[1])
        for line in text.splitlines()
        if line and not line.startswith(("#", "[")) and "=" in line
    ]


def values(text: str, key: str) -> list[str]:
    return [v for k, v in directives(text) if k == key]


def test_systemd_version_is_read_from_systemctl_output() -> None:
    assert parse_systemd_version("systemd 252 (252.39-1~deb12u2)\n+PAM +AUDIT") == 252
    assert parse_systemd_version("systemd 256 (256.7-arch1-1)") == 256
    assert parse_systemd_version("") is None
    assert parse_systemd_version("command not found") is None


@pytest.mark.parametrize(
    ("version", "steps"), [(254, True), (256, True), (253, False), (252, False), (None, False)]
)
def test_growing_back_off_only_where_systemd_knows_it(version: int | None, steps: bool) -> None:
    unit, service = restart_directives(version)
    keys = {k for k, _v, _why in unit + service}
    assert ("RestartSteps" in keys) is steps
    assert ("RestartMaxDelaySec" in keys) is steps
    text = render_unit(replace(SPEC, systemd_version=version))
    assert ("RestartSteps=" in text) is steps
    if steps:
        assert values(text, "StartLimitIntervalSec") == ["0"]  # never gives up
        assert "StartLimitBurst" not in text
    else:
        assert values(text, "RestartSec") == ["30s"]
        assert values(text, "StartLimitIntervalSec") == ["10min"]
        # 30 s apart, restarts reach at most 20 in 10 minutes: below the burst.
        assert int(values(text, "StartLimitBurst")[0]) > 600 / 30
    assert values(text, "Restart") == ["on-failure"]


def test_service_type_exec_since_240() -> None:
    assert service_type(239) == "simple"
    assert service_type(240) == "exec"
    assert service_type(None) == "exec"
    assert values(render_unit(replace(SPEC, systemd_version=239)), "Type") == ["simple"]


@pytest.mark.parametrize(
    ("paths", "expected"),
    [
        (["/opt/m/python", "/srv/m/data"], "yes"),
        (["/home/alice/venv/bin/python", "/srv/m/data"], "read-only"),
        (["/opt/m/python", "/root/mercury/data"], "read-only"),
        (["/opt/m/python", "/run/user/1000/m"], "read-only"),
        (["/home"], "read-only"),
        (["/homeless/m/data", "/rooted/x"], "yes"),  # only whole path components count
    ],
)
def test_protect_home_read_only_only_when_a_needed_path_is_in_a_home(
    paths: list[str], expected: str
) -> None:
    assert protect_home(paths) == expected


def test_protect_home_in_the_unit_keeps_data_dir_writable() -> None:
    spec = replace(SPEC, config_path="/home/alice/m/mercury.yaml", data_dir="/home/alice/m/data")
    text = render_unit(spec)
    assert values(text, "ProtectHome") == ["read-only"]
    assert values(text, "ReadWritePaths") == ["/home/alice/m/data"]
    assert values(render_unit(SPEC), "ProtectHome") == ["yes"]


def test_interpreter_paths_are_where_a_venv_python_really_lives() -> None:
    venv = "/opt/m/.venv/bin/python"
    pyenv = "/root/.pyenv/versions/3.11.7"
    assert interpreter_paths(venv, f"{pyenv}/bin/python3.11", pyenv) == (
        f"{pyenv}/bin/python3.11",
        pyenv,
    )
    assert interpreter_paths("/usr/bin/python3", "/usr/bin/python3", "/usr") == ("/usr",)
    assert interpreter_paths(venv, "/usr/bin/python3.11", "/usr/bin/python3.11") == (
        "/usr/bin/python3.11",
    )


def test_a_venv_outside_home_on_a_python_in_root_gets_home_read_only() -> None:
    """The bug a real systemd found: ProtectHome=yes hid pyenv's /root, and the venv's
    python (a symlink into it) failed with 203/EXEC. The resolved interpreter counts."""
    pyenv = "/root/.pyenv/versions/3.11.7"
    spec = replace(
        SPEC,
        python="/opt/m/.venv/bin/python",
        runtime_paths=interpreter_paths(
            "/opt/m/.venv/bin/python", f"{pyenv}/bin/python3.11", pyenv
        ),
    )
    assert values(render_unit(spec), "ProtectHome") == ["read-only"]
    assert values(render_unit(spec), "ReadWritePaths") == ["/srv/mercury/data"]
    system = replace(SPEC, runtime_paths=("/usr/bin/python3.11", "/usr"))
    assert values(render_unit(system), "ProtectHome") == ["yes"]
    in_tmp = replace(SPEC, runtime_paths=("/tmp/py/bin/python3",))
    assert values(render_unit(in_tmp), "PrivateTmp") == ["no"]
    with pytest.raises(UnitError, match="the Python installation"):
        render_unit(replace(SPEC, runtime_paths=("relative/python",)))


def test_private_tmp_only_when_nothing_needed_is_in_tmp() -> None:
    assert private_tmp(["/srv/m/data", "/opt/x"]) is True
    assert private_tmp(["/tmp/site/data"]) is False
    assert private_tmp(["/var/tmp/site/mercury.yaml"]) is False
    assert private_tmp(["/tmpfiles/x"]) is True
    assert values(render_unit(SPEC), "PrivateTmp") == ["yes"]
    assert values(render_unit(replace(SPEC, data_dir="/tmp/d")), "PrivateTmp") == ["no"]


def test_a_dedicated_user_has_docker_group_and_no_capabilities() -> None:
    text = render_unit(SPEC)
    assert values(text, "User") == ["mercury"]
    assert values(text, "Group") == ["mercury"]
    assert values(text, "SupplementaryGroups") == ["docker"]
    assert values(text, "CapabilityBoundingSet") == [""]
    assert "root-equivalent" in text  # the comment says plainly what Docker access is
    assert values(text, "ProtectSystem") == ["strict"]
    assert values(text, "ReadWritePaths") == ["/srv/mercury/data"]


def test_root_says_so_and_keeps_its_capabilities() -> None:
    text = render_unit(replace(SPEC, user=None, docker_group=None))
    assert values(text, "User") == ["root"]
    assert "Group" not in dict(directives(text))
    assert "SupplementaryGroups" not in dict(directives(text))
    assert "CapabilityBoundingSet" not in dict(directives(text))  # chown to container ids
    assert "--as-root" in text
    assert values(text, "ProtectSystem") == ["strict"]  # no space images: sandbox kept


def test_root_mounting_space_images_gets_no_mount_namespace() -> None:
    text = render_unit(replace(SPEC, user=None, docker_group=None, mounts_space_images=True))
    keys = dict(directives(text))
    assert keys["ProtectSystem"] == "no"
    namespacing = ["ReadWritePaths", "PrivateTmp", "ProtectHome", "PrivateDevices"]
    namespacing += ["ProtectKernelTunables", "ProtectControlGroups", "ProtectClock"]
    for namespaced in namespacing:
        assert namespaced not in keys, namespaced
    assert keys["NoNewPrivileges"] == "yes"  # the rest of the hardening stays
    assert "disk.space_limit: watch" in text


def test_when_space_images_may_be_mounted() -> None:
    assert mounts_space_images(True, 1024, "auto") is True
    assert mounts_space_images(True, 1024, "image") is True
    assert mounts_space_images(True, 1024, "watch") is False
    assert mounts_space_images(True, None, "auto") is False  # no size limit: no images
    assert mounts_space_images(False, 1024, "auto") is False  # only root can mount


def test_a_dedicated_user_refuses_what_only_root_can_do() -> None:
    assert dedicated_user_problem("auto", None, 1024, "auto") is None
    assert dedicated_user_problem("auto", 999, None, "image") is None  # no size: no images
    image = dedicated_user_problem("auto", 999, 1024, "image")
    assert image is not None and "disk.space_limit" in image and "--as-root" in image
    other = dedicated_user_problem("2000:2000", 999, 1024, "auto")
    assert other is not None and "container.user" in other
    assert dedicated_user_problem("2000:2000", None, 1024, "auto") is not None
    assert dedicated_user_problem("999:999", 999, 1024, "auto") is None


def test_stop_timeout_is_above_mercurys_own_shutdown() -> None:
    text = render_unit(SPEC)
    seconds = float(values(text, "TimeoutStopSec")[0].removesuffix("s"))
    assert seconds > SHUTDOWN_TIMEOUT_S > RUN_GRACE_S
    assert values(text, "KillSignal") == ["SIGTERM"]
    assert values(text, "KillMode") == ["mixed"]


def test_every_directive_says_why() -> None:
    specs = [SPEC, replace(SPEC, user=None, mounts_space_images=True)]
    specs += [replace(SPEC, role=role) for role in (Role.GATEWAY, Role.WORKER)]
    for spec in specs:
        lines = render_unit(spec).splitlines()
        for i, line in enumerate(lines):
            if line and not line.startswith(("#", "[")):
                assert lines[i - 1].startswith("# "), line
            # ExecStart holds the operator's paths whole, however long they are.
            assert len(line) <= 100 or line.startswith("ExecStart="), line


def test_the_unit_runs_this_python_with_this_config() -> None:
    text = render_unit(SPEC)
    assert values(text, "ExecStart") == [
        "/opt/mercury/venv/bin/python -m mercury.cli run --config /srv/mercury/mercury.yaml"
    ]
    assert values(text, "WorkingDirectory") == ["/srv/mercury"]
    assert values(text, "EnvironmentFile") == ["-/srv/mercury/.env"]
    assert values(text, "UMask") == ["0077"]
    assert values(text, "After") == ["network-online.target", "docker.service"]
    assert values(text, "WantedBy") == ["multi-user.target"]


@pytest.mark.parametrize(
    ("role", "command", "description"),
    [
        (Role.ALL, "run", "Mercury chat-bot host (/srv/mercury/mercury.yaml)"),
        (
            Role.GATEWAY,
            "run --role gateway",
            "Mercury chat-bot host, gateway (/srv/mercury/mercury.yaml)",
        ),
        (Role.WORKER, "worker", "Mercury chat-bot host, worker (/srv/mercury/mercury.yaml)"),
    ],
)
def test_each_role_starts_its_own_command(role: Role, command: str, description: str) -> None:
    text = render_unit(replace(SPEC, role=role))
    assert values(text, "ExecStart") == [
        f"/opt/mercury/venv/bin/python -m mercury.cli {command} --config /srv/mercury/mercury.yaml"
    ]
    assert values(text, "Description") == [description]
    assert render_unit(replace(SPEC, role=role.value)) == text  # a plain string works too


def test_role_commands_are_real_mercury_commands() -> None:
    """The unit's arguments parse as the CLI parses them (every option converted, which
    `--help` alone would skip), and each role's command runs that role."""
    import click

    from mercury.cli import main

    for role in Role:
        name, *rest = [*role_command(role), "--config", "/srv/m/mercury.yaml"]
        parent = click.Context(main, info_name="mercury")
        command = main.get_command(parent, name)
        assert command is not None, name
        with command.make_context(name, rest, parent=parent) as ctx:
            assert str(ctx.params["config_path"]) == "/srv/m/mercury.yaml"
            assert ctx.params.get("role", Role.WORKER.value) == role.value
    assert role_command("worker") == ["worker"]


def test_a_gateway_neither_waits_for_docker_nor_joins_its_group() -> None:
    """It starts no container: no docker.service ordering, no root-equivalent group, even
    when a socket group was passed in."""
    gateway = render_unit(replace(SPEC, role=Role.GATEWAY))
    assert values(gateway, "After") == ["network-online.target"]
    assert "SupplementaryGroups" not in dict(directives(gateway))
    assert "root-equivalent" not in gateway
    worker = render_unit(replace(SPEC, role=Role.WORKER))
    assert values(worker, "After") == ["network-online.target", "docker.service"]
    assert values(worker, "SupplementaryGroups") == ["docker"]
    for text in (gateway, worker):  # the rest of the unit is the same for every role
        assert values(text, "User") == ["mercury"]
        assert values(text, "ProtectSystem") == ["strict"]
        assert values(text, "Restart") == ["on-failure"]


def test_quoting_for_systemd() -> None:
    assert quote_word("/srv/m/data") == "/srv/m/data"
    assert quote_word("/srv/my site/data") == '"/srv/my site/data"'
    assert quote_word('/a"b') == '"/a\\"b"'
    assert quote_word("/a\\b") == '"/a\\\\b"'
    assert quote_word("/50%/x") == "/50%%/x"  # specifiers escaped
    assert exec_line(["/p/py", "--config", "/a $HOME/m.yaml"]) == (
        '/p/py --config "/a $$HOME/m.yaml"'
    )
    spec = replace(
        SPEC,
        python="/opt/my venv/bin/python",
        config_path="/srv/my 100% site/mercury.yaml",
        env_file="/srv/my 100% site/.env",
        data_dir="/srv/my 100% site/data",
    )
    text = render_unit(spec)
    assert values(text, "ExecStart") == [
        '"/opt/my venv/bin/python" -m mercury.cli run --config "/srv/my 100%% site/mercury.yaml"'
    ]
    assert values(text, "WorkingDirectory") == ["/srv/my 100%% site"]  # not unquoted there
    assert values(text, "ReadWritePaths") == ['"/srv/my 100%% site/data"']


def test_bad_names_and_paths_are_refused_with_one_line() -> None:
    assert check_name("mercury-2") == "mercury-2"
    for bad in ("", "a b", "tpl@", "x.service", "../etc", "-x"):
        with pytest.raises(UnitError, match="--name"):
            check_name(bad)
    assert check_user_name("mercury_bot") == "mercury_bot"
    for bad in ("root", "Mercury", "a b", "9x", ""):
        with pytest.raises(UnitError, match="--user"):
            check_user_name(bad)
    with pytest.raises(UnitError, match="not an absolute path"):
        check_path("data_dir", "data")
    with pytest.raises(UnitError, match="control character"):
        check_path("data_dir", "/srv/a\nb")
    with pytest.raises(UnitError, match="data_dir"):
        render_unit(replace(SPEC, data_dir="/srv/x\n[Service]"))


def test_status_in_plain_words() -> None:
    props = parse_show(
        "LoadState=loaded\nActiveState=active\nSubState=running\nMainPID=4242\n"
        "ExecMainStartTimestamp=Tue 2026-01-06 10:00:00 UTC\nNRestarts=2\nResult=success\n"
        "FragmentPath=/etc/systemd/system/mercury.service\n"
    )
    assert is_active(props)
    lines = status_lines("mercury.service", props)
    assert lines[0] == "mercury.service: active (running), main PID 4242"
    assert "  restarts after failures: 2" in lines
    assert "  started: Tue 2026-01-06 10:00:00 UTC" in lines

    failed = parse_show(
        "LoadState=loaded\nActiveState=failed\nSubState=failed\nMainPID=0\nResult=exit-code\n"
        "NRestarts=5\nExecMainStartTimestamp=\n"
    )
    assert not is_active(failed)
    text = "\n".join(status_lines("mercury.service", failed))
    assert "failed" in text and "journalctl -u mercury.service" in text
    assert "main PID" not in text
    assert "started: never" in text

    missing = parse_show("LoadState=not-found\nActiveState=inactive\n")
    assert not is_active(missing)
    assert status_lines("mercury.service", missing) == [
        "mercury.service is not installed (`mercury service install` installs it)."
    ]
