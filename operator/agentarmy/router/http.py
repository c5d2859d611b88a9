"""A small HTTP/1.1 client for the router API: keep-alive connections, httptools parsing.

Agents and submitters make one small JSON request per task, so the client's own cost is
on every task's path. aiohttp spent ~200 µs of CPU per request here (URL objects,
header multidicts, stream readers, a timer per request); this client writes one
pre-built request and parses the reply with the same C parser uvicorn uses. It does
only what the router API needs: JSON bodies, a bearer token, TLS, timeouts.
"""

from __future__ import annotations

import asyncio
import ssl
import time
from urllib.parse import quote, urlencode, urlsplit

import httptools

IDLE_SECONDS = 15.0
"""Close a connection idle this long: well under the router's keep-alive (75 s), so the
router never closes one under a request we are about to send."""


class HttpConnectionError(ConnectionError):
    """The connection failed or closed before a complete response arrived."""


class _Connection(asyncio.Protocol):
    """One keep-alive connection; one request at a time (no pipelining)."""

    def __init__(self) -> None:
        self.transport: asyncio.Transport | None = None
        self.idle_since = time.monotonic()
        self._parser = httptools.HttpResponseParser(self)
        self._reply: asyncio.Future[tuple[int, bytes]] | None = None
        self._lost = False
        self._expect_response()

    def _expect_response(self) -> None:
        self._body: list[bytes] = []
        self._complete = False
        self._framed = False
        self._until_eof = False

    @property
    def usable(self) -> bool:
        return not self._lost and self.transport is not None and not self.transport.is_closing()

    def send(self, data: bytes) -> asyncio.Future[tuple[int, bytes]]:
        assert self.transport is not None
        self._reply = asyncio.get_running_loop().create_future()
        self._expect_response()
        self.transport.write(data)
        return self._reply

    def close(self) -> None:
        self._lost = True
        if self.transport is not None:
            self.transport.close()

    # -- asyncio.Protocol ---------------------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]

    def data_received(self, data: bytes) -> None:
        try:
            self._parser.feed_data(data)
        except httptools.HttpParserError as error:
            self._fail(HttpConnectionError(f"invalid HTTP response: {error}"))
            self.close()

    def connection_lost(self, exc: Exception | None) -> None:
        self._lost = True
        if self._until_eof and not self._complete:  # a body delimited by the close itself
            self.on_message_complete()
        self._fail(HttpConnectionError(f"connection closed before the response ({exc})"))

    def _fail(self, error: Exception) -> None:
        if self._reply is not None and not self._reply.done():
            self._reply.set_exception(error)

    # -- httptools callbacks --------------------------------------------------------------------

    def on_header(self, name: bytes, value: bytes) -> None:
        if not self._framed and name.lower() in (b"content-length", b"transfer-encoding"):
            self._framed = True

    def on_headers_complete(self) -> None:
        # Neither a length nor chunks: the body runs to the end of the connection.
        self._until_eof = not self._framed

    def on_body(self, body: bytes) -> None:
        self._body.append(body)

    def on_message_complete(self) -> None:
        self._complete = True
        if not self._parser.should_keep_alive():
            self._lost = True  # the server closes it after this response
        if self._reply is not None and not self._reply.done():
            self._reply.set_result((self._parser.get_status_code(), b"".join(self._body)))


class HttpClient:
    """Requests to one base URL over a pool of keep-alive connections."""

    def __init__(
        self, base_url: str, ssl_context: ssl.SSLContext | None = None, timeout: float = 90.0
    ) -> None:
        parts = urlsplit(base_url)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise ValueError(f"router URL {base_url!r}: expected http(s)://host[:port]")
        self.host = parts.hostname
        self.port = parts.port or (443 if parts.scheme == "https" else 80)
        self.prefix = parts.path.rstrip("/")
        self.ssl = (
            (ssl_context or ssl.create_default_context()) if parts.scheme == "https" else None
        )
        self.timeout = timeout
        self._host_header = parts.netloc.rsplit("@", 1)[-1]  # as written: [::1]:8080 stays
        self._idle: list[_Connection] = []
        self._closed = False

    async def request(
        self,
        method: str,
        path: str,
        headers: dict[str, str],
        body: bytes | None = None,
        params: dict[str, str] | None = None,
    ) -> tuple[int, bytes]:
        """Send one request; its status and body. Raises HttpConnectionError, OSError or
        TimeoutError when no complete response arrived."""
        # Path parameters come from users (armyctl get <id>): quoted, they stay one target.
        target = quote(self.prefix + path, safe="/:") + ("?" + urlencode(params) if params else "")
        head = [f"{method} {target} HTTP/1.1\r\nHost: {self._host_header}\r\n"]
        for name, value in headers.items():
            if "\n" in value or "\r" in value:
                raise ValueError(f"header {name} contains a line break")
            head.append(f"{name}: {value}\r\n")
        head.append(f"Content-Length: {len(body)}\r\n\r\n" if body is not None else "\r\n")
        data = "".join(head).encode("latin-1") + (body or b"")
        async with asyncio.timeout(self.timeout):
            connection = await self._connection()
            try:
                status, payload = await connection.send(data)
            except BaseException:
                connection.close()  # timed out or cancelled mid-exchange: unusable
                raise
        self._release(connection)
        return status, payload

    async def _connection(self) -> _Connection:
        if self._closed:
            raise HttpConnectionError("the client is closed")
        now = time.monotonic()
        while self._idle:
            connection = self._idle.pop()
            if connection.usable and now - connection.idle_since < IDLE_SECONDS:
                return connection
            connection.close()
        transport, protocol = await asyncio.get_running_loop().create_connection(
            _Connection,
            self.host,
            self.port,
            ssl=self.ssl,
            server_hostname=self.host if self.ssl else None,
        )
        # uvloop may return before it has called connection_made.
        protocol.transport = transport
        return protocol

    def _release(self, connection: _Connection) -> None:
        if self._closed or not connection.usable:
            connection.close()
            return
        connection.idle_since = time.monotonic()
        self._idle.append(connection)

    async def close(self) -> None:
        self._closed = True
        for connection in self._idle:
            connection.close()
        self._idle.clear()
        await asyncio.sleep(0)  # let the transports close
