"""The router API's HTTP client against real sockets: a scripted server on loopback
answers each request the way a test asks (lengths, chunks, closes, silence, TLS)."""

from __future__ import annotations

import asyncio
import ssl
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from agentarmy.devcluster.pki import CertificateAuthority
from agentarmy.router.http import HttpClient, HttpConnectionError

Reply = Callable[[bytes], bytes | None]
"""Given the request head (and body), the raw bytes to answer; None: hang up without a word."""


def ok(body: bytes, extra: str = "") -> bytes:
    return f"HTTP/1.1 200 OK\r\nContent-Length: {len(body)}\r\n{extra}\r\n".encode() + body


@dataclass
class Server:
    reply: Reply = lambda request: ok(b"{}")
    requests: list[bytes] = field(default_factory=list)
    connections: int = 0
    port: int = 0
    close_after_reply: bool = False

    async def handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.connections += 1
        try:
            while True:
                head = await reader.readuntil(b"\r\n\r\n")
                length = 0
                for line in head.split(b"\r\n"):
                    if line.lower().startswith(b"content-length:"):
                        length = int(line.split(b":")[1])
                request = head + await reader.readexactly(length)
                self.requests.append(request)
                answer = self.reply(request)
                if answer is None:
                    break
                writer.write(answer)
                await writer.drain()
                if self.close_after_reply or b"\r\nConnection: close\r\n" in answer:
                    break
        except (asyncio.IncompleteReadError, ConnectionError):
            pass
        finally:
            writer.close()


@pytest.fixture
async def server() -> AsyncIterator[Server]:
    state = Server()
    listener = await asyncio.start_server(state.handle, "127.0.0.1", 0)
    state.port = listener.sockets[0].getsockname()[1]
    async with listener:
        yield state


async def test_requests_share_one_keep_alive_connection(server: Server) -> None:
    client = HttpClient(f"http://127.0.0.1:{server.port}/api/")
    try:
        for index in range(3):
            status, body = await client.request(
                "POST", "/v1/tasks", {"Authorization": "Bearer t"}, b'{"n":%d}' % index
            )
            assert (status, body) == (200, b"{}")
        status, _ = await client.request("GET", "/v1/tasks", {}, params={"fleet": "a b&c"})
    finally:
        await client.close()
    assert server.connections == 1
    first = server.requests[0]
    assert first.startswith(b"POST /api/v1/tasks HTTP/1.1\r\n")
    assert b"\r\nHost: 127.0.0.1:%d\r\n" % server.port in first
    assert b"\r\nAuthorization: Bearer t\r\n" in first
    assert first.endswith(b'Content-Length: 7\r\n\r\n{"n":0}')
    assert server.requests[-1].startswith(b"GET /api/v1/tasks?fleet=a+b%26c HTTP/1.1\r\n")


async def test_chunked_and_close_delimited_bodies_arrive_whole(server: Server) -> None:
    chunked = b"HTTP/1.1 201 Created\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabc\r\n2\r\nde\r\n0\r\n\r\n"
    replies = iter([chunked, b"HTTP/1.1 200 OK\r\nConnection: close\r\n\r\nuntil the end"])
    server.reply = lambda request: next(replies)
    client = HttpClient(f"http://127.0.0.1:{server.port}")
    try:
        assert await client.request("GET", "/a", {}) == (201, b"abcde")
        assert await client.request("GET", "/b", {}) == (200, b"until the end")
        # That answer ended its connection: the next request opens another.
        server.reply = lambda request: ok(b"again")
        assert await client.request("GET", "/c", {}) == (200, b"again")
    finally:
        await client.close()
    assert server.connections == 2


async def test_a_connection_the_server_closed_is_not_reused(server: Server) -> None:
    server.close_after_reply = True  # closes without saying so in a header
    client = HttpClient(f"http://127.0.0.1:{server.port}")
    try:
        assert (await client.request("GET", "/a", {}))[0] == 200
        await asyncio.sleep(0.05)  # its FIN arrives
        assert (await client.request("GET", "/b", {}))[0] == 200
    finally:
        await client.close()
    assert server.connections == 2


async def test_a_hang_up_mid_request_is_a_connection_error(server: Server) -> None:
    server.reply = lambda request: None
    client = HttpClient(f"http://127.0.0.1:{server.port}")
    try:
        with pytest.raises(HttpConnectionError, match="closed before the response"):
            await client.request("POST", "/v1/tasks", {}, b"{}")
    finally:
        await client.close()


async def test_a_silent_server_times_out_and_the_connection_is_dropped(server: Server) -> None:
    server.reply = lambda request: b""  # reads the request, never answers
    client = HttpClient(f"http://127.0.0.1:{server.port}", timeout=0.2)
    try:
        with pytest.raises(TimeoutError):
            await client.request("GET", "/slow", {})
        server.reply = lambda request: ok(b"fresh")
        assert await client.request("GET", "/next", {}) == (200, b"fresh")
    finally:
        await client.close()
    assert server.connections == 2


async def test_garbage_is_a_connection_error_not_a_crash(server: Server) -> None:
    server.reply = lambda request: b"SMTP ready\r\n\r\n"
    client = HttpClient(f"http://127.0.0.1:{server.port}")
    try:
        with pytest.raises(HttpConnectionError, match="invalid HTTP response"):
            await client.request("GET", "/", {})
    finally:
        await client.close()


async def test_nobody_listening_is_an_os_error() -> None:
    listener = await asyncio.start_server(lambda r, w: None, "127.0.0.1", 0)
    port = listener.sockets[0].getsockname()[1]
    listener.close()
    await listener.wait_closed()
    client = HttpClient(f"http://127.0.0.1:{port}")
    with pytest.raises(OSError):
        await client.request("GET", "/", {})


def test_a_bad_base_url_is_refused() -> None:
    with pytest.raises(ValueError, match="expected http"):
        HttpClient("127.0.0.1:8080")


async def test_tls_checks_the_router_certificate_against_its_ca(
    server: Server, tmp_path: Path
) -> None:
    authority = CertificateAuthority(tmp_path)
    pair = authority.issue("router", "router", ip_addresses=("127.0.0.1",), server=True)
    serving = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    serving.load_cert_chain(pair.cert, pair.key)
    listener = await asyncio.start_server(server.handle, "127.0.0.1", 0, ssl=serving)
    port = listener.sockets[0].getsockname()[1]
    async with listener:
        trusted = HttpClient(
            f"https://127.0.0.1:{port}", ssl.create_default_context(cafile=authority.cert_file)
        )
        try:
            assert await trusted.request("GET", "/healthz", {}) == (200, b"{}")
        finally:
            await trusted.close()
        stranger = HttpClient(f"https://127.0.0.1:{port}")  # the system CAs do not know it
        try:
            with pytest.raises(ssl.SSLCertVerificationError):
                await stranger.request("GET", "/healthz", {})
        finally:
            await stranger.close()


async def test_user_text_cannot_break_out_of_the_request_line_or_a_header(
    server: Server,
) -> None:
    client = HttpClient(f"http://127.0.0.1:{server.port}")
    try:
        await client.request("GET", "/v1/tasks/a b\r\nX-Evil: 1", {})
        with pytest.raises(ValueError, match="Authorization contains a line break"):
            await client.request("GET", "/", {"Authorization": "Bearer t\r\nX-Evil: 1"})
    finally:
        await client.close()
    (request,) = server.requests
    assert request.startswith(b"GET /v1/tasks/a%20b%0D%0AX-Evil:%201 HTTP/1.1\r\n")
    assert b"X-Evil" not in request.split(b"\r\n", 1)[1]
