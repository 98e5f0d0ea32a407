"""Token mode's own HTTP client (`rollout.tokenmode.transport.JsonHttp`), async side, against raw servers.

Each case serves scripted HTTP/1.1 bytes from an asyncio server, so the
framing cases a real server may send (chunked bodies, `Connection: close`,
a body delimited by closing, an idle connection the server dropped) are
exercised without depending on one server's habits.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Awaitable, Callable

import pytest

from rollout.tokenmode.transport import HttpConnectionError, HttpError, HttpTimeoutError, JsonHttp

Handler = Callable[[asyncio.StreamReader, asyncio.StreamWriter], Awaitable[None]]


async def _request(reader: asyncio.StreamReader) -> tuple[str, bytes]:
    """(request line, body) of one request; ('', b'') when the client went away."""
    try:
        head = await reader.readuntil(b"\r\n\r\n")
    except (asyncio.IncompleteReadError, ConnectionError):
        return "", b""
    lines = head.decode().split("\r\n")
    length = next(int(v) for k, _, v in (line.partition(":") for line in lines) if k.lower() == "content-length")
    return lines[0], await reader.readexactly(length)


def _reply(body: bytes, extra: str = "") -> bytes:
    return f"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: {len(body)}\r\n{extra}\r\n".encode() + body


async def _with_server(handler: Handler, test: Callable[[JsonHttp], Awaitable[None]]) -> None:
    server = await asyncio.start_server(handler, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    http = JsonHttp(f"http://127.0.0.1:{port}", {"Authorization": "Bearer k"}, timeout=2.0)
    try:
        await test(http)
    finally:
        await http.aclose()
        server.close()
        await server.wait_closed()


def test_keep_alive_reuses_one_connection_and_sends_headers() -> None:
    connections: list[int] = []
    seen: list[tuple[str, bytes]] = []

    async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        connections.append(1)
        while True:
            line, body = await _request(reader)
            if not line:
                break
            seen.append((line, body))
            writer.write(_reply(json.dumps({"echo": json.loads(body) if body else None}).encode()))
        writer.close()

    async def test(http: JsonHttp) -> None:
        for i in range(3):
            assert await http.apost("/tokenize", {"i": i}) == {"echo": {"i": i}}
        assert await http.arequest("GET", "/v1/models") == {"echo": None}

    asyncio.run(_with_server(handler, test))
    assert len(connections) == 1
    assert [line for line, _ in seen] == ["POST /tokenize HTTP/1.1"] * 3 + ["GET /v1/models HTTP/1.1"]


def test_chunked_close_delimited_and_connection_close_replies() -> None:
    replies = [
        b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n4\r\n{\"a\"\r\n3;x=1\r\n: 1\r\n1\r\n}\r\n0\r\nT: v\r\n\r\n",
        _reply(b'{"b": 2}', "Connection: close\r\n"),
        b"HTTP/1.1 100 Continue\r\n\r\n" + _reply(b'{"c": 3}'),
        b'HTTP/1.0 200 OK\r\n\r\n{"d": 4}',
    ]

    async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        while replies:
            line, _ = await _request(reader)
            if not line:
                break
            reply = replies.pop(0)
            writer.write(reply)
            if b"close" in reply or reply.startswith(b"HTTP/1.0"):
                break
        await writer.drain()
        writer.close()

    async def test(http: JsonHttp) -> None:
        assert await http.apost("/a", {}) == {"a": 1}
        assert await http.apost("/b", {}) == {"b": 2}
        assert await http.apost("/c", {}) == {"c": 3}
        assert await http.apost("/d", {}) == {"d": 4}

    asyncio.run(_with_server(handler, test))


def test_a_connection_the_server_dropped_while_idle_is_replaced() -> None:
    served = []

    async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        line, _ = await _request(reader)  # one request per connection, then hang up silently
        if line:
            served.append(line)
            writer.write(_reply(b"{}"))
            await writer.drain()
        writer.close()

    async def test(http: JsonHttp) -> None:
        for pause in (0.05, 0.05, 0, 0, 0):  # seen closed while idle, or found closed on sending
            assert await http.apost("/x", {}) == {}
            await asyncio.sleep(pause)

    asyncio.run(_with_server(handler, test))
    assert len(served) == 5


def test_errors_keep_their_types() -> None:
    async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        line, _ = await _request(reader)
        if "slow" in line:
            await asyncio.sleep(5)
        elif "missing" in line:
            writer.write(b"HTTP/1.1 404 Not Found\r\nContent-Length: 22\r\n\r\n{\"error\": \"not found\"}")
        elif "cut" in line:
            writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: 50\r\n\r\n{\"a\"")
            await writer.drain()
        writer.close()

    async def test(http: JsonHttp) -> None:
        with pytest.raises(HttpError) as missing:
            await http.apost("/missing", {})
        assert missing.value.status == 404 and missing.value.unavailable
        with pytest.raises(HttpConnectionError):
            await http.apost("/cut", {})
        http.timeout = 0.2
        with pytest.raises(HttpTimeoutError):
            await http.apost("/slow", {})

    asyncio.run(_with_server(handler, test))

    async def refused() -> None:
        server = await asyncio.start_server(handler, "127.0.0.1", 0)
        port = server.sockets[0].getsockname()[1]
        server.close()
        await server.wait_closed()
        with pytest.raises(HttpConnectionError):
            await JsonHttp(f"http://127.0.0.1:{port}").apost("/x", {})

    asyncio.run(refused())
