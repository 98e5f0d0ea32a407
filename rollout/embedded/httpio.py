"""Bodies in, JSON and server-sent events out: the server's HTTP plumbing, with its limits.

Every body is read through :func:`read_body`: refused from ``Content-Length``
when it is too large, cut off when a chunked body grows past the limit, and
given a deadline, so neither a huge nor a half-sent request holds memory or
a connection (issue 12.12, 12.17). JSON is only taken as
``application/json``: a web page can POST text/plain or a form to a
keyless server on localhost without asking, but not JSON (issue 12.14).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
from typing import Any

from aiohttp import web

from .protocol import ApiError
from .state import STATE_KEY

JSON_TYPE = "application/json"


def unsupported_type(expected: str) -> ApiError:
    return ApiError(415, f"Send the body with Content-Type: {expected}.",
                    code="unsupported_media_type")  # fmt: skip


async def read_body(request: web.Request, limit: int, timeout_s: float) -> bytes:
    """The whole body, at most ``limit`` bytes (413), arriving within ``timeout_s`` (408)."""
    if request.content_length is not None and request.content_length > limit:
        raise _too_large(limit)
    if request.content.is_eof():  # all of it arrived with the headers: nothing to wait for
        body = await request.content.read()
        if len(body) > limit:
            raise _too_large(limit)
        return body
    chunks: list[bytes] = []

    async def collect() -> None:
        size = 0
        async for chunk in request.content.iter_any():
            size += len(chunk)
            if size > limit:
                raise _too_large(limit)
            chunks.append(chunk)

    try:
        await asyncio.wait_for(collect(), timeout_s)
    except asyncio.TimeoutError:
        raise ApiError(408, f"The request body did not arrive within {timeout_s:g} s.",
                       code="request_timeout") from None  # fmt: skip
    return b"".join(chunks)


def _too_large(limit: int) -> ApiError:
    return ApiError(413, f"Request body too large (this server takes at most {limit} bytes).",
                    code="payload_too_large")  # fmt: skip


async def read_json(request: web.Request) -> dict[str, Any]:
    """The request body as a JSON object (415, 413, 408 or 400 otherwise)."""
    if request.content_type != JSON_TYPE:
        raise unsupported_type(JSON_TYPE)
    limits = request.app[STATE_KEY].limits
    raw = await read_body(request, limits.max_body_bytes, limits.read_timeout_s)
    try:
        body = json.loads(raw)
    except (ValueError, UnicodeDecodeError):
        raise ApiError(400, "Request body is not valid JSON.", code="invalid_json") from None
    except RecursionError:
        raise ApiError(400, "Request body is nested too deeply.", code="invalid_json") from None
    if not isinstance(body, dict):
        raise ApiError(400, "Request body must be a JSON object.", code="invalid_json")
    return body


def encode(data: Any) -> bytes:
    """Strict JSON: a NaN or infinity is a bug here, never silently invalid output."""
    return json.dumps(data, allow_nan=False).encode()


def json_response(
    data: Any, status: int = 200, version: int | None = None, encoded: bytes | None = None
) -> web.Response:
    """A JSON reply (``encoded``: already serialised); ``X-Weight-Version`` where a reply has one."""
    headers = {"X-Weight-Version": str(version)} if version is not None else None
    return web.Response(
        body=encode(data) if encoded is None else encoded,
        status=status,
        content_type=JSON_TYPE,
        headers=headers,
    )


class SSEWriter:
    """Server-sent events; stops quietly when the client leaves or stops reading.

    A reader that leaves data unread for ``timeout_s`` is dropped, so it cannot
    hold the generation (and its memory) open indefinitely.
    """

    def __init__(self, request: web.Request, timeout_s: float) -> None:
        self.request = request
        self.timeout_s = timeout_s
        self.resp = web.StreamResponse(
            headers={"Content-Type": "text/event-stream", "Cache-Control": "no-cache"}
        )
        self.closed = False

    async def start(self) -> None:
        await self.resp.prepare(self.request)

    async def send(self, payloads: list[dict[str, Any]]) -> bool:
        """Write events; False once the stream is gone (then stop generating)."""
        if self.closed or not payloads:
            return not self.closed
        data = b"".join(b"data: " + encode(p) + b"\n\n" for p in payloads)
        await self._write(data)
        return not self.closed

    async def _write(self, data: bytes) -> None:
        transport = self.request.transport
        try:
            if transport is not None and transport.get_write_buffer_size() > 0:
                # A backlog: the reader is slow or stalled, so this write may wait on it.
                await asyncio.wait_for(self.resp.write(data), self.timeout_s)
            else:
                await self.resp.write(data)
        except asyncio.TimeoutError:
            self.closed = True
            if transport is not None:
                transport.abort()  # drop what is buffered for a reader that is not reading
        except (ConnectionResetError, RuntimeError):
            self.closed = True

    async def finish(self) -> web.StreamResponse:
        if not self.closed:
            await self._write(b"data: [DONE]\n\n")
        if not self.closed:
            with contextlib.suppress(ConnectionResetError, RuntimeError):
                await self.resp.write_eof()
        return self.resp
