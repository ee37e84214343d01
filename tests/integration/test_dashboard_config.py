"""The Config page over real HTTP: a configuration loaded as `mercury run` loads it (a real
YAML file, MERCURY_* variables and secrets in the environment) served by a real App; the
page shows every value with its source, and not one secret."""

from __future__ import annotations

import re
from pathlib import Path

from mercury.config import load_config
from mercury.dashboard.pages.config_page import MASK
from tests.integration.dashboard_site import PASSWORD, Node, free_port, login, parse, serving

DB_PASSWORD = "pg-secret-in-a-url-4711"
ANTHROPIC = "sk-ant-configpagetest-0123456789abcdef"
EXT_TOKEN = "extension-token-abcdef-123456"
ENV_TOKEN = "ghp_containerenvtoken123456"


def config_table(root: Node) -> dict[str, tuple[str, str]]:
    """key -> (value, source cell text), from every section's table."""
    rows = {}
    for tr in root.find_all("tr"):
        if "data-key" in tr.attrs:
            _key, value, source = (td.text for td in tr.find_all("td"))
            rows[tr.attrs["data-key"]] = (value, source)
    return rows


async def test_config_page_shows_values_sources_and_no_secret(tmp_path: Path) -> None:
    path = tmp_path / "mercury.yaml"
    path.write_text(
        f"data_dir: {tmp_path / 'data'}\n"
        f"server:\n  port: {free_port()}\n"
        "container:\n  memory: 2g\n"
        f"  env:\n    GITHUB_TOKEN: {ENV_TOKEN}\n    LANG: C.UTF-8\n"
        "model:\n  chain:\n    - provider: anthropic\n      model: claude-x\n"
        f"      base_url: https://proxy:{DB_PASSWORD}@llm.example/v1\n"
        f"extensions:\n  settings:\n    notes:\n      api_key: {EXT_TOKEN}\n"
    )
    env = {
        "MERCURY_DASHBOARD_PASSWORD": PASSWORD,
        "ANTHROPIC_API_KEY": ANTHROPIC,
        "MERCURY_HISTORY__TURNS": "7",
    }
    loaded = load_config(path, env=env)
    async with serving(loaded) as site, site.client() as http:
        async with http.get("/config", allow_redirects=False) as resp:
            assert resp.status == 303  # a stranger is sent to log in
        await login(http)
        async with http.get("/config") as resp:
            assert resp.status == 200
            html = await resp.text()
    for secret in (PASSWORD, ANTHROPIC, DB_PASSWORD, EXT_TOKEN, ENV_TOKEN):
        assert secret not in html
    root = parse(html)
    rows = config_table(root)
    assert rows["server.port"][1] == "file"
    assert rows["container.memory"] == (str(2 * 1024**3), "file")
    assert rows["history.turns"] == ("7", "env MERCURY_HISTORY__TURNS")
    assert rows["log.level"] == ("info", "default")
    assert rows["model.chain[0].model"] == ("claude-x", "file")
    assert "llm.example" in rows["model.chain[0].base_url"][0]
    assert rows["container.env.GITHUB_TOKEN"][0] == MASK
    assert rows["container.env.LANG"][0] == "C.UTF-8"
    assert rows["extensions.settings.notes.api_key"][0] == MASK
    assert str(path) in root.text
    summary = re.search(r"(\d+) values? from the file, (\d+) from the environment", root.text)
    assert summary is not None and int(summary[1]) >= 6 and summary[2] == "1"
    secrets = {
        tr.attrs["data-secret"]: tr.find_all("td")[1].text
        for tr in root.find_all("tr")
        if "data-secret" in tr.attrs
    }
    assert secrets["MERCURY_DASHBOARD_PASSWORD"] == "set"
    assert secrets["ANTHROPIC_API_KEY"] == "set"
    assert secrets["OPENAI_API_KEY"] == "not set"
    # Every section has a table and a link to it.
    toc = root.find("ul", class_="config-toc")
    links = [a.attrs["href"] for a in toc.find_all("a")]
    for section in ("#cfg-server", "#cfg-container", "#cfg-model", "#cfg-secrets"):
        assert section in links
        assert root.maybe("section", id=section[1:]) is not None
