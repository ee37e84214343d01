"""container_spec() and the io-dir helpers as plain data: no Docker engine involved."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from mercury.config import SECRET_ENV, ContainerConfig
from mercury.sandbox.hardening import (
    API_MOUNT,
    IO_MOUNT,
    RESOURCES_MOUNT,
    SPACE_MOUNT,
    BindMount,
    check_id,
    container_spec,
    looks_secret,
)

MIB = 1024**2


@pytest.fixture
def data_dir(tmp_path: Path) -> Path:
    path = tmp_path / "data"
    (path / "spaces" / "s1").mkdir(parents=True)
    (path / "io" / "r1").mkdir(parents=True)
    return path.resolve()


@pytest.fixture
def outside(tmp_path: Path) -> Path:
    """Dirs beside the data dir: resources, the API socket dir, an extension's skills."""
    for name in ("resources", "api", "ext"):
        (tmp_path / name).mkdir()
    return tmp_path.resolve()


def spec(data_dir: Path, config: ContainerConfig | None = None, **kw: Any) -> Any:
    args: dict[str, Any] = {
        "instance": "prod",
        "run_id": "r1",
        "space_id": "s1",
        "image": "mercury-agent:latest",
        "data_dir": data_dir,
        "space_dir": data_dir / "spaces" / "s1",
        "io_dir": data_dir / "io" / "r1",
    }
    args.update(kw)
    return container_spec(config or ContainerConfig(), **args)


# --------------------------------------------------------------------------- the spec


def test_default_spec_is_fully_hardened(data_dir: Path, outside: Path) -> None:
    config = ContainerConfig(
        memory="512m", cpus=1.5, pids=128, tmpfs_size="32m", network="none", env={"TZ": "UTC"}
    )
    s = spec(
        data_dir,
        config,
        resources_dir=outside / "resources",
        api_socket_dir=outside / "api",
        readonly_mounts={outside / "ext": "/opt/mercury/extensions/demo"},
        env={"EXTRA": "1"},
    )
    assert s.name == "mercury-prod-r1"
    assert s.image == "mercury-agent:latest"
    # auto: an id no host account has (the runner passes the id resolved for its process)
    assert s.user == "2000000000:2000000000"
    assert s.labels == {
        "mercury.managed": "true",
        "mercury.instance": "prod",
        "mercury.space": "s1",
        "mercury.run": "r1",
    }
    assert s.environment == {
        "TZ": "UTC",
        "EXTRA": "1",
        "MERCURY_RUN_ID": "r1",
        "MERCURY_SPACE_ID": "s1",
        "MERCURY_IO_DIR": "/run/mercury-io",
        "HOME": "/tmp",
    }
    assert s.mounts == (
        BindMount(data_dir / "spaces" / "s1", SPACE_MOUNT, read_only=False),
        BindMount(data_dir / "io" / "r1", IO_MOUNT, read_only=False),
        BindMount(outside / "resources", RESOURCES_MOUNT, read_only=True),
        BindMount(outside / "api", API_MOUNT, read_only=True),
        BindMount(outside / "ext", "/opt/mercury/extensions/demo", read_only=True),
    )
    hc = s.host_config
    assert hc["binds"] == [
        f"{data_dir}/spaces/s1:/space:rw",
        f"{data_dir}/io/r1:/run/mercury-io:rw",
        f"{outside}/resources:/opt/mercury/resources:ro",
        f"{outside}/api:/run/mercury-api:ro",
        f"{outside}/ext:/opt/mercury/extensions/demo:ro",
    ]
    assert hc["mem_limit"] == 512 * MIB
    assert hc["memswap_limit"] == 512 * MIB  # swap included: no extra swap at all
    assert hc["nano_cpus"] == 1_500_000_000
    assert hc["pids_limit"] == 128
    assert hc["cap_drop"] == ["ALL"]
    assert hc["security_opt"] == ["no-new-privileges:true"]
    assert hc["read_only"] is True
    assert hc["tmpfs"] == {"/tmp": f"rw,nosuid,nodev,size={32 * MIB},mode=1777"}
    assert hc["init"] is True
    assert hc["network_mode"] == "none"
    assert hc["auto_remove"] is False
    assert hc["ulimits"] == [{"name": "nofile", "soft": 1024, "hard": 1024}]
    assert "runtime" not in hc
    assert "privileged" not in hc and "cap_add" not in hc


def test_spec_has_no_mount_of_shared_places(data_dir: Path) -> None:
    s = spec(data_dir)
    sources = [m.source for m in s.mounts]
    assert sources == [data_dir / "spaces" / "s1", data_dir / "io" / "r1"]
    joined = " ".join(s.host_config["binds"])
    assert "docker.sock" not in joined
    assert f"{data_dir}/spaces:" not in joined
    assert f"{data_dir}:" not in joined


def test_overrides_and_switches(data_dir: Path) -> None:
    config = ContainerConfig(
        runtime="runsc", no_new_privileges=False, read_only_rootfs=False, init=False
    )
    s = spec(data_dir, config, memory=64 * MIB, network="bridge")
    hc = s.host_config
    assert (hc["mem_limit"], hc["memswap_limit"]) == (64 * MIB, 64 * MIB)
    assert hc["network_mode"] == "bridge"
    assert hc["runtime"] == "runsc"
    assert "security_opt" not in hc
    assert hc["read_only"] is False
    assert hc["init"] is False


@pytest.mark.parametrize("network", ["host", "container:abc", "", "-x", "a b"])
def test_network_sharing_a_namespace_is_refused(data_dir: Path, network: str) -> None:
    with pytest.raises(ValueError, match="network"):
        spec(data_dir, network=network)


@pytest.mark.parametrize("memory", [0, 1024, True, -5])
def test_silly_memory_is_refused(data_dir: Path, memory: Any) -> None:
    with pytest.raises(ValueError, match="memory"):
        spec(data_dir, memory=memory)


def test_the_resolved_user_is_used_and_root_refused(data_dir: Path) -> None:
    assert spec(data_dir, user="1234:1235").user == "1234:1235"
    assert spec(data_dir, ContainerConfig(user="3000:3000")).user == "3000:3000"
    for bad in ("0:0", "0", "root", "1000:x"):
        with pytest.raises(ValueError, match="non-root numeric"):
            spec(data_dir, user=bad)


def test_root_user_is_refused_even_past_config_validation(data_dir: Path) -> None:
    config = ContainerConfig.model_construct(**{**ContainerConfig().model_dump(), "user": "0:0"})
    with pytest.raises(ValueError, match="root"):
        spec(data_dir, config)


def test_spec_is_pure_data_independent_of_the_host_environment(
    data_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("ANTHROPIC_API_KEY", "sk-ant-not-for-containers-123456")
    monkeypatch.setenv("PATH", "/host/only/bin")
    s = spec(data_dir)
    assert set(s.environment) == {"MERCURY_RUN_ID", "MERCURY_SPACE_ID", "MERCURY_IO_DIR", "HOME"}


# --------------------------------------------------------------------------- ids and paths


@pytest.mark.parametrize(
    "value",
    ["", ".", "..", "../x", "a/b", "/abs", ".hidden", "-opt", "a:b", "a b", "x" * 65, "é"],
)
def test_unsafe_ids_are_refused(value: str) -> None:
    with pytest.raises(ValueError, match="space id"):
        check_id("space id", value)


@pytest.mark.parametrize("value", ["s1", "C024BE91L", "web-general", "a.b_c-d", "x" * 64])
def test_safe_ids_pass(value: str) -> None:
    assert check_id("space id", value) == value


def test_unsafe_space_id_in_spec(data_dir: Path) -> None:
    with pytest.raises(ValueError, match="space id"):
        spec(data_dir, space_id="../s1", space_dir=data_dir / "spaces" / "s1")
    with pytest.raises(ValueError, match="run id"):
        spec(data_dir, run_id="r1/../../x")


@pytest.mark.parametrize(
    "space_dir",
    [
        "spaces",  # the spaces root: every space at once
        "",  # the data dir
        "spaces/s2",  # another space
        "spaces/s1/sub",  # not the space itself
        "io/r1",
        "spaces/../spaces/s2",
    ],
)
def test_space_dir_must_be_exactly_that_space(data_dir: Path, space_dir: str) -> None:
    with pytest.raises(ValueError, match="space dir"):
        spec(data_dir, space_dir=data_dir / space_dir)


def test_space_dir_symlink_out_is_refused(data_dir: Path, tmp_path: Path) -> None:
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    (data_dir / "spaces" / "evil").symlink_to(elsewhere)
    with pytest.raises(ValueError, match="space dir"):
        spec(data_dir, space_id="evil", space_dir=data_dir / "spaces" / "evil")


@pytest.mark.parametrize("io_dir", ["io", "", "spaces/s1", "io/r1/sub", "other/r1"])
def test_io_dir_must_be_a_child_of_the_io_root(data_dir: Path, io_dir: str) -> None:
    with pytest.raises(ValueError, match="io dir"):
        spec(data_dir, io_dir=data_dir / io_dir)


def test_relative_paths_are_refused(data_dir: Path) -> None:
    with pytest.raises(ValueError, match="absolute"):
        spec(data_dir, resources_dir=Path("resources"))


@pytest.mark.parametrize(
    ("what", "make"),
    [
        ("data dir", lambda d: d),
        ("data dir", lambda d: d.parent),
        ("data dir", lambda d: Path("/")),
        ("other runs", lambda d: d / "spaces"),
        ("other runs", lambda d: d / "spaces" / "s1"),
        ("other runs", lambda d: d / "io"),
        ("Docker", lambda d: Path("/var/run")),
        ("Docker", lambda d: Path("/run")),
        ("Docker", lambda d: Path("/var/run/docker.sock")),
        ("Docker", lambda d: Path("/run/docker.sock")),
    ],
)
@pytest.mark.parametrize("kind", ["resources_dir", "api_socket_dir", "readonly_mounts"])
def test_mount_sources_that_expose_the_host_are_refused(
    data_dir: Path, what: str, make: Any, kind: str
) -> None:
    source = make(data_dir)
    kw: dict[str, Any] = (
        {"readonly_mounts": {source: "/opt/ext"}} if kind == "readonly_mounts" else {kind: source}
    )
    with pytest.raises(ValueError, match=what):
        spec(data_dir, **kw)


def test_a_symlink_to_the_data_dir_is_seen_through(data_dir: Path, tmp_path: Path) -> None:
    link = tmp_path / "innocent"
    link.symlink_to(data_dir)
    with pytest.raises(ValueError, match="data dir"):
        spec(data_dir, resources_dir=link)


def test_a_subdir_of_the_data_dir_outside_spaces_and_io_may_hold_the_api_socket(
    data_dir: Path,
) -> None:
    (data_dir / "api" / "r1").mkdir(parents=True)
    s = spec(data_dir, api_socket_dir=data_dir / "api" / "r1")
    assert s.mounts[-1] == BindMount(data_dir / "api" / "r1", API_MOUNT, read_only=True)


@pytest.mark.parametrize(
    "target",
    [
        "relative/path",
        "/",
        "/space",
        "/space/skills",
        "/run",
        "/run/mercury-io",
        "/opt/mercury",
        "/opt/mercury/resources/x",
        "/tmp",
        "/opt/../space",
        "/opt/a:b",
    ],
)
def test_extension_mount_targets_may_not_shadow_mercurys_own(
    data_dir: Path, outside: Path, target: str
) -> None:
    with pytest.raises(ValueError, match="mount target"):
        spec(data_dir, readonly_mounts={outside / "ext": target})


def test_extension_mount_target_used_twice_is_refused(data_dir: Path, outside: Path) -> None:
    (outside / "ext2").mkdir()
    with pytest.raises(ValueError, match="twice"):
        spec(
            data_dir,
            readonly_mounts={outside / "ext": "/opt/ext", outside / "ext2": "/opt/ext/"},
        )


def test_paths_with_bind_separators_are_refused(data_dir: Path, tmp_path: Path) -> None:
    odd = tmp_path / "a:b"
    odd.mkdir()
    with pytest.raises(ValueError, match="':'"):
        spec(data_dir, resources_dir=odd)


# --------------------------------------------------------------------------- environment


@pytest.mark.parametrize("name", sorted(SECRET_ENV.values()))
def test_every_known_secret_is_refused(data_dir: Path, name: str) -> None:
    with pytest.raises(ValueError, match=name):
        spec(data_dir, env={name: "value"})


@pytest.mark.parametrize(
    "name",
    [
        "MERCURY_DATABASE_URL",
        "DATABASE_URL",
        "MERCURY_ANYTHING",
        "GITHUB_TOKEN",
        "AWS_SECRET_ACCESS_KEY",
        "DB_PASSWORD",
        "SENTRY_DSN",
        "MY_API_KEY",
        "apiKey",
        "GOOGLE_APPLICATION_CREDENTIALS",
        "SSH_PASSPHRASE",
    ],
)
def test_secret_looking_names_are_refused(data_dir: Path, name: str) -> None:
    assert looks_secret(name)
    with pytest.raises(ValueError, match=name):
        spec(data_dir, env={name: "value"})


def test_config_env_is_checked_too(data_dir: Path) -> None:
    # The config validator stops most of these; a token named innocently gets through it.
    config = ContainerConfig(env={"GITHUB_TOKEN": "x"})
    with pytest.raises(ValueError, match="GITHUB_TOKEN"):
        spec(data_dir, config)


@pytest.mark.parametrize("name", ["TZ", "LANG", "TOKEN_COUNT", "MONKEY", "KEYBOARD_LAYOUT"])
def test_innocent_names_pass(data_dir: Path, name: str) -> None:
    assert not looks_secret(name)
    assert spec(data_dir, env={name: "1"}).environment[name] == "1"


@pytest.mark.parametrize(
    "value",
    [
        "xoxb-1234567890-abcdefghij",
        "sk-ant-api03-abcdefghijklmnop",
        "postgresql://user:hunter2@db/mercury",
        "123456789:AAEhBP0av28Zh4gG0Rk-ABCDEFGHIJKLMNOPQ",
    ],
)
def test_credential_shaped_values_are_refused_without_echoing_them(
    data_dir: Path, value: str
) -> None:
    with pytest.raises(ValueError, match="GREETING") as info:
        spec(data_dir, env={"GREETING": value})
    assert value not in str(info.value)


@pytest.mark.parametrize("name", ["HOME", "MERCURY_RUN_ID", "MERCURY_IO_DIR"])
def test_host_set_variables_cannot_be_replaced(data_dir: Path, name: str) -> None:
    with pytest.raises(ValueError, match=name):
        spec(data_dir, env={name: "/elsewhere"})


@pytest.mark.parametrize("name", ["", "1ABC", "A-B", "A=B", "A B"])
def test_invalid_env_names_are_refused(data_dir: Path, name: str) -> None:
    with pytest.raises(ValueError, match="not valid"):
        spec(data_dir, env={name: "1"})


def test_nul_in_env_value_is_refused(data_dir: Path) -> None:
    with pytest.raises(ValueError, match="NUL"):
        spec(data_dir, env={"A": "x\x00y"})


def test_a_warm_container_is_a_cold_one_in_waiting_mode(tmp_path: Path) -> None:
    """Same mounts, limits and hardening; only the agent's arguments, a label, the SDKs to
    preload and a low CPU weight while it waits differ."""
    cold = spec(tmp_path)
    warm = spec(tmp_path, wait=True, preload=("anthropic", "openai"))
    assert cold.command is None and warm.command == ("--wait",)
    timed = spec(tmp_path, wait=True, wait_timeout=660.0)
    assert timed.command == ("--wait", "--wait-timeout", "660")
    assert warm.labels == {**cold.labels, "mercury.warm": "true"}
    assert warm.environment == {**cold.environment, "MERCURY_PRELOAD": "anthropic,openai"}
    assert warm.mounts == cold.mounts
    assert {k: v for k, v in warm.host_config.items() if k != "cpu_shares"} == cold.host_config
    assert warm.host_config["cpu_shares"] < 1024 and "cpu_shares" not in cold.host_config
