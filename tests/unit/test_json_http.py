"""Token mode's HTTP client (`rollout.tokenmode.transport.JsonHttp`), sync and async, against raw servers.

Each case serves scripted HTTP/1.1 bytes from an asyncio server on its own
thread, so the framing a real server may send (chunked bodies, `Connection:
close`, a body delimited by closing, an idle connection the server dropped)
and the misbehaviour a broken one may send (a drip, an endless body, a cut
reply) reach both twins the same way, without depending on one server's habits.
"""

from __future__ import annotations

import asyncio
import json
import socket
import threading
from collections.abc import Awaitable, Callable, Iterator
from typing import Any

import httpx2
import openai
import pytest

from rollout.tokenmode.transport import (
    CallOptions,
    HttpConnectionError,
    HttpError,
    HttpReplyTooLarge,
    HttpTimeoutError,
    JsonHttp,
)

Handler = Callable[[asyncio.StreamReader, asyncio.StreamWriter], Awaitable[None]]
MODES = ["sync", "async"]


async def _request(reader: asyncio.StreamReader) -> tuple[str, dict[str, str], bytes]:
    """(request line, headers, body) of one request; ('', {}, b'') when the client went away."""
    try:
        head = await reader.readuntil(b"\r\n\r\n")
    except (asyncio.IncompleteReadError, ConnectionError):
        return "", {}, b""
    lines = head.decode().split("\r\n")
    headers = {k.strip().lower(): v.strip() for k, _, v in (line.partition(":") for line in lines[1:] if line)}
    length = int(headers.get("content-length", 0))
    return lines[0], headers, await reader.readexactly(length)


def _reply(body: bytes, extra: str = "") -> bytes:
    return f"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: {len(body)}\r\n{extra}\r\n".encode() + body


@pytest.fixture
def serve() -> Iterator[Callable[[Handler], str]]:
    """Start a raw asyncio server on 127.0.0.1 in a thread of its own; its URL."""
    loop = asyncio.new_event_loop()
    thread = threading.Thread(target=loop.run_forever, daemon=True)
    thread.start()
    servers: list[asyncio.Server] = []

    def start(handler: Handler) -> str:
        server = asyncio.run_coroutine_threadsafe(asyncio.start_server(handler, "127.0.0.1", 0), loop).result(10)
        servers.append(server)
        return f"http://127.0.0.1:{server.sockets[0].getsockname()[1]}"

    yield start

    async def close_all() -> None:
        # Closed on the loop's own thread: Server.close() from another thread races the
        # loop detaching a finished connection (both wake the waiters; the second one fails).
        for server in servers:
            server.close()

    asyncio.run_coroutine_threadsafe(close_all(), loop).result(10)
    loop.call_soon_threadsafe(loop.stop)
    thread.join(10)


def call(mode: str, http: JsonHttp, method: str, path: str, body: Any = None, options: CallOptions | None = None) -> Any:
    """One request through the sync or the async twin (each async call on a fresh loop,
    so a session must not outlive the loop it was made on)."""
    extra = () if options is None else (options,)
    if mode == "sync":
        return http.request(method, path, body, *extra)

    async def run() -> Any:
        try:
            return await http.arequest(method, path, body, *extra)
        finally:
            await http.aclose()

    return asyncio.run(run())


def many(mode: str, http: JsonHttp, requests: list[tuple[str, str, Any]], pause: float = 0.0) -> list[Any]:
    """Several requests on one connection pool (one loop for the async twin)."""
    if mode == "sync":
        out = []
        for method, path, body in requests:
            out.append(http.request(method, path, body))
            if pause:
                threading.Event().wait(pause)
        return out

    async def run() -> list[Any]:
        out = []
        try:
            for method, path, body in requests:
                out.append(await http.arequest(method, path, body))
                await asyncio.sleep(pause)
        finally:
            await http.aclose()
        return out

    return asyncio.run(run())


@pytest.mark.parametrize("mode", MODES)
def test_keep_alive_reuses_one_connection_and_sends_headers_and_query(mode: str, serve: Any) -> None:
    connections: list[int] = []
    seen: list[tuple[str, dict[str, str]]] = []

    async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        connections.append(1)
        while True:
            line, headers, body = await _request(reader)
            if not line:
                break
            seen.append((line, headers))
            writer.write(_reply(json.dumps({"echo": json.loads(body) if body else None}).encode()))
        writer.close()

    url = serve(handler)
    http = JsonHttp(url, {"Authorization": "Bearer k", "X-Gateway": "g"}, 2.0, query={"api-version": "7"})
    replies = many(mode, http, [("POST", "/tokenize", {"i": i}) for i in range(3)] + [("GET", "/v1/models", None)])
    http.close()
    assert replies == [{"echo": {"i": i}} for i in range(3)] + [{"echo": None}]
    assert len(connections) == 1
    assert [line for line, _ in seen] == ["POST /tokenize?api-version=7 HTTP/1.1"] * 3 + [
        "GET /v1/models?api-version=7 HTTP/1.1"
    ]
    assert all(h["authorization"] == "Bearer k" and h["x-gateway"] == "g" for _, h in seen)


@pytest.mark.parametrize("mode", MODES)
def test_a_call_s_own_headers_and_query_win_over_the_client_s(mode: str, serve: Any) -> None:
    seen: list[tuple[str, dict[str, str]]] = []

    async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        line, headers, _ = await _request(reader)
        seen.append((line, headers))
        writer.write(_reply(b"{}", "Connection: close\r\n"))
        await writer.drain()
        writer.close()

    url = serve(handler)
    http = JsonHttp(url, {"Authorization": "Bearer k", "X-Gateway": "g"}, 2.0, query={"a": "1"})
    options = CallOptions.of({"extra_headers": {"x-gateway": "call", "X-Trace": "t"}, "extra_query": {"b": "2"}})
    assert call(mode, http, "POST", "/x", {}, options) == {}
    http.close()
    line, headers = seen[0]
    assert line == "POST /x?a=1&b=2 HTTP/1.1"
    assert headers["x-gateway"] == "call" and headers["x-trace"] == "t" and headers["authorization"] == "Bearer k"


@pytest.mark.parametrize("mode", MODES)
def test_chunked_close_delimited_and_connection_close_replies(mode: str, serve: Any) -> None:
    replies = [
        b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n4\r\n{\"a\"\r\n3;x=1\r\n: 1\r\n1\r\n}\r\n0\r\nT: v\r\n\r\n",
        _reply(b'{"b": 2}', "Connection: close\r\n"),
        b"HTTP/1.1 100 Continue\r\n\r\n" + _reply(b'{"c": 3}'),
        b'HTTP/1.0 200 OK\r\n\r\n{"d": 4}',
    ]

    async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        while replies:
            line, _, _ = await _request(reader)
            if not line:
                break
            reply = replies.pop(0)
            writer.write(reply)
            if b"close" in reply or reply.startswith(b"HTTP/1.0"):
                break
        await writer.drain()
        writer.close()

    http = JsonHttp(serve(handler), {"Authorization": "Bearer k"}, 2.0)
    out = many(mode, http, [("POST", f"/{p}", {}) for p in "abcd"])
    http.close()
    assert out == [{"a": 1}, {"b": 2}, {"c": 3}, {"d": 4}]


@pytest.mark.parametrize("mode", MODES)
def test_a_connection_the_server_dropped_while_idle_is_replaced(mode: str, serve: Any) -> None:
    served = []

    async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        line, _, _ = await _request(reader)  # one request per connection, then hang up silently
        if line:
            served.append(line)
            writer.write(_reply(b"{}"))
            await writer.drain()
        writer.close()

    http = JsonHttp(serve(handler), {"Authorization": "Bearer k"}, 2.0)
    assert many(mode, http, [("POST", "/x", {})] * 5, pause=0.05) == [{}] * 5
    assert many(mode, http, [("POST", "/x", {})] * 3) == [{}] * 3  # found closed on sending
    http.close()
    assert len(served) == 8


@pytest.mark.parametrize("mode", MODES)
def test_errors_keep_their_types(mode: str, serve: Any) -> None:
    async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        line, _, _ = await _request(reader)
        if "missing" in line:
            writer.write(b"HTTP/1.1 404 Not Found\r\nContent-Length: 22\r\n\r\n{\"error\": \"not found\"}")
        elif "cut" in line:  # promises 50 bytes, sends 4, hangs up (http.client: IncompleteRead)
            writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: 50\r\n\r\n{\"a\"")
        elif "garbage" in line:
            writer.write(b"NOT HTTP AT ALL\r\n\r\n")
        elif "html" in line:
            writer.write(b"HTTP/1.1 502 Bad Gateway\r\nContent-Length: 6\r\n\r\n<html>")
        await writer.drain()
        writer.close()

    http = JsonHttp(serve(handler), {"Authorization": "Bearer k"}, 2.0)
    with pytest.raises(HttpError) as missing:
        call(mode, http, "POST", "/missing", {})
    assert missing.value.status == 404 and missing.value.unavailable
    with pytest.raises(HttpConnectionError):
        call(mode, http, "POST", "/cut", {})
    with pytest.raises(HttpConnectionError):
        call(mode, http, "POST", "/garbage", {})
    with pytest.raises(HttpError) as html:
        call(mode, http, "POST", "/html", {})
    assert html.value.status == 502 and not html.value.unavailable
    http.close()

    with socket.socket() as s:  # a port nobody listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    with pytest.raises(HttpConnectionError):
        call(mode, JsonHttp(f"http://127.0.0.1:{port}"), "POST", "/x", {})


def _slow(seconds: float) -> Handler:
    async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        while True:
            line, _, _ = await _request(reader)
            if not line:
                break
            await asyncio.sleep(seconds)
            writer.write(_reply(b'{"ok": true}'))
            await writer.drain()
        writer.close()

    return handler


@pytest.mark.parametrize("mode", MODES)
def test_the_client_timeout_and_a_call_s_own_timeout_are_honoured(mode: str, serve: Any) -> None:
    url = serve(_slow(0.6))
    short = JsonHttp(url, {}, 0.2)
    with pytest.raises(HttpTimeoutError):
        call(mode, short, "POST", "/x", {})
    assert call(mode, short, "POST", "/x", {}, CallOptions.of({"timeout": 10.0})) == {"ok": True}
    long = JsonHttp(url, {}, httpx2.Timeout(10.0, connect=5.0))
    assert call(mode, long, "POST", "/x", {}) == {"ok": True}
    with pytest.raises(HttpTimeoutError):
        call(mode, long, "POST", "/x", {}, CallOptions.of({"timeout": httpx2.Timeout(0.2, connect=1.0)}))
    short.close()
    long.close()


def test_the_sdk_default_timeout_is_600_s_not_60() -> None:
    from rollout.tokenmode import TokenServers

    servers = TokenServers()
    plain = servers.get(openai.OpenAI(base_url="http://127.0.0.1:9/v1", api_key="k"))
    assert (plain.http.timeouts.connect, plain.http.timeouts.total) == (5.0, 600.0)
    own = servers.get(openai.AsyncOpenAI(base_url="http://127.0.0.1:9/v1", api_key="k", timeout=42.0))
    assert own.http.timeout == 42.0


def _drip(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> Awaitable[None]:
    async def run() -> None:
        await _request(reader)
        writer.write(b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: 1000\r\n\r\n")
        for _ in range(60):  # a byte every 0.1 s for 6 s, then hang up
            writer.write(b" ")
            try:
                await writer.drain()
            except ConnectionError:
                return
            await asyncio.sleep(0.1)
        writer.close()

    return run()


@pytest.mark.parametrize("mode", MODES)
def test_a_slow_drip_hits_the_overall_deadline(mode: str, serve: Any) -> None:
    """Each byte arrives well within any per-read timeout; only an overall deadline stops it."""
    http = JsonHttp(serve(_drip), {}, 0.8)
    with pytest.raises(HttpTimeoutError):
        call(mode, http, "POST", "/x", {})
    http.close()


def _endless(chunked: bool) -> Handler:
    async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await _request(reader)
        head = "Transfer-Encoding: chunked\r\n" if chunked else "Connection: close\r\n"
        writer.write(f"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\n{head}\r\n".encode())
        piece = b"[" + b"1," * 32767 + b"1"  # 64 KiB
        frame = f"{len(piece):x}\r\n".encode() + piece + b"\r\n" if chunked else piece
        try:
            for _ in range(160):  # 10 MiB, then stop (a client without a cap reads it all)
                writer.write(frame)
                await writer.drain()
        except ConnectionError:
            return
        writer.close()

    return handler


@pytest.mark.parametrize("chunked", [True, False], ids=["chunked", "close-delimited"])
@pytest.mark.parametrize("mode", MODES)
def test_an_endless_body_hits_the_size_cap(mode: str, chunked: bool, serve: Any) -> None:
    http = JsonHttp(serve(_endless(chunked)), {}, 30.0)
    http.max_reply_bytes = 2**20
    with pytest.raises(HttpReplyTooLarge):
        call(mode, http, "POST", "/x", {})
    http.close()


@pytest.mark.parametrize("mode", MODES)
def test_a_declared_length_over_the_cap_is_refused_before_reading(mode: str, serve: Any) -> None:
    async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await _request(reader)
        writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: 999999999\r\n\r\n{")
        await writer.drain()
        await asyncio.sleep(1)
        writer.close()

    http = JsonHttp(serve(handler), {}, 30.0)
    http.max_reply_bytes = 2**20
    with pytest.raises(HttpReplyTooLarge):
        call(mode, http, "POST", "/x", {})
    http.close()
