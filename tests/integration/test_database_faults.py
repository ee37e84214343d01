"""A lost database is noticed: `mercury run` on a real site, its SQLite file deleted.

SQLite keeps writing to a file unlinked under it, so without a check the loss shows only
at the next start, which would silently begin empty (history, queue and roles gone).
"""

from __future__ import annotations

import json
import subprocess
import sys
import time
import urllib.error
import urllib.request
from typing import Any

from tests.fakes.model_server import FakeModelServer
from tests.integration.mercury_site import Mercury, echo_responder


def health(m: Mercury) -> tuple[int, dict[str, Any]]:
    try:
        with urllib.request.urlopen(f"{m.url}/healthz", timeout=5) as resp:
            return resp.status, json.loads(resp.read())
    except urllib.error.HTTPError as exc:
        return exc.code, json.loads(exc.read())


def test_a_deleted_database_fails_the_health_check_and_the_next_start_refuses_it(
    site: Any, fake: FakeModelServer
) -> None:
    fake.responder = echo_responder()
    m = site()
    m.start()
    m.post("kept", "first words")
    m.wait_replies("kept", 1)
    assert health(m) == (200, {"ok": True, "version": health(m)[1]["version"]})

    for suffix in ("", "-wal", "-shm"):
        (m.data_dir / f"mercury.db{suffix}").unlink(missing_ok=True)
    status, body = health(m)
    assert status == 503, body
    assert body["ok"] is False
    assert body["problems"] == ["the database file was deleted while Mercury was running"]
    assert str(m.data_dir) not in json.dumps(body)  # /healthz is public: no paths
    deadline = time.monotonic() + 30
    while "THE DATABASE IS GONE" not in m.logs() and time.monotonic() < deadline:
        time.sleep(0.2)
    assert "THE DATABASE IS GONE" in m.logs()
    assert m.stop() == 0

    # The next start finds an empty database but the space on disk: it refuses.
    refused = subprocess.run(
        [sys.executable, "-m", "mercury.cli", "run"],
        cwd=m.root, env=m.env(), capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert refused.returncode != 0
    out = refused.stdout + refused.stderr
    assert "has no spaces" in out and "--accept-empty-database" in out, out

    # The operator says an empty start is meant: it starts and answers.
    m.start("--accept-empty-database")
    assert "starting on an empty database" in m.logs()
    m.post("kept", "again")
    assert [r["text"] for r in m.wait_replies("kept", 1)] == ["re: again"]
    assert health(m)[0] == 200
    assert m.stop() == 0


def test_a_new_site_starts_on_an_empty_database_without_asking(
    site: Any, fake: FakeModelServer
) -> None:
    m = site()
    m.start()
    assert health(m)[0] == 200
    assert "starting on an empty database" not in m.logs()
    assert m.stop() == 0
