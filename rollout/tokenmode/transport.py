"""JSON over HTTP for token mode: a sync client on the standard library and its async twin.

Token mode sends its requests itself instead of through the openai SDK: the
SDK's request pipeline costs 1.5-2 ms of client CPU per call, several times
what a plain keep-alive POST costs, and token mode makes two or three small
requests per turn. The sync side keeps one `http.client` connection per
thread and host; the async side a pool of keep-alive HTTP/1.1 connections per
event loop (a connection is bound to the loop it was opened on), on asyncio
streams. An aiohttp `ClientSession` did the same job first; its per-request
machinery was most of a token-mode call's client CPU, and dropping it took a
call from about 1.1 to 0.7 ms on a 2-core box (`benchmarks/bench_tokens.py`).

Not supported: HTTP proxies (`HTTP(S)_PROXY`, which the SDK honours) and
HTTP/2. A server reachable only through a proxy fails token mode's probe, so
its calls go as messages through the SDK, each with that fallback reason.
"""

from __future__ import annotations

import asyncio
import contextlib
import http.client
import json
import ssl
import sys
import threading
import urllib.parse
import weakref
from collections.abc import AsyncIterator
from typing import Any

from rollout.errors import RolloutError


class HttpError(RolloutError):
    """A token-mode request failed: a non-2xx reply, a non-JSON body, or no connection."""

    def __init__(self, message: str, status: int | None = None) -> None:
        super().__init__(message)
        self.status = status

    @property
    def status_code(self) -> int | None:
        """The HTTP status, under the name retry policies look for (`compat.retry`)."""
        return self.status

    @property
    def unavailable(self) -> bool:
        """The server does not offer this route (so the caller falls back, not fails)."""
        return self.status in (403, 404, 405, 501)


class HttpConnectionError(HttpError, ConnectionError):
    """No connection, or it dropped: transient, retried like the SDK's APIConnectionError."""


class HttpTimeoutError(HttpError, TimeoutError):
    """The server did not answer within the client's timeout."""


def _decode(status: int, raw: bytes, what: str) -> Any:
    try:
        data = json.loads(raw) if raw else None
    except ValueError:
        raise HttpError(f"{what}: HTTP {status}, body is not JSON: {raw[:200]!r}", status) from None
    if status >= 400:
        detail = data.get("error", data) if isinstance(data, dict) else data
        raise HttpError(f"{what}: HTTP {status}: {str(detail)[:500]}", status)
    return data


class JsonHttp:
    """POST/GET JSON against one server root (`http://host:port`), sync or async."""

    def __init__(self, root: str, headers: dict[str, str] | None = None, timeout: float = 60.0) -> None:
        parts = urllib.parse.urlsplit(root)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise ValueError(f"token mode needs an http(s) server URL, got {root!r}")
        self.root = f"{parts.scheme}://{parts.netloc}{parts.path.rstrip('/')}"
        self._https = parts.scheme == "https"
        self._host = parts.hostname
        self._port = parts.port
        self._prefix = parts.path.rstrip("/")
        self._netloc = parts.netloc.rsplit("@", 1)[-1]
        self.headers = {"Content-Type": "application/json", **(headers or {})}
        self.timeout = timeout
        self._local = threading.local()
        self._sessions: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, _Pool] = weakref.WeakKeyDictionary()

    # --- sync -----------------------------------------------------------------------

    def _connection(self) -> http.client.HTTPConnection:
        conn = getattr(self._local, "conn", None)
        if conn is None:
            cls = http.client.HTTPSConnection if self._https else http.client.HTTPConnection
            conn = cls(self._host, self._port, timeout=self.timeout)
            self._local.conn = conn
        return conn

    def request(self, method: str, path: str, body: Any = None) -> Any:
        data = None if body is None else json.dumps(body).encode()
        for attempt in (0, 1):  # a kept-alive connection the server closed: reconnect once
            conn = self._connection()
            try:
                conn.request(method, self._prefix + path, body=data, headers=self.headers)
                resp = conn.getresponse()
                raw = resp.read()
                return _decode(resp.status, raw, f"{method} {path}")
            except (http.client.RemoteDisconnected, BrokenPipeError, ConnectionResetError) as exc:
                conn.close()
                self._local.conn = None
                if attempt:
                    raise HttpConnectionError(f"{method} {path}: connection lost: {exc}") from exc
            except TimeoutError as exc:
                conn.close()
                self._local.conn = None
                raise HttpTimeoutError(f"{method} {path}: no answer in {self.timeout} s") from exc
            except OSError as exc:
                conn.close()
                self._local.conn = None
                raise HttpConnectionError(f"{method} {path}: {type(exc).__name__}: {exc}") from exc
        raise AssertionError("unreachable")

    def post(self, path: str, body: Any) -> Any:
        return self.request("POST", path, body)

    # --- async (the twin) ---------------------------------------------------------

    def _pool(self) -> _Pool:
        loop = asyncio.get_running_loop()
        pool = self._sessions.get(loop)
        if pool is None:
            pool = self._sessions[loop] = _Pool(self)
        return pool

    async def arequest(self, method: str, path: str, body: Any = None) -> Any:
        data = None if body is None else json.dumps(body).encode()
        head = self._head(method, path, data)
        try:
            async with _deadline(self.timeout):
                status, raw = await self._pool().exchange(head, data)
        except (asyncio.TimeoutError, TimeoutError) as exc:
            raise HttpTimeoutError(f"{method} {path}: no answer in {self.timeout} s") from exc
        except (OSError, EOFError, ValueError, asyncio.LimitOverrunError) as exc:
            raise HttpConnectionError(f"{method} {path}: {type(exc).__name__}: {exc}") from exc
        return _decode(status, raw, f"{method} {path}")

    def _head(self, method: str, path: str, data: bytes | None) -> bytes:
        lines = [f"{method} {self._prefix}{path} HTTP/1.1", f"Host: {self._netloc}"]
        lines += [f"{k}: {v}" for k, v in self.headers.items()]
        lines.append(f"Content-Length: {0 if data is None else len(data)}")
        return ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1")

    async def apost(self, path: str, body: Any) -> Any:
        return await self.arequest("POST", path, body)

    # --- lifecycle ------------------------------------------------------------------

    def close(self) -> None:
        conn = getattr(self._local, "conn", None)
        if conn is not None:
            conn.close()
            self._local.conn = None

    async def aclose(self) -> None:
        """Close this loop's connections (call from the loop that used them)."""
        self.close()
        pool = self._sessions.pop(asyncio.get_running_loop(), None)
        if pool is not None:
            await pool.close()


if sys.version_info >= (3, 11):
    _deadline = asyncio.timeout
else:  # pragma: no cover - Python 3.10

    @contextlib.asynccontextmanager
    async def _deadline(seconds: float) -> AsyncIterator[None]:
        task = asyncio.current_task()
        assert task is not None
        fired = False

        def fire() -> None:
            nonlocal fired
            fired = True
            task.cancel()

        handle = asyncio.get_running_loop().call_later(seconds, fire)
        try:
            yield
        except asyncio.CancelledError:
            if fired:
                raise TimeoutError from None
            raise
        finally:
            handle.cancel()


MAX_CONNECTIONS = 100
"""Connections one pool opens at most (aiohttp's default limit); more requests wait."""

_Conn = tuple[asyncio.StreamReader, asyncio.StreamWriter]


class _Pool:
    """Keep-alive HTTP/1.1 connections to one server, for one event loop."""

    def __init__(self, http: JsonHttp) -> None:
        self._host = http._host
        self._port = http._port or (443 if http._https else 80)
        self._ssl = ssl.create_default_context() if http._https else None
        self._idle: list[_Conn] = []
        self._slots = asyncio.Semaphore(MAX_CONNECTIONS)

    async def exchange(self, head: bytes, data: bytes | None) -> tuple[int, bytes]:
        """Send one request; (status, body). Reconnects once when a kept-alive
        connection turns out closed before any of the reply arrived."""
        async with self._slots:
            while True:
                conn, reused = self._take(), True
                if conn is None:
                    conn, reused = await self._open(), False
                reader, writer = conn
                try:
                    writer.write(head + data if data else head)
                    status, raw, keep = await _read_reply(reader)
                except (ConnectionError, asyncio.IncompleteReadError) as exc:
                    writer.close()
                    if reused and (not isinstance(exc, asyncio.IncompleteReadError) or not exc.partial):
                        continue  # the server had closed it while idle: one fresh try
                    raise
                except BaseException:  # timeout, cancellation, a malformed reply: never reuse
                    writer.close()
                    raise
                if keep:
                    self._idle.append(conn)
                else:
                    writer.close()
                return status, raw

    def _take(self) -> _Conn | None:
        while self._idle:
            reader, writer = self._idle.pop()
            if not reader.at_eof() and not writer.is_closing():
                return reader, writer
            writer.close()
        return None

    async def _open(self) -> _Conn:
        return await asyncio.open_connection(self._host, self._port, ssl=self._ssl, limit=2**20)

    async def close(self) -> None:
        idle, self._idle = self._idle, []
        for _, writer in idle:
            writer.close()
        for _, writer in idle:
            with contextlib.suppress(Exception):
                await writer.wait_closed()


async def _read_reply(reader: asyncio.StreamReader) -> tuple[int, bytes, bool]:
    """(status, body, whether the connection can be reused) of one HTTP/1.1 reply."""
    while True:
        head = await reader.readuntil(b"\r\n\r\n")
        lines = head.decode("latin-1").split("\r\n")
        parts = lines[0].split(" ", 2)
        if len(parts) < 2 or not parts[0].startswith("HTTP/"):
            raise ValueError(f"not an HTTP reply: {lines[0][:100]!r}")
        status = int(parts[1])
        if not 100 <= status < 200:
            break  # 1xx: an interim reply, the real one follows
    headers: dict[str, str] = {}
    for line in lines[1:]:
        name, sep, value = line.partition(":")
        if sep:
            headers[name.strip().lower()] = value.strip()
    keep = parts[0] != "HTTP/1.0" and "close" not in headers.get("connection", "").lower()
    if "chunked" in headers.get("transfer-encoding", "").lower():
        chunks = []
        while True:
            size = int((await reader.readuntil(b"\r\n")).split(b";", 1)[0], 16)
            if size == 0:
                while (await reader.readuntil(b"\r\n")) != b"\r\n":
                    pass  # trailers
                break
            chunks.append(await reader.readexactly(size))
            await reader.readexactly(2)
        return status, b"".join(chunks), keep
    length = headers.get("content-length")
    if length is not None:
        return status, await reader.readexactly(int(length)), keep
    if status in (204, 304):
        return status, b"", keep
    return status, await reader.read(), False  # delimited by the connection closing
