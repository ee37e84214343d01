"""`mercury-ctl recall` against a stand-in host API: a real HTTP server on 127.0.0.1 that
records each request and answers what the real endpoint answers (tests/integration/
test_recall.py runs the command against the real host API).

What is checked here: the words reach the server exactly as typed, whatever characters
they hold (they are a query parameter, never part of the path); the answer becomes one
"date · author · snippet" line per match, "no match" when there is none; a refusal's
message reaches stderr with exit status 1. And the recall skill is among the built-in ones.
"""

from __future__ import annotations

import io
import json
import threading
from collections.abc import Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlsplit

import pytest
from mercury_agent import ctl
from mercury_agent.prompt import discover_skills

HITS = [
    {
        "message_id": 7,
        "created_at": "2026-05-04T09:01:00+00:00",
        "author": "Ana",
        "role": "user",
        "snippet": "The «offsite» is in «Lisbon» in June",
        "rank": 0.42,
    },
    {
        "message_id": 9,
        "created_at": "2026-05-05T17:30:12.5+00:00",
        "author": None,
        "role": "assistant",
        "snippet": "Booked: «Lisbon», 3-5 June",
        "rank": 0.2,
    },
]


@dataclass
class StandIn:
    url: str
    answer: tuple[int, Any] = (200, {"query": "", "hits": []})
    seen: list[tuple[str, dict[str, list[str]], str | None]] = field(default_factory=list)


@pytest.fixture
def host() -> Iterator[StandIn]:
    state = StandIn(url="")

    class Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            parts = urlsplit(self.path)
            auth = self.headers.get("Authorization")
            state.seen.append((parts.path, parse_qs(parts.query), auth))
            status, body = state.answer
            raw = json.dumps(body).encode()
            self.send_response(status)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(raw)))
            self.end_headers()
            self.wfile.write(raw)

        def log_message(self, *_: Any) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    state.url = f"http://127.0.0.1:{server.server_address[1]}"
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield state
    finally:
        server.shutdown()
        server.server_close()


def run(host: StandIn, *argv: str) -> tuple[int, str, str]:
    out, err = io.StringIO(), io.StringIO()
    env = {"MERCURY_API_URL": host.url, "MERCURY_API_TOKEN": "tok-1", "MERCURY_SPACE_ID": "sp/1"}
    code = ctl.main(list(argv), env=env, stdout=out, stderr=err)
    return code, out.getvalue(), err.getvalue()


def test_recall_prints_one_line_per_match(host: StandIn) -> None:
    host.answer = (200, {"query": "lisbon offsite", "hits": HITS})
    code, out, err = run(host, "recall", "lisbon offsite")
    assert (code, err) == (0, "")
    assert out.splitlines() == [
        "2026-05-04 09:01 UTC · Ana · The «offsite» is in «Lisbon» in June",
        "2026-05-05 17:30 UTC · assistant · Booked: «Lisbon», 3-5 June",
    ]
    path, query, auth = host.seen[-1]
    assert (path, query, auth) == (
        "/spaces/sp%2F1/recall",
        {"q": ["lisbon offsite"], "limit": ["10"]},
        "Bearer tok-1",
    )


@pytest.mark.parametrize(
    "words", ["a & b=c #d ?e", '"quoted" AND *', "Zürich 東京 🎉", "../../v1/whoami", "100%"]
)
def test_the_words_reach_the_server_as_typed(host: StandIn, words: str) -> None:
    code, out, _ = run(host, "recall", words, "--limit", "3")
    assert (code, out) == (0, "no match\n")
    path, query, _ = host.seen[-1]
    assert path == "/spaces/sp%2F1/recall"
    assert query == {"q": [words], "limit": ["3"]}


def test_json_output_and_a_refusal(host: StandIn) -> None:
    host.answer = (200, {"query": "x", "hits": HITS[:1]})
    code, out, _ = run(host, "--json", "recall", "x")
    assert code == 0 and json.loads(out) == {"query": "x", "hits": HITS[:1]}

    message = "'limit' must be a whole number from 1 to 50, not '99'"
    host.answer = (
        400,
        {"type": "error", "error": {"type": "invalid_request_error", "message": message}},
    )
    code, out, err = run(host, "recall", "x", "--limit", "99")
    assert (code, out) == (1, "")
    assert err == f"mercury-ctl: {message} (HTTP 400)\n"


def test_limit_must_be_a_number(host: StandIn, capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exc:
        run(host, "recall", "x", "--limit", "many")
    assert exc.value.code == 2
    assert "--limit: invalid int value: 'many'" in capsys.readouterr().err
    assert host.seen == []


def test_the_recall_skill_is_offered_to_every_run() -> None:
    resources = Path(__file__).resolve().parents[3] / "resources"
    (skill,) = [s for s in discover_skills(resources, []) if s.name == "recall"]
    assert "mercury-ctl recall" in skill.description
    body = skill.path.read_text()
    assert 'mercury-ctl recall "' in body and "no match" in body
