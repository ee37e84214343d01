"""The shipped extensions through a real `mercury run`, in their real derived image.

The fake model scripts the tool calls an agent would make (bash running the extension's
command, or an MCP tool); the test checks what came back to the model and to the chat.
Every run here is the web chat's operator (an admin, so granted every extension); the
permission and network rules for other callers are test_extensions_enforced.py's.

The derived image of the four shipped extensions is built once (`ext_image`) and found by
each `mercury run` at start (its tag is the hash of the agent image and the install
steps), so only the first test pays for the build.
"""

from __future__ import annotations

import http.server
import json
import shutil
import sqlite3
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import docker
import pytest

from mercury.core.extension_spec import install_plan
from mercury.extensions import load_extension
from mercury.sandbox.ext_image import build_ext_image
from tests.fakes.model_server import FakeModelServer, Text, ToolCall, Turn
from tests.fakes.pdf import table_pdf
from tests.integration.mercury_site import Mercury, mercury

pytestmark = pytest.mark.docker

REPO_EXTENSIONS = Path(__file__).resolve().parents[2] / "extensions"
SHIPPED = ("chart-maker", "notes-mcp", "pdf-reader", "web-reader")


def shipped_plan() -> Any:
    return install_plan(load_extension(REPO_EXTENSIONS / name).spec for name in SHIPPED)


@pytest.fixture(scope="session")
def ext_image(docker_client: docker.DockerClient, agent_image: str) -> str:
    """The derived image of the shipped extensions, FROM the session's agent image."""
    lines: list[str] = []
    try:
        return build_ext_image(docker_client, agent_image, shipped_plan(), on_event=lines.append)
    except Exception as exc:
        pytest.fail(f"extension image build failed: {exc}\n" + "\n".join(lines[-40:]))


def copy_extensions(root: Path, names: tuple[str, ...] = SHIPPED) -> Path:
    """The site's extensions.dir: copies of the shipped ones, as `mercury ext add` makes."""
    target = root / "extensions"
    target.mkdir(exist_ok=True)
    for name in names:
        shutil.copytree(REPO_EXTENSIONS / name, target / name, dirs_exist_ok=True)
    return target


def start_with_extensions(
    site: Any, tmp_path: Path, *, via_cli: bool = False, **extensions: Any
) -> Mercury:
    """`mercury run` with the shipped extensions enabled; back once the derived image is
    in use (found on the engine at start). `via_cli`: installed and enabled the way an
    operator does, with `mercury ext add` and `mercury ext enable`."""
    if via_cli:
        section = {"dir": str(tmp_path / "extensions"), **extensions}
        m: Mercury = site(timeout=120, extra={"extensions": section})
        for name in SHIPPED:
            for args in (("add", str(REPO_EXTENSIONS / name)), ("enable", name)):
                done = mercury("ext", *args, cwd=m.root)
                assert done.returncode == 0, done.stdout + done.stderr
        listed = mercury("ext", "list", cwd=m.root).stdout
        assert all(name in listed for name in SHIPPED), listed
    else:
        section = {"dir": str(copy_extensions(tmp_path)), "enabled": list(SHIPPED), **extensions}
        m = site(timeout=120, extra={"extensions": section})
    m.start()
    wait_for_log(m, "ext image built")
    return m


def wait_for_log(m: Mercury, text: str, timeout: float = 120) -> None:
    import time

    deadline = time.monotonic() + timeout
    while text not in m.logs():
        assert time.monotonic() < deadline, f"no {text!r} in the log:\n{m.logs()[-4000:]}"
        time.sleep(0.2)


def tool_results(fake: FakeModelServer) -> list[str]:
    """The text of every tool result the agent sent back to the model, in order."""
    seen: list[str] = []
    for request in fake.requests:
        for message in request.body.get("messages", []):
            content = message.get("content")
            if message.get("role") != "user" or not isinstance(content, list):
                continue
            for block in content:
                if block.get("type") != "tool_result":
                    continue
                inner = block.get("content")
                text = (
                    inner
                    if isinstance(inner, str)
                    else "".join(b.get("text", "") for b in inner or [])
                )
                if text not in seen:
                    seen.append(text)
    return seen


def bash(command: str) -> ToolCall:
    return ToolCall("bash", {"command": command})


def run_records(m: Mercury) -> list[dict[str, Any]]:
    with sqlite3.connect(m.data_dir / "mercury.db") as db:
        db.row_factory = sqlite3.Row
        rows = db.execute("SELECT tool_calls, extensions FROM runs ORDER BY id").fetchall()
    return [
        {k: json.loads(row[k]) if row[k] else None for k in ("tool_calls", "extensions")}
        for row in rows
    ]


# --------------------------------------------------------------------------- the tests


def test_chart_maker_draws_a_png_that_is_delivered_to_the_chat(
    site: Any, fake: FakeModelServer, ext_image: str, tmp_path: Path
) -> None:
    m = start_with_extensions(site, tmp_path)
    try:
        fake.script(
            [
                Turn([ToolCall("write_file", {"path": "sales.csv",
                                              "content": "month,sales\njan,10\nfeb,14\nmar,9\n"})]),
                Turn([bash("make-chart sales.csv --x month --y sales --kind bar "
                           "--title 'Sales' --out outbox/sales.png")]),
                Turn([Text("Here is the chart of sales by month.")]),
            ]
        )  # fmt: skip
        m.post("charts", "chart my sales please")
        reply = m.wait_replies("charts", 1)[0]
        assert reply["text"] == "Here is the chart of sales by month.", tool_results(fake)
        assert any("wrote outbox/sales.png" in r for r in tool_results(fake)), tool_results(fake)
        names = [f["name"] for f in reply["files"]]
        assert names == ["sales.png"], reply
        png = m.fetch(reply["files"][0]["url"])
        assert png.startswith(b"\x89PNG\r\n\x1a\n") and len(png) > 2000
    finally:
        assert m.stop() == 0


def test_pdf_reader_reads_the_text_and_table_of_an_inbox_pdf(
    site: Any, fake: FakeModelServer, ext_image: str, tmp_path: Path
) -> None:
    m = start_with_extensions(site, tmp_path)
    try:
        pdf = table_pdf(
            "Quarterly report",
            ["Revenue grew in spring."],
            [["Quarter", "Revenue"], ["Q1", "120"], ["Q2", "185"]],
        )
        fake.script(
            [
                Turn([bash("read-pdf inbox/*report*.pdf")]),
                Turn([Text("Q2 revenue was 185.")]),
            ]
        )
        m.upload("pdfs", "report.pdf", pdf, text="what was Q2 revenue?")
        assert m.wait_replies("pdfs", 1)[0]["text"] == "Q2 revenue was 185."
        (result,) = tool_results(fake)
        assert "Revenue grew in spring." in result, result
        assert "| Quarter | Revenue |" in result and "| Q2 | 185 |" in result, result
    finally:
        assert m.stop() == 0


class Page(http.server.BaseHTTPRequestHandler):
    """An article on loopback, standing in for a web page (tests talk to 127.0.0.1 only)."""

    served: list[str] = []

    def do_GET(self) -> None:
        Page.served.append(self.path)
        body = (
            "<html><head><title>Mercury and the sun</title></head><body>"
            "<nav>Home | About | Contact</nav><article><h1>Mercury and the sun</h1>"
            + "".join(
                f"<p>Mercury is the planet closest to the sun; paragraph {i} tells how "
                "its year lasts only eighty-eight Earth days and its days are long.</p>"
                for i in range(6)
            )
            + "</article><footer>Copyright nobody</footer></body></html>"
        ).encode()
        self.send_response(200)
        self.send_header("Content-Type", "text/html; charset=utf-8")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args: Any) -> None:
        pass


@pytest.fixture
def page() -> Iterator[int]:
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Page)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield server.server_address[1]
    server.shutdown()
    server.server_close()


def test_web_reader_reads_a_page_through_the_egress_proxy(
    site: Any, fake: FakeModelServer, ext_image: str, tmp_path: Path, page: int
) -> None:
    # The page is on loopback: refused unless the operator allows that address and port.
    m = start_with_extensions(site, tmp_path, allow_private=[f"127.0.0.1:{page}"])
    try:
        fake.script(
            [
                Turn([bash(f"read-url http://127.0.0.1:{page}/article")]),
                Turn([bash(f"read-url http://127.0.0.1:{page + 1}/elsewhere")]),
                Turn([Text("It is about Mercury's short year.")]),
            ]
        )
        m.post("web", "what does that page say?")
        assert m.wait_replies("web", 1)[0]["text"] == "It is about Mercury's short year."
        read, refused = tool_results(fake)
        assert "eighty-eight Earth days" in read and "Home | About" not in read, read
        assert "403" in refused and "exit code" in refused, refused
        assert Page.served == ["/article"]
        logs = m.logs()
        assert "egress.open" in logs and "egress.refused" in logs, logs[-3000:]
    finally:
        assert m.stop() == 0


def test_the_mcp_example_server_is_used_end_to_end(
    site: Any, fake: FakeModelServer, ext_image: str, tmp_path: Path
) -> None:
    m = start_with_extensions(site, tmp_path, via_cli=True)
    try:
        fake.script(
            [
                Turn([ToolCall("notes__add_note", {"text": "buy milk"})]),
                Turn([ToolCall("notes__list_notes", {})]),
                Turn([Text("Noted.")]),
            ]
        )
        m.post("mcp", "remember to buy milk")
        assert m.wait_replies("mcp", 1)[0]["text"] == "Noted."
        added, listed = tool_results(fake)
        assert "buy milk" in listed, (added, listed)
        # The tools were offered to the model beside the built-in ones.
        offered = [t["name"] for t in fake.requests[0].body["tools"]]
        assert {"bash", "notes__add_note", "notes__list_notes"} <= set(offered), offered
        assert (
            "buy milk"
            in (m.data_dir / "spaces").joinpath(*space_dir_parts(m, "mcp"), "notes.md").read_text()
        )
        # The run record keeps the calls and their results, and what the run was granted.
        (record,) = run_records(m)
        calls = [(c["name"], c["ok"]) for c in record["tool_calls"]]
        assert calls == [("notes__add_note", True), ("notes__list_notes", True)], record
        assert "buy milk" in record["tool_calls"][1]["output"]
        assert record["extensions"] == sorted(SHIPPED)
    finally:
        assert m.stop() == 0


def space_dir_parts(m: Mercury, space: str) -> tuple[str, ...]:
    """The data_dir/spaces/<id> folder of a web chat space (its id is the space name's)."""
    found = [p for p in (m.data_dir / "spaces").iterdir() if space in p.name]
    assert len(found) == 1, list((m.data_dir / "spaces").iterdir())
    return (found[0].name,)


def test_a_warm_container_serves_a_run_with_the_usual_extensions(
    site: Any, fake: FakeModelServer, ext_image: str, tmp_path: Path
) -> None:
    """Every member is granted the shipped extensions (permission run), so warm containers
    are made with them: the space's second message is handed to one, tools working."""
    import time

    section = {"dir": str(copy_extensions(tmp_path)), "enabled": list(SHIPPED)}
    m: Mercury = site(timeout=120, warm=True, extra={"extensions": section})
    m.start()
    try:
        wait_for_log(m, "ext image built")
        fake.script([Text("first")])
        m.post("warm", "one")
        assert m.wait_replies("warm", 1)[0]["text"] == "first"
        deadline = time.monotonic() + 60
        while "warm.ready" not in m.logs() and time.monotonic() < deadline:
            time.sleep(0.1)
        fake.script([Turn([bash("make-chart --help | head -1")]), Turn([Text("second")])])
        m.post("warm", "two")
        assert m.wait_replies("warm", 2)[1]["text"] == "second"
        assert "warm.handover" in m.logs(), m.logs()[-3000:]
        assert any("usage: make-chart" in r for r in tool_results(fake)), tool_results(fake)
    finally:
        assert m.stop() == 0
