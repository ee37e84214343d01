"""`mercury service` against real sites: the unit checked by the real `systemd-analyze
verify`, the real CLI run as a process, and install/uninstall/status on a machine whose
PID 1 is not systemd (they must refuse with one line and change nothing).

Starting the unit under a real systemd (PID 1 in a container) is
tests/integration/test_service_systemd.py.
"""

from __future__ import annotations

import os
import pwd
import shutil
import stat
import subprocess
import sys
from dataclasses import replace
from pathlib import Path

import pytest
from click.testing import CliRunner

from mercury.app import SHUTDOWN_TIMEOUT_S
from mercury.cli import main
from mercury.core.service_unit import UnitSpec, render_unit, stop_timeout
from mercury.ops import service as service_ops
from mercury.ops.service import chown_tree, systemd_version
from tests.integration.cli_logging import logging_as_it_was
from tests.integration.mercury_site import mercury
from tests.integration.needs import require_root


def in_process(*args: str) -> subprocess.CompletedProcess[str]:
    """`mercury *args` in this process (so a test can move what it looks at), as `mercury`."""
    with logging_as_it_was():
        result = CliRunner().invoke(main, list(args), env={"COLUMNS": "200", "NO_COLOR": "1"})
    return subprocess.CompletedProcess(args, result.exit_code, result.stdout, result.stderr)


@pytest.fixture(scope="module")
def analyze() -> str:
    path = shutil.which("systemd-analyze")
    # scripts/test installs it (Debian's systemd package) where it is missing.
    assert path is not None, "systemd-analyze is not installed: apt-get install systemd"
    return path


def verify(analyze: str, folder: Path, name: str, text: str) -> None:
    """`systemd-analyze verify` the unit: exit 0 and not one line about it."""
    unit = folder / f"{name}.service"
    unit.write_text(text)
    done = subprocess.run(
        [analyze, "verify", str(unit)], capture_output=True, text=True, timeout=60, check=False
    )
    about_it = [
        line
        for line in (done.stdout + done.stderr).splitlines()
        if str(unit) in line or f"{name}.service" in line
    ]
    assert done.returncode == 0 and about_it == [], (done.returncode, about_it)


def init_site(folder: Path) -> Path:
    folder.parent.mkdir(parents=True, exist_ok=True)
    done = mercury("init", "--yes", str(folder), cwd=folder.parent)
    assert done.returncode == 0, done.stderr
    return folder / "mercury.yaml"


def snapshot(folder: Path) -> list[tuple[str, int, int, int]]:
    """Every path below `folder` with its owner, group and mode."""
    found = []
    for path in sorted([folder, *folder.rglob("*")]):
        st = path.lstat()
        found.append((str(path), st.st_uid, st.st_gid, st.st_mode))
    return found


def spec_for(site: Path, **kw: object) -> UnitSpec:
    base = UnitSpec(
        name="mercury",
        python=sys.executable,
        config_path=str(site / "mercury.yaml"),
        env_file=str(site / ".env"),
        data_dir=str(site / "data"),
        stop_timeout_s=stop_timeout(SHUTDOWN_TIMEOUT_S),
        user="mercury",
        docker_group="docker",
        systemd_version=systemd_version(),
    )
    return replace(base, **kw)  # type: ignore[arg-type]


def test_rendered_units_pass_systemd_analyze_verify(analyze: str, tmp_path: Path) -> None:
    site = tmp_path / "srv"
    cases = {
        "dedicated": spec_for(site),
        "root-images": spec_for(site, user=None, docker_group=None, mounts_space_images=True),
        "root-watch": spec_for(site, user=None, docker_group=None),
        "home": spec_for(site, data_dir="/home/alice/m/data", write_paths=("/var/lib/mdb",)),
        "old-systemd": spec_for(site, systemd_version=239),
    }
    for name, spec in cases.items():
        verify(analyze, tmp_path, f"m-{name}", render_unit(replace(spec, name=f"m-{name}")))


def test_verify_catches_what_this_systemd_does_not_know(analyze: str, tmp_path: Path) -> None:
    """The check can fail: directives of a newer systemd, or a missing interpreter."""
    version = systemd_version()
    assert version is not None
    if version < 254:
        newer = render_unit(spec_for(tmp_path, name="m-newer", systemd_version=256))
        with pytest.raises(AssertionError, match="RestartSteps"):
            verify(analyze, tmp_path, "m-newer", newer)
    missing = render_unit(spec_for(tmp_path, name="m-gone", python=str(tmp_path / "no-python")))
    with pytest.raises(AssertionError, match="no-python"):
        verify(analyze, tmp_path, "m-gone", missing)


def test_paths_with_spaces_and_percent_reach_systemd_intact(analyze: str, tmp_path: Path) -> None:
    """ExecStart must name the interpreter whole: verify fails if the quoting split it."""
    odd = tmp_path / "my 100% site"
    (odd / "py bin").mkdir(parents=True)
    python = odd / "py bin" / "python"
    python.symlink_to(sys.executable)
    spec = spec_for(odd, python=str(python), write_paths=(str(odd / "db dir"),))
    text = render_unit(spec)
    assert '"' + str(python).replace("%", "%%") + '"' in text
    verify(analyze, tmp_path, "m-odd", text)


def test_dry_run_prints_a_unit_systemd_accepts(analyze: str, tmp_path: Path) -> None:
    config = init_site(tmp_path / "site one")
    done = mercury("--config", str(config), "service", "install", "--dry-run", cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    text = done.stdout
    assert f'--config "{config}"' in text
    assert f'ReadWritePaths="{tmp_path / "site one" / "data"}"' in text
    assert "User=mercury" in text and "NoNewPrivileges=yes" in text
    verify(analyze, tmp_path, "mercury", text)

    root = mercury(
        "--config", str(config), "service", "install", "--as-root", "--dry-run",
        "--name", "mercury-b", cwd=tmp_path,
    )  # fmt: skip
    assert root.returncode == 0, root.stderr
    assert "User=root" in root.stdout
    verify(analyze, tmp_path, "mercury-b", root.stdout)


def test_dry_run_of_a_worker_and_a_gateway(analyze: str, tmp_path: Path) -> None:
    """A worker's unit runs `mercury worker` and passes verify; a gateway's is not put in the
    Docker socket's group; both refuse SQLite (one process only) with one line."""
    config = init_site(tmp_path / "site")
    sqlite = mercury(
        "--config", str(config), "service", "install", "--role", "worker", "--dry-run",
        cwd=tmp_path,
    )  # fmt: skip
    assert sqlite.returncode == 1 and sqlite.stdout == ""
    assert sqlite.stderr.strip().startswith("error: database_url: a worker shares")
    assert len(sqlite.stderr.strip().splitlines()) == 1

    pg = {"MERCURY_DATABASE_URL": "postgresql+asyncpg://mercury@127.0.0.1:1/mercury"}
    worker = mercury(
        "--config", str(config), "service", "install", "--role", "worker",
        "--name", "mercury-worker", "--dry-run", cwd=tmp_path, env=pg,
    )  # fmt: skip
    assert worker.returncode == 0, worker.stderr
    assert f"-m mercury.cli worker --config {config}\n" in worker.stdout
    assert "Description=Mercury chat-bot host, worker (" in worker.stdout
    assert "SupplementaryGroups=" in worker.stdout  # it starts containers
    verify(analyze, tmp_path, "mercury-worker", worker.stdout)

    gateway = mercury(
        "--config", str(config), "service", "install", "--role", "gateway",
        "--name", "mercury-gateway", "--dry-run", cwd=tmp_path, env=pg,
    )  # fmt: skip
    assert gateway.returncode == 0, gateway.stderr
    assert f"-m mercury.cli run --role gateway --config {config}\n" in gateway.stdout
    assert "SupplementaryGroups=" not in gateway.stdout
    assert "docker" not in gateway.stderr  # no note about a missing Docker socket either
    verify(analyze, tmp_path, "mercury-gateway", gateway.stdout)

    # As root with the default disk.space_limit (auto) a worker watches sizes instead of
    # mounting space images (processes sharing data_dir cannot share a mount): its unit
    # keeps the mount-namespace sandbox an image-mounting root service must give up.
    root = mercury(
        "--config", str(config), "service", "install", "--role", "worker", "--as-root",
        "--dry-run", cwd=tmp_path, env=pg,
    )  # fmt: skip
    assert root.returncode == 0, root.stderr
    assert "ProtectSystem=strict" in root.stdout, root.stdout
    # Told to mount images, it is refused before anything is written.
    with config.open("a") as f:
        f.write("\ndisk:\n  space_limit: image\n")
    images = mercury(
        "--config", str(config), "service", "install", "--role", "worker", "--as-root",
        "--dry-run", cwd=tmp_path, env=pg,
    )  # fmt: skip
    assert images.returncode == 1, images.stdout
    assert "disk.space_limit: image mounts each space on one machine" in images.stderr


def test_the_socket_whose_group_is_joined_is_the_configured_engine(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """container.docker_host wins over $DOCKER_HOST, as it does when Mercury runs."""
    mine = tmp_path / "engine.sock"
    mine.touch()
    monkeypatch.setenv("DOCKER_HOST", f"unix://{tmp_path / 'other.sock'}")
    assert service_ops.docker_socket(f"unix://{mine}") == mine
    assert service_ops.docker_socket(None) is None  # $DOCKER_HOST's socket does not exist
    assert service_ops.docker_socket("ssh://builder@10.0.0.5") is None  # no group to join


def test_dry_run_refuses_what_a_dedicated_user_cannot_run(tmp_path: Path) -> None:
    config = init_site(tmp_path / "site")
    with config.open("a") as f:
        f.write("\ndisk:\n  space_limit: image\n")
    done = mercury("--config", str(config), "service", "install", "--dry-run", cwd=tmp_path)
    assert done.returncode == 1
    assert done.stderr.strip().startswith("error: disk.space_limit is image")
    assert len(done.stderr.strip().splitlines()) == 1
    assert done.stdout == ""
    both = mercury(
        "--config", str(config), "service", "install", "--as-root", "--user", "bot",
        "--dry-run", cwd=tmp_path,
    )  # fmt: skip
    assert both.returncode == 1 and "exclude each other" in both.stderr


def test_install_without_systemd_says_so_and_changes_nothing(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # In process, with the marker sd_booted() looks at moved away: the refusal is tested on
    # any machine, also one whose PID 1 is systemd (where it would really install).
    monkeypatch.setattr(service_ops, "SYSTEMD_RUNNING_MARKER", tmp_path / "no-systemd")
    config = init_site(tmp_path / "site")
    env = config.parent / ".env"
    env_before = env.stat()
    site_before = snapshot(config.parent)
    units = tmp_path / "units"
    units.mkdir()
    user = "mercury-svc-test"
    done = in_process(
        "--config", str(config), "service", "install", "--user", user,
        "--unit-dir", str(units),
    )  # fmt: skip
    assert done.returncode == 1
    assert done.stderr.strip().splitlines() == [
        "error: systemd is not running here (PID 1 is not systemd), so no service can be "
        "installed; use --dry-run to see the unit"
    ]
    assert list(units.iterdir()) == []
    with pytest.raises(KeyError):
        pwd.getpwnam(user)
    after = env.stat()
    assert (after.st_uid, after.st_gid, stat.S_IMODE(after.st_mode)) == (
        env_before.st_uid,
        env_before.st_gid,
        0o600,
    )
    assert snapshot(config.parent) == site_before  # data_dir not made, not handed over

    for args in (["uninstall", "--unit-dir", str(units)], ["status"]):
        other = in_process("service", *args)
        assert other.returncode == 1
        assert other.stderr.startswith("error: systemd is not running here")
        assert len(other.stderr.strip().splitlines()) == 1


def test_handing_data_dir_over_never_follows_a_planted_symlink(tmp_path: Path) -> None:
    require_root("handing files to another uid needs root")
    outside = tmp_path / "host-secret"
    outside.write_text("root's")
    os.chown(outside, 0, 0)
    data = tmp_path / "data"
    space = data / "spaces" / "s1"
    (space / "outbox").mkdir(parents=True)
    (space / "outbox" / "a.txt").write_text("x")
    (space / "link-to-host").symlink_to(outside)
    (space / "dir-link").symlink_to(tmp_path)
    (data / "mercury.db").write_text("")
    n = chown_tree(data, 4321, 4321, skip=lambda rel: rel == "spaces/s1/outbox")
    assert outside.stat().st_uid == 0
    assert tmp_path.stat().st_uid == 0
    assert (space / "link-to-host").lstat().st_uid == 4321
    assert (data / "mercury.db").stat().st_uid == 4321
    assert space.stat().st_uid == 4321
    assert (space / "outbox").stat().st_uid == 0  # skipped, with what is under it
    assert (space / "outbox" / "a.txt").stat().st_uid == 0
    assert n == 5  # spaces, s1, the two links, mercury.db
