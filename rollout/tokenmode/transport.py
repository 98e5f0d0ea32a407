"""JSON over HTTP for token mode, sent with the wrapped client's own settings.

Token mode sends its small requests (/tokenize, generate, derender) itself
rather than through the SDK's request pipeline, but each goes out as the
SDK would send it: the client's base URL, auth and default headers, default
query, timeout, and its own network settings (proxy, CA bundle, transport).

- Sync: the wrapped client's own `httpx`/`httpx2` client (`client._client`:
  its proxies, CA bundle, transport and event hooks), through its public
  `build_request` + `send(stream=True)`.
- Async: one aiohttp `ClientSession` per event loop (a session is bound to
  its loop), with the CA context and proxy that the wrapped client's
  transport uses for this URL. A client whose transport is neither httpx's
  nor the SDK's aiohttp one (a mock, a custom transport) is sent through
  its own async client instead, so nothing about its wiring is lost.

Every request has an overall deadline and a cap on the reply's size, and
raises only the typed errors below. A request that got no reply because a
kept-alive connection turned out closed is sent once more, as before. Timeouts follow the SDK: a per-call
`timeout=` wins over the client's; a float is the deadline, an
`httpx.Timeout` gives its `read` as the deadline and its `connect` for
connecting; None waits as long as the server takes. A timeout is not an
`HttpError`: a slow generation fails the call (as the SDK's
APITimeoutError would), rather than being re-sent as messages.

Measured (`benchmarks/bench_tokens.py`, 2 cores, idle, 2026-12-05): a
token-mode call costs 0.65-0.68x the client CPU of the SDK's own `create`
(0.35x with a `local_template`: one request), 1.15x through the sync
client's httpx (at load 10-13 an earlier version measured 0.35x and
0.51-0.54x: the SDK's call grows more with load than these small requests do). aiohttp's `trust_env=True` re-reads the proxy environment on
every request (+0.4 ms each), so the proxy is read once, from the client's
transport.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import json
import sys
import threading
import time
import urllib.parse
import urllib.request
import weakref
from collections.abc import AsyncIterator, Mapping
from typing import Any

from rollout.errors import RolloutError
from rollout.tokenmode.http_settings import (
    DEFAULT_TIMEOUT,
    MISSING,
    CallOptions,
    ClientNetwork,
    Timeouts,
    httpx_module,
    is_async_http,
    merge_headers,
    sdk_value,
)

MAX_REPLY_BYTES = 64 * 2**20
"""A token-mode reply larger than this is refused (`HttpReplyTooLarge`): a
32k-token generation with logprobs is a few MB."""

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


class HttpReplyTooLarge(HttpError):
    """The reply is larger than `MAX_REPLY_BYTES`: not a token route's answer."""


class HttpTimeoutError(RolloutError, TimeoutError):
    """No complete answer within the call's timeout.

    Deliberately not an `HttpError`: those make a call go as messages, and a
    generation that ran out of time must not be started again from scratch.
    """

    status: int | None = None
    unavailable = False


# --- the HTTP client ---------------------------------------------------------------------


class JsonHttp:
    """POST/GET JSON against one server root (`http://host:port[/prefix]`), sync or async.

    `headers` and `query` go with every request (the wrapped client's auth,
    default headers and default query); `client` is the wrapped SDK client's
    own http client (`httpx.Client` or `AsyncClient`), whose network
    settings the requests use; without one, the environment's proxy and the
    default CA bundle, as the SDK's own default client would.
    """

    def __init__(
        self,
        root: str,
        headers: Mapping[str, str] | None = None,
        timeout: Any = MISSING,
        *,
        query: Mapping[str, Any] | None = None,
        client: Any = None,
        max_reply_bytes: int | None = None,
    ) -> None:
        parts = urllib.parse.urlsplit(root)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise ValueError(f"token mode needs an http(s) server URL, got {root!r}")
        self.root = f"{parts.scheme}://{parts.netloc}{parts.path.rstrip('/')}"
        self.headers = merge_headers({"Content-Type": "application/json"}, headers)
        self.query = {str(k): str(v) for k, v in (query or {}).items() if sdk_value(v) is not None}
        self.timeouts = Timeouts(*DEFAULT_TIMEOUT) if timeout is MISSING else Timeouts.of(timeout)
        self.max_reply_bytes = MAX_REPLY_BYTES if max_reply_bytes is None else max_reply_bytes
        self._client = client
        self._async_client = is_async_http(client)
        self._own_sync: Any = None  # a private sync client, when the wrapped one is async (or absent)
        self._sessions: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, Any] = weakref.WeakKeyDictionary()
        self._net: ClientNetwork | None = None
        self._lock = threading.Lock()

    @property
    def timeout(self) -> float | None:
        """The deadline of a request, in seconds (None: none)."""
        return self.timeouts.total

    @timeout.setter
    def timeout(self, seconds: float | None) -> None:
        self.timeouts = Timeouts.of(seconds)

    def _prepare(
        self, method: str, path: str, body: Any, options: CallOptions | None
    ) -> tuple[str, dict[str, str], bytes | None, Timeouts]:
        url = self.root + path
        headers, query, timeouts = self.headers, self.query, self.timeouts
        if options is not None:
            if options.headers:
                headers = merge_headers(headers, options.headers)
            if options.query:
                query = {**query, **{str(k): str(v) for k, v in options.query.items() if sdk_value(v) is not None}}
            if options.timeout_given:
                timeouts = Timeouts.of(options.timeout)
        if query:
            url += ("&" if "?" in url else "?") + urllib.parse.urlencode(query)
        data = None if body is None else json.dumps(body).encode()
        if data is None:
            headers = {k: v for k, v in headers.items() if k.lower() != "content-type"}
        return url, headers, data, timeouts

    def _decode(self, status: int, raw: bytes, what: str) -> Any:
        try:
            data = json.loads(raw) if raw else None
        except ValueError:
            raise HttpError(f"{what}: HTTP {status}, body is not JSON: {raw[:200]!r}", status) from None
        if status >= 400:
            detail = data.get("error", data) if isinstance(data, dict) else data
            raise HttpError(f"{what}: HTTP {status}: {str(detail)[:500]}", status)
        return data

    def _too_large(self, what: str, status: int) -> HttpReplyTooLarge:
        return HttpReplyTooLarge(f"{what}: reply larger than {self.max_reply_bytes} bytes", status)

    # --- sync: the wrapped client's own httpx client ---------------------------------

    def _sync_client(self) -> Any:
        if self._client is not None and not self._async_client:
            return self._client
        with self._lock:
            if self._own_sync is None:
                self._own_sync = self._new_sync_client()
            return self._own_sync

    def _new_sync_client(self) -> Any:
        """A sync httpx client with the wrapped (async) client's CA context and proxy."""
        net = self._network()
        httpx = httpx_module(self._client)
        kw: dict[str, Any] = {"timeout": None}
        if net.known:
            kw["verify"] = net.ssl if net.ssl is not None else True
            kw["trust_env"] = False
            if net.proxy is not None:
                kw["proxy"] = httpx.Proxy(net.proxy, headers=net.proxy_headers)
        return httpx.Client(**kw)

    def request(self, method: str, path: str, body: Any = None, options: CallOptions | None = None) -> Any:
        """One request with blocking I/O; its JSON reply, or a typed error."""
        url, headers, data, timeouts = self._prepare(method, path, body, options)
        what = f"{method} {path}"
        client = self._sync_client()
        httpx = httpx_module(client)
        start = time.monotonic()
        for attempt in (0, 1):  # a kept-alive connection the server had closed: once more
            remaining = _remaining(timeouts.total, start)
            request = client.build_request(method, url, headers=headers, content=data,
                                           timeout=httpx.Timeout(**timeouts.phases(remaining)))  # fmt: skip
            try:
                response = client.send(request, stream=True)
            except httpx.TimeoutException as exc:
                raise self._timeout(what, timeouts) from exc
            except (httpx.RemoteProtocolError, httpx.ReadError, httpx.WriteError) as exc:
                if attempt == 0:  # no reply began: the request is sent again on a new connection
                    continue
                raise HttpConnectionError(f"{what}: {type(exc).__name__}: {exc}") from exc
            except (httpx.HTTPError, OSError, ValueError) as exc:
                raise HttpConnectionError(f"{what}: {type(exc).__name__}: {exc}") from exc
            try:
                raw = self._read_sync(response, what, timeouts, start, httpx)
            finally:
                response.close()
            return self._decode(response.status_code, raw, what)
        raise AssertionError("unreachable")

    def _read_sync(self, response: Any, what: str, timeouts: Timeouts, start: float, httpx: Any) -> bytes:
        status = response.status_code
        length = _length(response.headers.get("content-length"))
        if length is not None and length > self.max_reply_bytes:
            raise self._too_large(what, status)
        chunks: list[bytes] = []
        size = 0
        try:
            for chunk in response.iter_bytes():
                size += len(chunk)
                if size > self.max_reply_bytes:
                    raise self._too_large(what, status)
                chunks.append(chunk)
                if timeouts.total is not None and time.monotonic() - start > timeouts.total:
                    raise self._timeout(what, timeouts)
        except (HttpError, HttpTimeoutError):
            raise
        except httpx.TimeoutException as exc:
            raise self._timeout(what, timeouts) from exc
        except (httpx.HTTPError, OSError, ValueError) as exc:
            raise HttpConnectionError(f"{what}: reply cut short: {type(exc).__name__}: {exc}") from exc
        return b"".join(chunks)

    def post(self, path: str, body: Any, options: CallOptions | None = None) -> Any:
        return self.request("POST", path, body, options)

    @staticmethod
    def _timeout(what: str, timeouts: Timeouts) -> HttpTimeoutError:
        return HttpTimeoutError(f"{what}: no complete answer in {timeouts.total} s")

    # --- async: aiohttp (the twin) ---------------------------------------------------

    def _network(self) -> ClientNetwork:
        if self._net is None:
            self._net = ClientNetwork.of(self._client, self.root)
        return self._net

    async def arequest(self, method: str, path: str, body: Any = None, options: CallOptions | None = None) -> Any:
        """The async twin of `request`."""
        url, headers, data, timeouts = self._prepare(method, path, body, options)
        what = f"{method} {path}"
        net = self._network()
        try:
            async with _deadline(timeouts.total):
                if net.known or not self._async_client:
                    status, raw = await self._aiohttp(method, url, headers, data, timeouts, net, what)
                else:
                    status, raw = await self._own_async(method, url, headers, data, timeouts, what)
        except (asyncio.TimeoutError, TimeoutError) as exc:
            raise self._timeout(what, timeouts) from exc
        return self._decode(status, raw, what)

    async def _aiohttp(
        self, method: str, url: str, headers: dict[str, str], data: bytes | None,
        timeouts: Timeouts, net: ClientNetwork, what: str,
    ) -> tuple[int, bytes]:  # fmt: skip
        import aiohttp

        session = self._session(net)
        for attempt in (0, 1):  # a kept-alive connection the server had closed: once more
            began = False
            try:
                async with session.request(
                    method, url, data=data, headers=headers, proxy=net.proxy, proxy_headers=net.proxy_headers,
                    timeout=aiohttp.ClientTimeout(total=None, sock_connect=timeouts.connect),
                    allow_redirects=False,
                ) as response:
                    began = True
                    status = response.status
                    length = _length(response.headers.get("Content-Length"))
                    if length is not None:
                        if length > self.max_reply_bytes:
                            raise self._too_large(what, status)
                        return status, await response.read()
                    chunks: list[bytes] = []
                    size = 0
                    while chunk := await response.content.readany():
                        size += len(chunk)
                        if size > self.max_reply_bytes:
                            raise self._too_large(what, status)
                        chunks.append(chunk)
                    return status, b"".join(chunks)
            except (aiohttp.ServerDisconnectedError, aiohttp.ClientOSError) as exc:
                dropped = not isinstance(exc, aiohttp.ClientConnectorError) and (
                    isinstance(exc, aiohttp.ServerDisconnectedError) or exc.errno in _DROPPED
                )
                if attempt == 0 and dropped and not began:  # sent again on a new connection
                    continue
                raise HttpConnectionError(f"{what}: {type(exc).__name__}: {exc}") from exc
            except (HttpError, HttpTimeoutError):
                raise
            except (aiohttp.ServerTimeoutError, TimeoutError) as exc:
                raise self._timeout(what, timeouts) from exc
            except (aiohttp.ClientError, OSError, ValueError) as exc:
                raise HttpConnectionError(f"{what}: {type(exc).__name__}: {exc}") from exc
        raise AssertionError("unreachable")

    def _session(self, net: ClientNetwork) -> Any:
        import aiohttp

        loop = asyncio.get_running_loop()
        session = self._sessions.get(loop)
        if session is None or session.closed:
            self._forget_closed_loops()
            connector = aiohttp.TCPConnector(ssl=net.ssl if net.ssl is not None else True, limit=MAX_CONNECTIONS)
            session = self._sessions[loop] = aiohttp.ClientSession(
                connector=connector,
                skip_auto_headers=("Accept-Encoding",),  # identity bodies: the size cap is their size
                cookie_jar=aiohttp.DummyCookieJar(),
            )
        return session

    def _forget_closed_loops(self) -> None:
        """Drop the sessions of loops that ended without `aclose` (`asyncio.run` per episode):
        a session holds its loop, so it would otherwise be kept, with its sockets, forever."""
        for loop in [loop for loop in list(self._sessions) if loop.is_closed()]:
            session = self._sessions.pop(loop, None)
            connector = session.connector if session is not None else None
            if session is not None:
                session.detach()
            if connector is not None:
                with contextlib.suppress(Exception):
                    connector._close()  # closes its sockets now; the loop cannot run a close any more

    async def _own_async(
        self, method: str, url: str, headers: dict[str, str], data: bytes | None, timeouts: Timeouts, what: str
    ) -> tuple[int, bytes]:
        """Through the wrapped client's own async httpx client (a transport we cannot copy)."""
        client = self._client
        httpx = httpx_module(client)
        request = client.build_request(method, url, headers=headers, content=data,
                                       timeout=httpx.Timeout(**timeouts.phases(timeouts.total)))  # fmt: skip
        try:
            response = await client.send(request, stream=True)
        except httpx.TimeoutException as exc:
            raise self._timeout(what, timeouts) from exc
        except (httpx.HTTPError, OSError, ValueError) as exc:
            raise HttpConnectionError(f"{what}: {type(exc).__name__}: {exc}") from exc
        status = response.status_code
        try:
            length = _length(response.headers.get("content-length"))
            if length is not None and length > self.max_reply_bytes:
                raise self._too_large(what, status)
            chunks: list[bytes] = []
            size = 0
            async for chunk in response.aiter_bytes():
                size += len(chunk)
                if size > self.max_reply_bytes:
                    raise self._too_large(what, status)
                chunks.append(chunk)
        except (HttpError, HttpTimeoutError):
            raise
        except httpx.TimeoutException as exc:
            raise self._timeout(what, timeouts) from exc
        except (httpx.HTTPError, OSError, ValueError) as exc:
            raise HttpConnectionError(f"{what}: reply cut short: {type(exc).__name__}: {exc}") from exc
        finally:
            await response.aclose()
        return status, b"".join(chunks)

    async def apost(self, path: str, body: Any, options: CallOptions | None = None) -> Any:
        return await self.arequest("POST", path, body, options)

    # --- lifecycle ------------------------------------------------------------------

    def close(self) -> None:
        """Close token mode's own sync client (the wrapped client's are the caller's)."""
        own, self._own_sync = self._own_sync, None
        if own is not None:
            own.close()

    async def aclose(self) -> None:
        """Close this loop's aiohttp session (call from the loop that used it)."""
        self.close()
        with contextlib.suppress(RuntimeError):
            session = self._sessions.pop(asyncio.get_running_loop(), None)
            if session is not None:
                await session.close()


_DROPPED = (errno.ECONNRESET, errno.EPIPE)
"""What a kept-alive connection the server had closed gives on reuse (besides a clean EOF)."""

MAX_CONNECTIONS = 100
"""Connections one session opens at most (aiohttp's default limit); more requests wait."""


def _remaining(total: float | None, start: float) -> float | None:
    return None if total is None else max(0.0, total - (time.monotonic() - start))


def _length(value: str | None) -> int | None:
    """A reply's Content-Length, when it has a valid one."""
    try:
        return None if value is None else int(value)
    except ValueError:
        return None


if sys.version_info >= (3, 11):

    def _deadline(seconds: float | None) -> Any:
        return asyncio.timeout(seconds)

else:  # pragma: no cover - Python 3.10

    @contextlib.asynccontextmanager
    async def _deadline(seconds: float | None) -> AsyncIterator[None]:
        if seconds is None:
            yield
            return
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


__all__ = [  # the settings are re-exported: token mode's modules import them from here
    "CallOptions",
    "HttpConnectionError",
    "HttpError",
    "HttpReplyTooLarge",
    "HttpTimeoutError",
    "JsonHttp",
    "Timeouts",
    "merge_headers",
]
