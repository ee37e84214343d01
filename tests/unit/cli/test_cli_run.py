"""`mercury run`'s warning about a login exposed without TLS (public_bind_problem)."""

from __future__ import annotations

import pytest

from mercury.cli.run import public_bind_problem
from mercury.config import Config


@pytest.mark.parametrize(
    ("host", "public_url", "warned"),
    [
        ("127.0.0.1", None, False),  # the default: only this machine
        ("127.0.0.53", None, False),
        ("::1", None, False),
        ("[::1]", None, False),
        ("localhost", None, False),
        ("127.0.0.1", "http://bot.example.org", False),  # a local proxy's business
        ("0.0.0.0", None, True),
        ("::", None, True),
        ("", None, True),
        ("192.168.1.10", None, True),
        ("bot.example.org", None, True),
        ("0.0.0.0", "http://bot.example.org", True),
        ("0.0.0.0", "https://bot.example.org", False),
        ("0.0.0.0", "HTTPS://bot.example.org/", False),
        ("10.0.0.5", "https://bot.example.org", False),
    ],
)
def test_public_bind_problem(host: str, public_url: str | None, warned: bool) -> None:
    config = Config.model_validate({"server": {"host": host, "public_url": public_url}})
    problem = public_bind_problem(config)
    assert (problem is not None) is warned
    if problem:
        assert "server.host" in problem and "server.public_url" in problem
        assert "https" in problem and "127.0.0.1" in problem
