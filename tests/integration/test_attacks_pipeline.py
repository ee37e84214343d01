"""The host-side attacks again, end to end: `mercury run`, the real agent image and a model
(the fake model server) that has been prompt-injected into running the attacker's commands
through the agent's own tools. What a chat user would see is what is checked.
"""

from __future__ import annotations

import json
import os
import sqlite3
import stat
import time
from pathlib import Path
from typing import Any

import pytest

from mercury.core.router import DISK_WAIT_NOTICE
from tests.fakes.model_server import FakeModelServer, Text, ToolCall
from tests.integration.mercury_site import Mercury, echo_responder

pytestmark = pytest.mark.docker

KEY = "sk-ant-pipeline-test-000"  # the model key in the site's .env


def bash(command: str) -> ToolCall:
    return ToolCall("bash", {"command": command})


def runs_table(m: Mercury) -> list[dict[str, Any]]:
    with sqlite3.connect(m.data_dir / "mercury.db") as db:
        db.row_factory = sqlite3.Row
        return [dict(r) for r in db.execute("SELECT * FROM runs ORDER BY id")]


def test_an_outbox_file_swapped_for_a_link_to_the_env_file_never_reaches_the_chat(
    site: Any, fake: FakeModelServer
) -> None:
    m = site()
    m.start()
    env = m.root / ".env"
    swapper = (
        "nohup sh -c 'while :; do "
        f"ln -sfn {env} /space/outbox/.l && mv -fT /space/outbox/.l /space/outbox/report.txt; "
        "printf innocent > /space/outbox/.f && mv -fT /space/outbox/.f /space/outbox/report.txt; "
        "done' >/dev/null 2>&1 </dev/null &"
    )
    for i in range(3):
        fake.script(
            [
                ToolCall("write_file", {"path": "report.txt", "content": "innocent"}),
                ToolCall("send_file", {"path": "report.txt"}),  # listed in result.json
                bash(swapper),
                Text(f"Here is report {i}."),
            ]
        )
        m.post("alpha", f"send me report {i}")
        reply = m.wait_replies("alpha", i + 1)[i]
        assert reply["text"].startswith(f"Here is report {i}.")
        for f in reply["files"]:
            body = m.fetch(f["url"])
            # The agent's own files only: "innocent", or a swap file it was killed while
            # writing (the agent lists every file that changed in its outbox).
            assert body in (b"innocent", b""), (f["name"], body)
            assert KEY.encode() not in body
        if "report.txt" not in [f["name"] for f in reply["files"]]:
            assert "not sent" in reply["text"]  # the user is told
    for msg in m.messages("alpha"):
        assert KEY not in json.dumps(msg)
    assert m.stop() == 0


def test_an_upload_never_overwrites_a_host_file_through_a_planted_link(
    site: Any, fake: FakeModelServer
) -> None:
    m = site()
    m.start()
    env = m.root / ".env"
    before = env.read_bytes(), env.stat()
    fake.script(
        [
            bash(f"mkdir -p /space/inbox; ln -sfn {env} /space/inbox/00-notes.txt"),
            Text("planted"),
        ]
    )
    m.post("alpha", "prepare")
    m.wait_replies("alpha", 1)
    fake.script([Text("got your notes")])
    m.upload("alpha", "notes.txt", b"the user's notes", text="here are my notes")
    assert m.wait_replies("alpha", 2)[1]["text"] == "got your notes"
    after = env.read_bytes(), env.stat()
    assert after[0] == before[0]
    assert (after[1].st_uid, after[1].st_mode) == (before[1].st_uid, before[1].st_mode)
    # The upload is in the inbox as a regular file of its own, and the agent was told so.
    prompt = json.dumps(fake.requests[-1].body)
    assert "/space/inbox/00-notes-1.txt" in prompt
    # Nothing Mercury keeps is open to other users of the host.
    data = m.data_dir
    assert stat.S_IMODE(data.stat().st_mode) == 0o700
    assert stat.S_IMODE((data / "mercury.db").stat().st_mode) == 0o600
    for path in data.rglob("*"):
        parts = path.relative_to(data).parts
        if parts[0] == "spaces" or (parts[0] == "io" and len(parts) > 2):
            # What the agent itself wrote: inside its 0750 space folder (under a 0700
            # spaces/) or a run's 0700 io dir (result.json, until the run is cleaned up).
            continue
        st = path.lstat()
        assert not st.st_mode & stat.S_IWOTH, path
        if not stat.S_ISSOCK(st.st_mode):
            assert not st.st_mode & stat.S_IROTH, path
    assert m.stop() == 0


def test_a_result_built_to_crash_the_parser_still_answers_and_is_recorded(
    site: Any, fake: FakeModelServer
) -> None:
    m = site()
    m.start()
    deep = (
        "python3 -c \"import os; open('/run/mercury-io/.r', 'w').write("
        '\'{\\"ok\\": true, \\"reply\\": \\"x\\", \\"d\\": \' + \'[\' * 300000 + '
        "']' * 300000 + '}'); os.rename('/run/mercury-io/.r', '/run/mercury-io/result.json')\"; "
        "kill -9 $PPID"
    )
    fake.script([bash(deep), Text("never reached")])
    m.post("alpha", "do it")
    (reply,) = m.wait_replies("alpha", 1)
    assert reply["text"].startswith("Sorry")
    deadline = time.monotonic() + 20
    while not (rows := runs_table(m)) and time.monotonic() < deadline:
        time.sleep(0.2)
    (row,) = rows
    assert row["reason"] == "error"
    assert "nests deeper" in row["error"]
    assert row["input_tokens"] > 0  # the model call it made is on the record
    assert m.stop() == 0


def test_below_the_free_disk_floor_messages_wait_and_are_answered_later(
    site: Any, fake: FakeModelServer, small_disk: Path
) -> None:
    m = site(
        extra={
            "data_dir": str(small_disk / "data"),
            "disk": {"min_free": "64m", "space_limit": "watch"},
        }
    )
    filler = small_disk / "filler"
    with open(filler, "wb") as fh:  # what else fills the host's disk
        fh.write(b"\0" * 48 * 1024**2)
    m.start()
    fake.responder = echo_responder()
    m.post("alpha", "hello while the disk is full")
    (notice,) = m.wait_replies("alpha", 1)
    assert notice["text"] == DISK_WAIT_NOTICE
    with sqlite3.connect(m.data_dir / "mercury.db") as db:
        statuses = [r[0] for r in db.execute("SELECT status FROM jobs")]
    assert statuses == ["queued"]  # accepted, kept, not run
    assert fake.requests == []
    os.unlink(filler)
    replies = m.wait_replies("alpha", 2)
    assert replies[1]["text"] == "re: hello while the disk is full"
    assert m.stop() == 0
