"""The per-run egress proxy: the only way a run's container reaches the network.

Run containers have network `none`. A run whose extensions declare `network` hosts gets
them through `egress.sock`, a unix socket beside its `api.sock` (same folder, same owner
and mode, so only the container's uid can connect). The in-container relay
(mercury_agent/egress.py) turns HTTP_PROXY traffic into connections on that socket.

A connection speaks one line of our own, then plain HTTP proxying:

    MERCURY-RUN <token>\\r\\n
    CONNECT host:port HTTP/1.1\\r\\n...\\r\\n\\r\\n         -> 200, then a raw tunnel (TLS)
    GET http://host[:port]/path HTTP/1.1\\r\\n...\\r\\n\\r\\n -> forwarded in origin form

Each connection is checked in this order, and refused with a one-line body: the token
must be live and this run's (407); the request well formed (400); the host granted by the
run's `RunGrants.hosts` (403; none granted = all refused); every address the name resolves
to public unless `extensions.allow_private` lists it (403). The name is resolved once and
the connection made to an address that was checked, so DNS rebinding cannot swap it.
Refusals are logged `egress.refused`, tunnels `egress.open` / `egress.closed` (bytes).

Bounds: header block 16 KiB, connect 10 s, idle 60 s, 32 connections per run;
`close_run` closes the run's socket and cuts every tunnel of it.
"""

from __future__ import annotations

import asyncio
import contextlib
import ipaddress
import re
import socket
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import urlsplit

from mercury.api.server import bind_run_socket
from mercury.api.tokens import RunGrant, TokenStore
from mercury.core.egress_rules import IPAddress, PrivateRule, address_refusal, parse_private_rules
from mercury.core.extension_spec import host_allowed
from mercury.logging import get_logger

log = get_logger(__name__)

EGRESS_SOCKET_NAME = "egress.sock"
PREAMBLE = b"MERCURY-RUN "
MAX_HEADER_BYTES = 16 * 1024
HEADER_TIMEOUT_S = 10.0
CONNECT_TIMEOUT_S = 10.0
IDLE_TIMEOUT_S = 60.0
MAX_CONNECTIONS_PER_RUN = 32
_CHUNK = 64 * 1024
# How long a refused client may take to read the answer and hang up.
_LINGER_S = 2.0
# A DNS name or an IPv4 literal (IPv6 literals come in brackets and are checked apart).
_HOSTNAME = re.compile(r"[A-Za-z0-9_](?:[A-Za-z0-9_.-]{0,252})")
_TOKEN = re.compile(r"[A-Za-z0-9_-]{16,128}")
# Headers that describe the hop to the proxy, not the request to the origin.
_HOP_BY_HOP = frozenset(
    {"connection", "keep-alive", "te", "trailer", "upgrade", "proxy-connection"}
)
_REASONS = {
    400: "Bad Request",
    403: "Forbidden",
    407: "Proxy Authentication Required",
    502: "Bad Gateway",
    503: "Service Unavailable",
}


class Refusal(Exception):
    """A connection answered with `status` and the one-line `reason`, and logged."""

    def __init__(self, status: int, reason: str, host: str | None = None, port: int | None = None):
        super().__init__(reason)
        self.status = status
        self.reason = reason
        self.host = host
        self.port = port


@dataclass(frozen=True)
class Target:
    """Where a proxy request goes; `head` is what to send first (None for CONNECT)."""

    host: str
    port: int
    head: bytes | None = None


@dataclass(eq=False)
class _RunEgress:
    run_id: str
    path: Path
    server: asyncio.AbstractServer | None = None
    tasks: set[asyncio.Task[None]] = field(default_factory=set)
    transports: set[asyncio.BaseTransport] = field(default_factory=set)
    active: int = 0
    over_cap: int = 0
    closing: bool = False


class EgressProxy:
    """One egress socket per run, in the run's socket folder, until `close_run`."""

    def __init__(
        self,
        tokens: TokenStore,
        *,
        allow_private: Iterable[str] = (),
        socket_owner: tuple[int, int] | None = None,
        connect_timeout: float = CONNECT_TIMEOUT_S,
        idle_timeout: float = IDLE_TIMEOUT_S,
        header_timeout: float = HEADER_TIMEOUT_S,
        max_connections: int = MAX_CONNECTIONS_PER_RUN,
    ) -> None:
        self.tokens = tokens
        self.allow_private: tuple[PrivateRule, ...] = parse_private_rules(allow_private)
        self.socket_owner = socket_owner
        self.connect_timeout = connect_timeout
        self.idle_timeout = idle_timeout
        self.header_timeout = header_timeout
        self.max_connections = max_connections
        self._runs: dict[str, _RunEgress] = {}

    async def open_run(self, run_id: str, folder: Path) -> Path:
        """Listen on `<folder>/egress.sock` for `run_id`; returns the socket's path."""
        if run_id in self._runs:
            raise ValueError(f"run {run_id!r} already has an egress socket")
        entry = _RunEgress(run_id, folder / EGRESS_SOCKET_NAME)
        sock = bind_run_socket(folder, EGRESS_SOCKET_NAME, self.socket_owner, self.max_connections)
        try:
            entry.server = await asyncio.start_unix_server(
                lambda r, w: self._accept(entry, r, w), sock=sock, limit=MAX_HEADER_BYTES
            )
        except BaseException:
            sock.close()
            raise
        self._runs[run_id] = entry
        return entry.path

    async def close_run(self, run_id: str) -> None:
        """Stop listening for `run_id` and cut every connection of it. Idempotent."""
        entry = self._runs.pop(run_id, None)
        if entry is None:
            return
        entry.closing = True
        if entry.server is not None:
            entry.server.close()
        for transport in list(entry.transports):
            transport.abort()
        tasks = list(entry.tasks)
        for task in tasks:
            task.cancel()
        if tasks:
            await asyncio.gather(*tasks, return_exceptions=True)
        with contextlib.suppress(FileNotFoundError):
            entry.path.unlink()
        if entry.over_cap:
            log.warning(
                "egress.refused",
                run_id=run_id,
                host=None,
                port=None,
                why=f"{entry.over_cap} connections over the cap of {self.max_connections}",
            )

    async def stop(self) -> None:
        for run_id in list(self._runs):
            await self.close_run(run_id)

    def open_runs(self) -> set[str]:
        return set(self._runs)

    def connections(self, run_id: str) -> int:
        """Connections of `run_id` being handled right now (for tests and status)."""
        entry = self._runs.get(run_id)
        return entry.active if entry else 0

    # ------------------------------------------------------------------ one connection

    async def _accept(
        self, entry: _RunEgress, reader: asyncio.StreamReader, writer: asyncio.StreamWriter
    ) -> None:
        task: asyncio.Task[None] = asyncio.current_task()  # type: ignore[assignment]
        if entry.closing:
            writer.transport.abort()
            return
        # Registered before the first await: close_run cuts every connection it sees.
        entry.tasks.add(task)
        entry.transports.add(writer.transport)
        entry.active += 1
        upstream: asyncio.StreamWriter | None = None
        try:
            if entry.active > self.max_connections:
                entry.over_cap += 1
                await _answer(reader, writer, 503, "too many egress connections for this run")
                return
            try:
                target = await asyncio.wait_for(
                    self._read_request(entry, reader), self.header_timeout
                )
                up_reader, upstream = await self._connect(target)
            except Refusal as refusal:
                self._log_refusal(entry, refusal)
                await _answer(reader, writer, refusal.status, refusal.reason)
                return
            except TimeoutError:
                why = "no complete proxy request in time"
                self._log_refusal(entry, Refusal(400, why))
                await _answer(reader, writer, 400, why)
                return
            entry.transports.add(upstream.transport)
            if target.head is None:
                writer.write(b"HTTP/1.1 200 Connection established\r\n\r\n")
            else:
                upstream.write(target.head)
            log.info("egress.open", run_id=entry.run_id, host=target.host, port=target.port)
            sent, received = await self._pipe(reader, writer, up_reader, upstream)
            sent += len(target.head or b"")
            log.info(
                "egress.closed",
                run_id=entry.run_id,
                host=target.host,
                port=target.port,
                bytes_out=sent,
                bytes_in=received,
            )
        except (ConnectionError, OSError, asyncio.IncompleteReadError):
            pass  # the client or the origin went away: nothing to answer
        except asyncio.CancelledError:
            pass  # close_run cut the connection; the task ends here, quietly
        finally:
            entry.active -= 1
            if upstream is not None:
                entry.transports.discard(upstream.transport)
                upstream.transport.abort()
            # Closed, not aborted: what the origin sent last still reaches the client,
            # within a few seconds (a client that stops reading is cut).
            writer.close()
            with contextlib.suppress(Exception):
                await asyncio.wait_for(writer.wait_closed(), 5)
            writer.transport.abort()
            entry.transports.discard(writer.transport)
            entry.tasks.discard(task)

    def _log_refusal(self, entry: _RunEgress, refusal: Refusal) -> None:
        log.info(
            "egress.refused",
            run_id=entry.run_id,
            host=refusal.host,
            port=refusal.port,
            why=refusal.reason,
        )

    async def _read_request(self, entry: _RunEgress, reader: asyncio.StreamReader) -> Target:
        """The checked target of a connection: token, request, granted host (no I/O out)."""
        try:
            line = await reader.readuntil(b"\r\n")
        except asyncio.LimitOverrunError:
            raise Refusal(400, "the first line is too long") from None
        except asyncio.IncompleteReadError:
            raise Refusal(400, "the connection ended before a request") from None
        grant = self._grant_of(entry, line)
        try:
            head = await reader.readuntil(b"\r\n\r\n")
        except asyncio.LimitOverrunError:
            raise Refusal(400, f"request header block over {MAX_HEADER_BYTES} bytes") from None
        except asyncio.IncompleteReadError:
            raise Refusal(400, "the connection ended inside the request header") from None
        target = parse_proxy_request(head)
        if not host_allowed(grant.grants.hosts, target.host, target.port):
            raise Refusal(
                403,
                f"{_authority(target.host, target.port)} is not among the hosts this run's "
                "extensions may reach",
                target.host,
                target.port,
            )
        return target

    def _grant_of(self, entry: _RunEgress, line: bytes) -> RunGrant:
        if not line.startswith(PREAMBLE):
            raise Refusal(407, "missing run token: start with MERCURY-RUN <token>")
        token = line[len(PREAMBLE) :].strip().decode("ascii", "replace")
        grant = self.tokens.lookup(token) if _TOKEN.fullmatch(token) else None
        # Another run's token is as good as none here: each socket serves its own run.
        if grant is None or grant.run_id != entry.run_id:
            raise Refusal(407, "unknown or expired run token, or not this run's")
        return grant

    async def _connect(self, target: Target) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
        """Resolve once, refuse unless every address may be reached, connect to one."""
        host, port = target.host, target.port
        try:
            async with asyncio.timeout(self.connect_timeout):
                addresses = await _resolve(host, port)
                for address in addresses:
                    why = address_refusal(address, port, self.allow_private)
                    if why is not None:
                        raise Refusal(403, f"{host} resolves to {why}", host, port)
                last: OSError | None = None
                for address in addresses:
                    try:
                        return await asyncio.open_connection(str(address), port, limit=_CHUNK)
                    except OSError as exc:
                        last = exc
        except TimeoutError:
            why = f"{_authority(host, port)} did not answer in time"
            raise Refusal(502, why, host, port) from None
        reason = (last.strerror if last is not None else None) or "no address"
        raise Refusal(502, f"cannot connect to {_authority(host, port)}: {reason}", host, port)

    async def _pipe(
        self,
        client_r: asyncio.StreamReader,
        client_w: asyncio.StreamWriter,
        origin_r: asyncio.StreamReader,
        origin_w: asyncio.StreamWriter,
    ) -> tuple[int, int]:
        """Copy both ways until the origin is done or nothing moves for `idle_timeout`.

        Returns (bytes sent to the origin, bytes received from it)."""
        loop = asyncio.get_running_loop()
        counts = [0, 0]
        last = [loop.time()]

        async def copy(src: asyncio.StreamReader, dst: asyncio.StreamWriter, slot: int) -> None:
            while data := await src.read(_CHUNK):
                counts[slot] += len(data)
                last[0] = loop.time()
                dst.write(data)
                await dst.drain()
            if dst.can_write_eof():
                with contextlib.suppress(OSError):
                    dst.write_eof()

        up = asyncio.ensure_future(copy(client_r, origin_w, 0))
        down = asyncio.ensure_future(copy(origin_r, client_w, 1))
        try:
            while not down.done():
                wait = max(last[0] + self.idle_timeout - loop.time(), 0.0)
                running = {t for t in (up, down) if not t.done()}
                await asyncio.wait(running, timeout=wait, return_when=asyncio.FIRST_COMPLETED)
                if up.done() and up.exception() is not None:
                    break  # the client's side broke: nobody reads the answer
                if not down.done() and loop.time() - last[0] >= self.idle_timeout:
                    break  # idle both ways
            # The origin closed: what the client may still send goes nowhere.
        finally:
            for task in (up, down):
                task.cancel()
            await asyncio.gather(up, down, return_exceptions=True)
        return counts[0], counts[1]


def parse_proxy_request(head: bytes) -> Target:
    """The target of a proxy request head (request line + headers + blank line).

    CONNECT host:port -> a tunnel; an absolute-form http:// request -> the same request in
    origin form with `Connection: close` and without Proxy-* / hop-by-hop headers."""
    lines = head.decode("latin-1").split("\r\n")
    if any("\r" in line or "\n" in line for line in lines):
        raise Refusal(400, "a bare CR or LF in the request header")
    parts = lines[0].split(" ")
    if len(parts) != 3 or not parts[2].startswith("HTTP/1."):
        raise Refusal(400, "expected CONNECT host:port HTTP/1.1 or GET http://host/path HTTP/1.1")
    method, target, version = parts
    if not method.isalpha() or not method.isupper():
        raise Refusal(400, f"not an HTTP method: {method[:20]!r}")
    headers: list[tuple[str, str]] = []
    for raw in lines[1:]:
        if not raw:
            continue
        name, sep, value = raw.partition(":")
        if not sep or not name or name != name.strip():
            raise Refusal(400, "a malformed header line")
        headers.append((name, value.strip()))
    if method == "CONNECT":
        host, port = _split_authority(target, default_port=None)
        return Target(host, port)
    url = urlsplit(target)
    if url.scheme.lower() != "http" or not url.netloc:
        raise Refusal(400, "only http:// URLs can be proxied; use CONNECT for https")
    if "@" in url.netloc:
        raise Refusal(400, "credentials in the URL are not proxied")
    host, port = _split_authority(url.netloc, default_port=80)
    origin = (url.path or "/") + (f"?{url.query}" if url.query else "")
    named = {
        v.strip().lower()
        for k, value in headers
        if k.lower() == "connection"
        for v in value.split(",")
    }
    # The URL's authority is the Host (RFC 9112 3.2.2), whatever Host the client sent.
    kept = [("Host", url.netloc)] + [
        (k, v)
        for k, v in headers
        if k.lower() not in _HOP_BY_HOP
        and k.lower() not in named
        and k.lower() != "host"
        and not k.lower().startswith("proxy-")
    ]
    out = [f"{method} {origin} {version}"] + [f"{k}: {v}" for k, v in kept]
    out += ["Connection: close", "", ""]
    return Target(host, port, "\r\n".join(out).encode("latin-1"))


def _split_authority(authority: str, *, default_port: int | None) -> tuple[str, int]:
    host, port_text = authority, ""
    if authority.startswith("["):
        inner, sep, rest = authority[1:].partition("]")
        if not sep or (rest and not rest.startswith(":")):
            raise Refusal(400, f"a malformed host: {authority[:80]!r}")
        host, port_text = inner, rest[1:]
        try:
            ipaddress.IPv6Address(host)
        except ValueError:
            raise Refusal(400, f"a malformed IPv6 address: {host[:80]!r}") from None
    else:
        host, sep, port_text = authority.rpartition(":")
        if not sep:
            host, port_text = authority, ""
        if not _HOSTNAME.fullmatch(host):
            raise Refusal(400, f"a malformed host: {host[:80]!r}")
    if not port_text:
        if default_port is None:
            raise Refusal(400, "CONNECT needs host:port")
        return host.lower(), default_port
    if not port_text.isdigit() or not 0 < int(port_text) < 65536:
        raise Refusal(400, f"a malformed port: {port_text[:20]!r}")
    return host.lower(), int(port_text)


async def _resolve(host: str, port: int) -> list[IPAddress]:
    """Every address `host` has (once; the connection uses one of these), in order."""
    try:
        return [ipaddress.ip_address(host)]
    except ValueError:
        pass
    loop = asyncio.get_running_loop()
    try:
        infos = await loop.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    except socket.gaierror as exc:
        raise Refusal(502, f"cannot resolve {host}: {exc.strerror}", host, port) from None
    found: list[IPAddress] = []
    for _family, _type, _proto, _name, sockaddr in infos:
        address = ipaddress.ip_address(str(sockaddr[0]).partition("%")[0])
        if address not in found:
            found.append(address)
    if not found:
        raise Refusal(502, f"{host} has no address", host, port)
    return found


def _authority(host: str, port: int) -> str:
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


async def _answer(
    reader: asyncio.StreamReader, writer: asyncio.StreamWriter, status: int, reason: str
) -> None:
    """A short HTTP answer with `reason` as its one-line body, then close.

    Half-closed first, and what the client still sends read and dropped for a moment:
    closing with unread bytes would reset the connection and could lose the answer."""
    body = (reason + "\n").encode()
    lines = [
        f"HTTP/1.1 {status} {_REASONS.get(status, 'Error')}",
        "Content-Type: text/plain; charset=utf-8",
        f"Content-Length: {len(body)}",
        "Connection: close",
    ]
    if status == 407:
        lines.append("Proxy-Authenticate: MERCURY-RUN")
    try:
        writer.write(("\r\n".join(lines) + "\r\n\r\n").encode() + body)
        async with asyncio.timeout(_LINGER_S):
            await writer.drain()
            if writer.can_write_eof():
                writer.write_eof()
            while await reader.read(_CHUNK):
                pass
    except (ConnectionError, OSError, TimeoutError):
        pass
    finally:
        writer.close()
