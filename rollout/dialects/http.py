"""JSON over HTTP for token mode: a sync client on the standard library and its async twin.

Token mode sends its requests itself instead of through the openai SDK: the
SDK's request pipeline costs 1.5-2 ms of client CPU per call, several times
what a plain keep-alive POST costs, and token mode makes two or three small
requests per turn. The sync side keeps one `http.client` connection per
thread and host; the async side one aiohttp session per event loop (a
session is bound to the loop it was made on).
"""

from __future__ import annotations

import asyncio
import http.client
import json
import threading
import urllib.parse
import weakref
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
        self.headers = {"Content-Type": "application/json", **(headers or {})}
        self.timeout = timeout
        self._local = threading.local()
        self._sessions: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, Any] = weakref.WeakKeyDictionary()

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

    def _session(self) -> Any:
        import aiohttp

        loop = asyncio.get_running_loop()
        session = self._sessions.get(loop)
        if session is None or session.closed:
            session = aiohttp.ClientSession(
                headers=self.headers, timeout=aiohttp.ClientTimeout(total=self.timeout)
            )
            self._sessions[loop] = session
        return session

    async def arequest(self, method: str, path: str, body: Any = None) -> Any:
        import aiohttp

        data = None if body is None else json.dumps(body).encode()
        try:
            async with self._session().request(method, self.root + path, data=data) as resp:
                raw = await resp.read()
                return _decode(resp.status, raw, f"{method} {path}")
        except asyncio.TimeoutError as exc:
            raise HttpTimeoutError(f"{method} {path}: no answer in {self.timeout} s") from exc
        except (aiohttp.ClientError, OSError) as exc:
            raise HttpConnectionError(f"{method} {path}: {type(exc).__name__}: {exc}") from exc

    async def apost(self, path: str, body: Any) -> Any:
        return await self.arequest("POST", path, body)

    # --- lifecycle ------------------------------------------------------------------

    def close(self) -> None:
        conn = getattr(self._local, "conn", None)
        if conn is not None:
            conn.close()
            self._local.conn = None

    async def aclose(self) -> None:
        """Close this loop's session (call from the loop that used it)."""
        self.close()
        session = self._sessions.pop(asyncio.get_running_loop(), None)
        if session is not None:
            await session.close()
