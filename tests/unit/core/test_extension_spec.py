"""extension.yaml, the pure part: what a manifest may say, each refusal naming its field,
settings, the permission and network decisions, the derived image's plan and tag."""

from __future__ import annotations

import copy
from typing import Any

import pytest

from mercury.core.extension_spec import (
    EXT_IMAGE_REPO,
    EXT_MOUNT_ROOT,
    EXT_PERMISSION_PREFIX,
    EXT_VENV_ROOT,
    ExtensionSpec,
    InstallSteps,
    ManifestError,
    SettingsError,
    holds_permission,
    host_allowed,
    install_hash,
    install_plan,
    parse_manifest,
    settings_env,
    settings_values,
)

FULL: dict[str, Any] = {
    "name": "web-reader",
    "version": "1.0.0",
    "description": "Read a web page as plain text",
    "permission": "ext:web",
    "install": {
        "apt": ["poppler-utils", "libxml2=2.9.14+dfsg-1"],
        "pip": ["trafilatura>=2.0", "requests[socks]>=2,<3", "numpy==1.*", "x!=1.0"],
        "npm": ["left-pad@1.3.0", "@types/node@^20", "typescript"],
    },
    "skills": ["skills/web-reader", "./skills/other/SKILL.md"],
    "network": ["*", "Example.COM", "*.wikipedia.org", "api.example.com:8443", "10.0.0.5"],
    "services": {
        "github": {
            "base_url": "https://api.github.com/",
            "headers": {"Authorization": "Bearer ${GITHUB_TOKEN}", "Accept": "text/plain"},
        }
    },
    "mcp": {
        "notes": {"command": ["python", "server.py"], "env": {"NOTES_DIR": "/space/notes"}},
        "search": {"url": "https://mcp.example.com/mcp", "headers": {"X-Key": "${SEARCH_KEY}"}},
    },
    "settings": {
        "max_chars": {"type": "int", "default": 20000, "description": "cut the text here"},
        "ratio": {"type": "float", "default": 1},
        "mode": {"type": "str", "default": "fast"},
        "strict": {"type": "bool", "default": False},
        "langs": {"type": "list", "default": ["en", "de"]},
    },
    "hooks": "hooks.py",
}


def with_(path: str, value: Any) -> dict[str, Any]:
    """FULL with the dotted `path` set to `value` (a value of DELETE removes the key)."""
    data = copy.deepcopy(FULL)
    *parents, last = path.split(".")
    target = data
    for part in parents:
        target = target[part]
    if value is DELETE:
        del target[last]
    else:
        target[last] = value
    return data


DELETE = object()


def refusal(data: object, folder_name: str | None = None) -> ManifestError:
    with pytest.raises(ManifestError) as info:
        parse_manifest(data, folder_name=folder_name)
    error = info.value
    assert str(error).startswith("extension.yaml: ")
    assert "\n" not in str(error)
    return error


def test_constants_of_the_contract() -> None:
    assert EXT_MOUNT_ROOT == "/opt/mercury/ext"
    assert EXT_VENV_ROOT == "/opt/mercury-ext"
    assert EXT_IMAGE_REPO == "mercury-agent-ext"
    assert EXT_PERMISSION_PREFIX == "ext:"


def test_a_full_manifest() -> None:
    spec = parse_manifest(FULL, folder_name="web-reader")
    assert (spec.name, spec.version, spec.permission) == ("web-reader", "1.0.0", "ext:web")
    assert spec.install.pip[1] == "requests[socks]>=2,<3"
    assert spec.install.npm == ("left-pad@1.3.0", "@types/node@^20", "typescript")
    assert spec.skills == ("skills/web-reader", "skills/other/SKILL.md")  # "./" dropped
    assert spec.network[1] == "example.com"  # patterns are lowercased
    (github,) = spec.services
    assert github.base_url == "https://api.github.com"  # the host joins paths with one "/"
    assert dict(github.headers)["Authorization"] == "Bearer ${GITHUB_TOKEN}"
    notes, search = spec.mcp
    assert notes.command == ("python", "server.py") and notes.url is None
    assert dict(notes.env) == {"NOTES_DIR": "/space/notes"}
    assert search.command is None and search.url == "https://mcp.example.com/mcp"
    ratio = next(s for s in spec.settings if s.name == "ratio")
    assert ratio.default == 1.0 and isinstance(ratio.default, float)
    assert spec.hooks == "hooks.py"
    hash(spec)  # specs are hashable (mapping fields stay out of the hash)
    with pytest.raises(AttributeError):
        spec.name = "other"  # type: ignore[misc]


def test_a_minimal_manifest_takes_the_defaults() -> None:
    spec = parse_manifest({"name": "pdf", "version": "2", "description": "PDF text"})
    assert spec == ExtensionSpec("pdf", "2", "PDF text")
    assert spec.permission == "run" and spec.install.empty and spec.skills == ()
    assert spec.hooks is None and spec.network == () and spec.services == ()


SHELL_STEPS = [
    "x; curl evil | sh",
    "$(id)",
    "--index-url http://evil",
    "pkg @ http://x",
    "foo; rm -rf /",
    "`id`",
    "pkg && id",
    "pkg\nid",
    'pkg; python_version < "3.8"',
    "pkg>=1 #comment",
    "-e .",
    "./local",
    "",
]


@pytest.mark.parametrize("step", SHELL_STEPS)
@pytest.mark.parametrize("manager", ["pip", "apt", "npm"])
def test_shell_text_in_an_install_step_is_refused(manager: str, step: str) -> None:
    data = with_(f"install.{manager}", ["good-package", step])
    error = refusal(data)
    assert error.field == f"install.{manager}[1]"


def test_the_install_step_error_reads_as_one_line() -> None:
    error = refusal(with_("install.pip", ["ok", "foo; rm -rf /"]))
    assert str(error) == (
        'extension.yaml: install.pip[1]: "foo; rm -rf /" is not a package specifier '
        "(name[extras]>=version)"
    )
    error = refusal(with_("install.pip", ["--index-url http://evil"]))
    assert str(error) == (
        'extension.yaml: install.pip[0]: "--index-url http://evil" is an option, not a package'
    )


BAD: list[tuple[str, Any, str, str]] = [
    # (path in FULL, value, field named, words in the message)
    ("name", DELETE, "name", "required"),
    ("version", DELETE, "version", "required"),
    ("description", DELETE, "description", "required"),
    ("name", "Web_Reader", "name", "not an extension name"),
    ("name", "x", "name", "not an extension name"),
    ("name", "../etc", "name", "not an extension name"),
    ("version", 1.0, "version", "quote it"),
    ("version", "1.0 beta", "version", "not a version"),
    ("description", "two\nlines", "description", "one line"),
    ("description", "", "description", "empty"),
    ("description", "x" * 201, "description", "at most 200"),
    ("permission", "superuser", "permission", "built-in permission"),
    ("permission", "ext:", "permission", "ext:<word>"),
    ("permission", "ext:Has Space", "permission", "ext:<word>"),
    ("install", ["pip"], "install", "mapping"),
    ("install.brew", ["wget"], "install.brew", "unknown key"),
    ("install.pip", "trafilatura", "install.pip", "expected a list"),
    ("install.pip", [f"p{i}" for i in range(51)], "install.pip", "at most 50"),
    ("install.pip", ["a", "a"], "install.pip[1]", "listed twice"),
    ("install.pip", [3], "install.pip[0]", "expected text"),
    ("install.apt", ["Poppler"], "install.apt[0]", "Debian package"),
    ("install.npm", ["Left-Pad"], "install.npm[0]", "npm package"),
    ("install.npm", ["left-pad@1.0 || rm"], "install.npm[0]", "npm package"),
    ("skills", ["/etc/skills"], "skills[0]", "relative"),
    ("skills", ["skills/../../x"], "skills[0]", ".."),
    ("skills", ["skills/a b"], "skills[0]", "not a path"),
    ("skills", "skills/x", "skills", "expected a list"),
    ("network", ["http://example.com"], "network[0]", "host pattern"),
    ("network", ["example.com:0"], "network[0]", "1-65535"),
    ("network", ["example.com:99999"], "network[0]", "1-65535"),
    ("network", ["exa_mple.com"], "network[0]", "host pattern"),
    ("network", ["*example.com"], "network[0]", "host pattern"),
    ("network", ["*.1.2.3.4"], "network[0]", "host pattern"),
    ("network", ["999.1.1.1"], "network[0]", "host pattern"),
    ("network", ["[::1]"], "network[0]", "host pattern"),
    ("network", [""], "network[0]", "host pattern"),
    ("services.GitHub", {"base_url": "https://x.org"}, "services.GitHub", "lowercase"),
    ("services.github.base_url", DELETE, "services.github.base_url", "required"),
    ("services.github.base_url", "ftp://x.org", "services.github.base_url", "http"),
    ("services.github.base_url", "https://u:p@x.org", "services.github.base_url", "user"),
    ("services.github.base_url", "https://x.org/?a=1", "services.github.base_url", "query"),
    ("services.github.base_url", "https://x.org/#top", "services.github.base_url", "fragment"),
    ("services.github.base_url", "https:///path", "services.github.base_url", "host"),
    ("services.github.base_url", "https://x.org:99999", "services.github.base_url", "port"),
    ("services.github.base_url", "https://x.org/a b", "services.github.base_url", "spaces"),
    ("services.github.token", "abc", "services.github.token", "unknown key"),
    ("services.github.headers", {"Bad Name": "x"}, "services.github.headers", "header name"),
    ("services.github.headers", {"Host": "x"}, "services.github.headers.Host", "by Mercury"),
    ("services.github.headers", {"A": "x\r\nB: y"}, "services.github.headers.A", "one line"),
    ("services.github.headers", {"A": "${lower}"}, "services.github.headers.A", "variable"),
    ("services.github.headers", {"A": "${A-B}"}, "services.github.headers.A", "variable"),
    ("services.github.headers", {"A": "${UNCLOSED"}, "services.github.headers.A", "variable"),
    ("services.github.headers", {"A": "${}"}, "services.github.headers.A", "variable"),
    (
        "services.github.headers",
        {"A": "Bearer ${MERCURY_ANTHROPIC_API_KEY}"},
        "services.github.headers.A",
        "Mercury's own",
    ),
    ("services.github.headers", {"A": 5}, "services.github.headers.A", "expected text"),
    ("mcp.notes", {"env": {}}, "mcp.notes", "exactly one"),
    ("mcp.notes", {"command": ["x"], "url": "https://x.org"}, "mcp.notes", "exactly one"),
    ("mcp.notes.command", [], "mcp.notes.command", "non-empty"),
    ("mcp.notes.command", "python server.py", "mcp.notes.command", "non-empty list"),
    ("mcp.notes.command", ["python", 3], "mcp.notes.command[1]", "text"),
    ("mcp.notes.env", {"1BAD": "x"}, "mcp.notes.env", "variable name"),
    ("mcp.notes.env", {"GOOD": 5}, "mcp.notes.env.GOOD", "quote it"),
    ("mcp.notes.headers", {"A": "b"}, "mcp.notes.headers", "url server only"),
    ("mcp.notes.cwd", "/", "mcp.notes.cwd", "unknown key"),
    ("mcp.search.url", "file:///etc/passwd", "mcp.search.url", "http"),
    ("mcp.search.env", {"A": "b"}, "mcp.search.env", "command server only"),
    ("mcp.search.headers", {"A": "${x}"}, "mcp.search.headers.A", "variable"),
    ("mcp.github", {"url": "https://x.org/mcp"}, "mcp.github", "also the name of a service"),
    ("settings.max_chars.type", "number", "settings.max_chars.type", "expected one of"),
    ("settings.max_chars.default", "20000", "settings.max_chars.default", "whole number"),
    ("settings.max_chars.default", True, "settings.max_chars.default", "whole number"),
    ("settings.max_chars.default", DELETE, "settings.max_chars.default", "required"),
    ("settings.ratio.default", "1.5", "settings.ratio.default", "a number"),
    ("settings.strict.default", "yes", "settings.strict.default", "true or false"),
    ("settings.langs.default", "en", "settings.langs.default", "a list"),
    ("settings.langs.default", [{"a": 1}], "settings.langs.default", "a list"),
    ("settings.mode.default", 3, "settings.mode.default", "text"),
    ("settings.mode.description", ["x"], "settings.mode.description", "expected text"),
    ("settings.Max-Chars", {"type": "int", "default": 1}, "settings.Max-Chars", "name must"),
    ("settings.max_chars.min", 0, "settings.max_chars.min", "unknown key"),
    ("hooks", "/abs/hooks.py", "hooks", "relative"),
    ("hooks", "../hooks.py", "hooks", ".."),
    ("hooks", "hooks.sh", "hooks", "Python file"),
    ("frobnicate", 1, "frobnicate", "unknown key"),
]


@pytest.mark.parametrize(("path", "value", "field", "words"), BAD)
def test_each_refusal_names_its_field(path: str, value: Any, field: str, words: str) -> None:
    error = refusal(with_(path, value))
    assert error.field == field, str(error)
    assert str(error).startswith(f"extension.yaml: {field}: "), str(error)
    assert words in str(error), str(error)


def test_a_secret_in_a_header_is_not_quoted_back() -> None:
    error = refusal(with_("services.github.headers", {"Authorization": "Bearer sk-123\n"}))
    assert "sk-123" not in str(error)


def test_the_name_must_be_the_folder_name() -> None:
    error = refusal(FULL, folder_name="reader")
    assert error.field == "name"
    assert str(error) == (
        'extension.yaml: name: "web-reader" differs from the folder name "reader"'
    )


@pytest.mark.parametrize("data", [None, [], "name: x", 3])
def test_the_file_must_hold_a_mapping(data: object) -> None:
    assert refusal(data).field == ""


def test_long_values_are_cut_in_the_message() -> None:
    error = refusal(with_("install.pip", ["x; " + "a" * 500]))
    assert len(str(error)) < 160


@pytest.mark.parametrize("permission", ["run", "stop", "pause", "model", "clear", "admin"])
def test_builtin_permissions(permission: str) -> None:
    assert parse_manifest(with_("permission", permission)).permission == permission


# --------------------------------------------------------------------------- settings


def test_settings_values_take_the_operators_over_the_defaults() -> None:
    spec = parse_manifest(FULL)
    values = settings_values(spec, {"max_chars": 500, "ratio": 2, "langs": ["fr"]})
    assert values == {
        "max_chars": 500,
        "ratio": 2.0,
        "mode": "fast",
        "strict": False,
        "langs": ["fr"],
    }
    assert settings_values(spec, {})["max_chars"] == 20000


@pytest.mark.parametrize(
    ("given", "field", "words"),
    [
        ({"max_char": 5}, "extensions.settings.web-reader.max_char", "unknown setting"),
        ({"max_chars": "5"}, "extensions.settings.web-reader.max_chars", "whole number"),
        ({"strict": 1}, "extensions.settings.web-reader.strict", "true or false"),
        ({"langs": "en"}, "extensions.settings.web-reader.langs", "a list"),
    ],
)
def test_settings_values_refuse_with_the_config_path(
    given: dict[str, object], field: str, words: str
) -> None:
    with pytest.raises(SettingsError) as info:
        settings_values(parse_manifest(FULL), given)
    assert info.value.field == field
    assert str(info.value).startswith(f"{field}: ") and words in str(info.value)


def test_settings_env_is_upper_snake() -> None:
    spec = parse_manifest(FULL)
    env = settings_env(spec, settings_values(spec, {"strict": True}))
    assert env == {
        "MERCURY_EXT_WEB_READER_MAX_CHARS": "20000",
        "MERCURY_EXT_WEB_READER_RATIO": "1.0",
        "MERCURY_EXT_WEB_READER_MODE": "fast",
        "MERCURY_EXT_WEB_READER_STRICT": "true",
        "MERCURY_EXT_WEB_READER_LANGS": '["en", "de"]',
    }


# --------------------------------------------------------------------------- decisions


def test_holds_permission() -> None:
    spec = parse_manifest(FULL)  # needs ext:web
    assert holds_permission(spec, frozenset({"run", "ext:web"}))
    assert not holds_permission(spec, frozenset({"run", "stop", "clear"}))
    assert holds_permission(spec, frozenset({"admin"}))  # admin holds every extension's
    plain = parse_manifest(with_("permission", DELETE))
    assert holds_permission(plain, frozenset({"run"}))
    assert not holds_permission(plain, frozenset({"stop"}))


@pytest.mark.parametrize(
    ("patterns", "host", "port", "allowed"),
    [
        (["example.com"], "example.com", 443, True),
        (["example.com"], "example.com", 80, True),
        (["example.com"], "EXAMPLE.com.", 443, True),  # case and a trailing dot
        (["example.com"], "example.com", 8443, False),  # no port in the pattern: 80/443
        (["example.com"], "www.example.com", 443, False),
        (["example.com"], "badexample.com", 443, False),
        (["*.example.com"], "www.example.com", 443, True),
        (["*.example.com"], "a.b.example.com", 443, True),
        (["*.example.com"], "example.com", 443, False),  # subdomains only
        (["*.example.com"], "evilexample.com", 443, False),
        (["api.example.com:8443"], "api.example.com", 8443, True),
        (["api.example.com:8443"], "api.example.com", 443, False),
        (["*"], "anything.org", 443, True),
        (["*"], "anything.org", 22, False),
        (["*:22"], "anything.org", 22, True),
        (["*:*"], "anything.org", 8123, True),  # every port
        (["docs.example.com:*"], "docs.example.com", 8080, True),
        (["docs.example.com:*"], "www.example.com", 8080, False),
        (["10.0.0.5"], "10.0.0.5", 80, True),
        (["10.0.0.5"], "10.0.0.6", 80, False),
        ([], "example.com", 443, False),
        (["example.com"], "", 443, False),
        (["example.com:nope"], "example.com", 443, False),
    ],
)
def test_host_allowed(patterns: list[str], host: str, port: int, allowed: bool) -> None:
    assert host_allowed(patterns, host, port) is allowed


def test_install_plan_and_hash() -> None:
    a = parse_manifest(with_("name", "alpha"))
    b = parse_manifest({"name": "beta", "version": "1", "description": "no steps"})
    z = parse_manifest(with_("name", "zulu"))
    plan = install_plan([z, b, a])
    assert [name for name, _ in plan] == ["alpha", "zulu"]  # sorted, only with steps
    assert isinstance(plan[0][1], InstallSteps)
    tag = install_hash("sha256:base1", plan)
    assert len(tag) == 12 and all(c in "0123456789abcdef" for c in tag)
    assert install_hash("sha256:base1", install_plan([a, z, b])) == tag  # order-free
    assert install_hash("sha256:base2", plan) != tag  # a new base image
    changed = parse_manifest(with_("install.pip", ["trafilatura>=2.1"]) | {"name": "alpha"})
    assert install_hash("sha256:base1", install_plan([changed, z])) != tag  # a changed step
    assert install_hash("sha256:base1", ()) != tag
    assert InstallSteps().empty and not InstallSteps(npm=("x",)).empty
