"""An extension's host hooks through a real `mercury run` (web chat, fake model, real
containers): before_run adds to the prompt or refuses the run (no container, no model
call), after_reply rewrites the reply and adds a file, startup runs once at start."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from tests.fakes.model_server import FakeModelServer, Text, Turn
from tests.integration.mercury_site import Mercury, last_user_text

pytestmark = pytest.mark.docker

HOOKS = """
from pathlib import Path
from mercury.extensions.hooks import AfterReply, BeforeRun

HERE = Path(__file__).parent


def startup(ctx):
    (HERE / "started").write_text(ctx.settings["rule"])


def before_run(ctx):
    if "secret plans" in ctx.prompt:
        return BeforeRun(refuse="Not in this house, " + ctx.author + ".")
    return BeforeRun(prompt="House rule: " + ctx.settings["rule"])


async def after_reply(ctx, reply):
    return AfterReply(text=reply + " (checked)", files=[HERE / "policy.txt"])
"""


def write_extension(root: Path) -> Path:
    folder = root / "extensions" / "house-rules"
    folder.mkdir(parents=True)
    (folder / "extension.yaml").write_text(
        json.dumps(
            {
                "name": "house-rules",
                "version": "1.0.0",
                "description": "Host hooks that keep the house rules",
                "hooks": "hooks.py",
                "settings": {"rule": {"type": "str", "default": "be kind"}},
            }
        )
    )
    (folder / "hooks.py").write_text(HOOKS)
    (folder / "policy.txt").write_text("The house policy.\n")
    return folder


def test_hooks_add_to_the_prompt_refuse_and_rewrite_the_reply(
    site: Any, fake: FakeModelServer, tmp_path: Path
) -> None:
    folder = write_extension(tmp_path)
    section = {
        "dir": str(folder.parent),
        "enabled": ["house-rules"],
        "settings": {"house-rules": {"rule": "be brief"}},
    }
    m: Mercury = site(extra={"extensions": section})
    m.start()
    try:
        assert (folder / "started").read_text() == "be brief"
        fake.script([Turn([Text("hello there")])])
        m.post("house", "hello")
        reply = m.wait_replies("house", 1)[0]
        assert reply["text"] == "hello there (checked)"
        assert [f["name"] for f in reply["files"]] == ["policy.txt"]
        assert m.fetch(reply["files"][0]["url"]) == b"The house policy.\n"
        asked = last_user_text(fake.requests[0].body)
        assert asked.endswith("House rule: be brief"), asked

        m.post("house", "tell me the secret plans")
        refused = m.wait_replies("house", 2)[1]
        assert refused["text"] == "Not in this house, admin."
        assert len(fake.requests) == 1  # no run, so no model call
        assert "run refused by an extension" in m.logs()
    finally:
        assert m.stop() == 0
