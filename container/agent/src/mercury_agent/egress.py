"""The in-container egress relay: an HTTP proxy address on 127.0.0.1 for the host's egress.

The container has no network. When input.json says `"egress": true`, the host serves an
egress proxy on `egress.sock` beside the API socket; tools and libraries, though, expect
an HTTP proxy at host:port (HTTP_PROXY / HTTPS_PROXY). The relay listens on 127.0.0.1 and
for each connection opens the unix socket, writes the run's preamble line
(`MERCURY-RUN <token>`) and then copies bytes both ways untouched: the client's CONNECT or
absolute-form request goes to the host, which checks it against the run's grants and
answers (200 and a tunnel, or a 403 with the reason). Nothing is checked or decided here.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import sys
from types import TracebackType
from typing import Self

EGRESS_SOCKET_NAME = "egress.sock"
_CHUNK = 64 * 1024
_LINGER_S = 2.0
_LOOPBACK = "127.0.0.1,localhost"


def egress_socket_for(api_socket: str) -> str:
    """The egress socket beside the host API socket (the same mounted folder)."""
    return os.path.join(os.path.dirname(api_socket), EGRESS_SOCKET_NAME)


def egress_env(url: str, direct: str | None = None) -> dict[str, str]:
    """The proxy variables that send every process's HTTP(S) through the relay at `url`.

    `direct`: the API relay's base URL ("http://127.0.0.1:PORT"), which stays direct
    (mercury-ctl, the services' URLs): NO_PROXY names it with its port, so every other
    loopback address goes through the proxy too - where the host refuses it unless the
    operator allowed that address (a server on the container's own loopback is not
    reachable anyway: the run has no network). Python's urllib, requests and httpx honour
    "host:port" entries; curl does not (it then asks the proxy, which refuses loopback).
    Without `direct`, all of loopback stays direct."""
    if direct is None:
        keep = _LOOPBACK
    else:
        hostport = direct.split("://", 1)[-1].rstrip("/")
        port = hostport.rpartition(":")[2]
        keep = f"{hostport},localhost:{port}"
    return {
        "HTTP_PROXY": url,
        "HTTPS_PROXY": url,
        "http_proxy": url,
        "https_proxy": url,
        "NO_PROXY": keep,
        "no_proxy": keep,
    }


def _log(message: str) -> None:
    print(f"mercury-agent egress: {message}", file=sys.stderr, flush=True)


class EgressRelay:
    """Listens on 127.0.0.1:<random port>, relaying each connection to `socket_path`."""

    def __init__(self, socket_path: str, token: str, *, host: str = "127.0.0.1") -> None:
        if not token or any(c in token for c in "\r\n "):
            raise ValueError("the run token must be one word")
        self.socket_path = socket_path
        self.host = host
        self.port = 0
        self._preamble = f"MERCURY-RUN {token}\r\n".encode("ascii")
        self._server: asyncio.AbstractServer | None = None
        self._tasks: set[asyncio.Task[None]] = set()
        self._writers: set[asyncio.StreamWriter] = set()

    @property
    def url(self) -> str:
        """http://127.0.0.1:PORT, the proxy address every process is given."""
        if not self.port:
            raise RuntimeError("the egress relay is not started")
        return f"http://{self.host}:{self.port}"

    async def start(self) -> None:
        self._server = await asyncio.start_server(self._relay, self.host, 0)
        self.port = int(self._server.sockets[0].getsockname()[1])

    async def stop(self) -> None:
        if self._server is not None:
            self._server.close()
            self._server = None
        for writer in list(self._writers):
            writer.transport.abort()
        tasks = list(self._tasks)
        for task in tasks:
            task.cancel()
        if tasks:
            await asyncio.gather(*tasks, return_exceptions=True)

    async def __aenter__(self) -> Self:
        await self.start()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.stop()

    async def _relay(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task: asyncio.Task[None] = asyncio.current_task()  # type: ignore[assignment]
        self._tasks.add(task)
        self._writers.add(writer)
        host_w: asyncio.StreamWriter | None = None
        try:
            try:
                host_r, host_w = await asyncio.open_unix_connection(self.socket_path)
            except OSError as exc:
                _log(f"cannot reach the host's egress proxy: {exc.strerror or exc}")
                body = b"the egress relay cannot reach the host\n"
                writer.write(
                    b"HTTP/1.1 502 Bad Gateway\r\nContent-Type: text/plain\r\nConnection: close"
                    + f"\r\nContent-Length: {len(body)}\r\n\r\n".encode()
                    + body
                )
                # Half-close and read what the client sent: closing with it unread would
                # reset the connection before the client read the answer.
                with contextlib.suppress(OSError, TimeoutError):
                    async with asyncio.timeout(_LINGER_S):
                        await writer.drain()
                        writer.write_eof()
                        while await reader.read(_CHUNK):
                            pass
                return
            self._writers.add(host_w)
            host_w.write(self._preamble)
            up = asyncio.ensure_future(_copy(reader, host_w))
            down = asyncio.ensure_future(_copy(host_r, writer))
            try:
                # The host ends the exchange (answer sent, tunnel closed, idle cut); the
                # client then gets a moment to read the end and hang up itself.
                await asyncio.wait({down})
                await asyncio.wait({up}, timeout=_LINGER_S)
            finally:
                for t in (up, down):
                    t.cancel()
                await asyncio.gather(up, down, return_exceptions=True)
        except asyncio.CancelledError:
            pass  # stop() cut the connection; the task ends here, quietly
        finally:
            if host_w is not None:
                self._writers.discard(host_w)
                host_w.transport.abort()
            writer.close()
            with contextlib.suppress(Exception):
                await asyncio.wait_for(writer.wait_closed(), 5)
            writer.transport.abort()
            self._writers.discard(writer)
            self._tasks.discard(task)


async def _copy(src: asyncio.StreamReader, dst: asyncio.StreamWriter) -> None:
    """Bytes from `src` to `dst` until EOF, then half-close `dst` (TLS needs that)."""
    with contextlib.suppress(ConnectionError, OSError):
        while data := await src.read(_CHUNK):
            dst.write(data)
            await dst.drain()
        if dst.can_write_eof():
            dst.write_eof()
