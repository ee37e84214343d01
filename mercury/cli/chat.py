"""`mercury chat TEXT`: send a message through a running instance's web chat, print the reply.

It talks HTTP to the instance (`mercury run`) with the dashboard password as a bearer
token: it opens the space's event stream first (so the reply cannot slip past), posts the
message, and waits for the answer; if the stream is unavailable it polls instead.
"""

from __future__ import annotations

import asyncio
import json
import uuid
from collections.abc import AsyncIterator
from typing import TYPE_CHECKING, Any
from urllib.parse import urljoin

import click

from mercury.cli.common import config_option, fail, load_or_exit

if TYPE_CHECKING:  # imported where used: `mercury --help` need not load aiohttp
    import aiohttp

DEFAULT_TIMEOUT = 600.0
POLL_INTERVAL = 1.0


class ChatError(Exception):
    """A failure to report as one line."""


def _default_url(host: str, port: int) -> str:
    # A wildcard listen address is not something to connect to; loopback reaches it.
    if host in ("0.0.0.0", ""):
        host = "127.0.0.1"
    elif host == "::":
        host = "::1"
    if ":" in host:
        host = f"[{host}]"
    return f"http://{host}:{port}"


@click.command("chat")
@click.argument("text")
@click.option("--space", default="main", show_default=True, help="Web chat space to talk in.")
@click.option("--json", "as_json", is_flag=True, help="Print the reply entry as JSON.")
@click.option("--url", default=None, help="Instance URL (default: from server.host/port).")
@click.option(
    "--timeout",
    type=float,
    default=DEFAULT_TIMEOUT,
    show_default=True,
    help="Seconds to wait for the reply.",
)
@config_option
def chat(text: str, space: str, as_json: bool, url: str | None, timeout: float) -> None:
    """Send TEXT to a running Mercury over its web chat and print the reply."""
    loaded = load_or_exit()
    secret = loaded.secrets.dashboard_password
    if secret is None:
        fail("no dashboard password: set MERCURY_DASHBOARD_PASSWORD (environment or .env)")
    password = secret.get_secret_value()
    base = (url or _default_url(loaded.config.server.host, loaded.config.server.port)).rstrip("/")
    try:
        entry = asyncio.run(_converse(base, password, space, text, timeout))
    except ChatError as exc:
        fail(str(exc))
    for f in entry.get("files") or []:
        f["url"] = urljoin(base + "/", f["url"])
    if as_json:
        click.echo(json.dumps(entry, indent=2))
        return
    click.echo(entry.get("text", ""))
    for f in entry.get("files") or []:
        click.echo(f"file: {f['name']} {f['url']}")


async def _converse(base: str, password: str, space: str, text: str, timeout: float) -> Any:
    import aiohttp

    headers = {"Authorization": f"Bearer {password}"}
    try:
        async with (
            asyncio.timeout(timeout),
            aiohttp.ClientSession(base, headers=headers) as http,
        ):
            return await _send_and_wait(http, base, space, text)
    except TimeoutError:
        raise ChatError(
            f"no reply within {timeout:g}s (the message was sent; see {base}/chat?space={space})"
        ) from None
    except aiohttp.ClientConnectorError:
        raise ChatError(f"no Mercury answering at {base}: start it with `mercury run`") from None
    except aiohttp.ClientError as exc:
        raise ChatError(f"{base}: {exc.__class__.__name__}: {exc}") from None


async def _check(resp: aiohttp.ClientResponse, base: str) -> None:
    import aiohttp

    if resp.status < 400:
        return
    try:
        detail = (await resp.json()).get("error") or ""
    except (aiohttp.ContentTypeError, ValueError, AttributeError):
        detail = ""
    if resp.status == 401:
        raise ChatError(
            f"401 unauthorized at {base}: the dashboard password was refused "
            "(check MERCURY_DASHBOARD_PASSWORD)"
        )
    if resp.status == 404:
        raise ChatError(f"{base} has no web chat (is adapters.web.enabled false?)")
    raise ChatError(f"{base}: HTTP {resp.status}" + (f": {detail}" if detail else ""))


async def _send_and_wait(http: aiohttp.ClientSession, base: str, space: str, text: str) -> Any:
    import aiohttp

    # Read timeout off: the overall asyncio.timeout bounds the wait instead.
    async with http.get(
        "/api/chat/stream",
        params={"space": space},
        timeout=aiohttp.ClientTimeout(total=None, sock_read=None),
    ) as stream:
        if stream.status == 200:
            message_id = await _post(http, base, space, text)
            async for kind, data in _events(stream):
                if kind == "message" and _is_reply(data, message_id):
                    return data
                if kind in ("message", "edit") and data.get("role") == "status":
                    click.echo(data.get("text", ""), err=True)
            raise ChatError(f"{base} closed the stream before a reply (is it shutting down?)")
        if stream.status not in (404, 405, 501):
            await _check(stream, base)
    # No event stream here (an older server, a proxy that blocks it): poll the history.
    async with http.get("/api/chat/messages", params={"space": space}) as resp:
        await _check(resp, base)
        cursor = (await resp.json()).get("cursor")
    message_id = await _post(http, base, space, text)
    while True:
        params = {"space": space} | ({"after": str(cursor)} if cursor is not None else {})
        async with http.get("/api/chat/messages", params=params) as resp:
            await _check(resp, base)
            body = await resp.json()
        for entry in body.get("messages", []):
            if _is_reply(entry, message_id):
                return entry
        cursor = body.get("cursor", cursor)
        await asyncio.sleep(POLL_INTERVAL)


def _is_reply(entry: dict[str, Any], message_id: str) -> bool:
    # A reply names the message it answers; one that names none is taken as ours too. A
    # streamed answer's preview is not the reply (it is withdrawn once the reply is out).
    return (
        entry.get("role") == "assistant"
        and not entry.get("preview")
        and not entry.get("deleted")
        and entry.get("reply_to") in (message_id, None)
    )


async def _post(http: aiohttp.ClientSession, base: str, space: str, text: str) -> str:
    # A client id makes a retried post idempotent on the server.
    body = {"space": space, "text": text, "client_id": uuid.uuid4().hex}
    async with http.post("/api/chat/messages", json=body) as resp:
        await _check(resp, base)
        return str((await resp.json())["id"])


async def _events(stream: aiohttp.ClientResponse) -> AsyncIterator[tuple[str, dict[str, Any]]]:
    """Parse server-sent events into (event type, JSON data)."""
    kind, data = "message", []
    async for line in _lines(stream):
        if not line:
            if data:
                try:
                    parsed = json.loads("\n".join(data))
                except ValueError:
                    parsed = None  # not ours to understand; skip it
                if isinstance(parsed, dict):
                    yield kind, parsed
            kind, data = "message", []
        elif line.startswith(":"):
            continue  # heartbeat / comment
        elif line.startswith("event:"):
            kind = line[6:].strip()
        elif line.startswith("data:"):
            data.append(line[5:].lstrip())


async def _lines(stream: aiohttp.ClientResponse) -> AsyncIterator[str]:
    # Own line splitting: a long reply is one long `data:` line, past readline's limit.
    buf = b""
    async for chunk in stream.content.iter_any():
        buf += chunk
        *lines, buf = buf.split(b"\n")
        for line in lines:
            yield line.decode("utf-8", "replace").rstrip("\r")
