"""JSON bodies in, JSON and server-sent events out: the server's HTTP plumbing."""

from __future__ import annotations

import json
from typing import Any

from aiohttp import web

from .protocol import ApiError


async def read_json(request: web.Request) -> dict[str, Any]:
    """The request body as a JSON object (400 otherwise)."""
    raw = await request.read()
    try:
        body = json.loads(raw)
    except (ValueError, UnicodeDecodeError):
        raise ApiError(400, "Request body is not valid JSON.", code="invalid_json") from None
    if not isinstance(body, dict):
        raise ApiError(400, "Request body must be a JSON object.", code="invalid_json")
    return body


def json_response(data: Any, status: int = 200, version: int | None = None) -> web.Response:
    """A JSON reply; ``X-Weight-Version`` too where a reply reports a version."""
    headers = {"X-Weight-Version": str(version)} if version is not None else None
    return web.Response(
        body=json.dumps(data).encode(),
        status=status,
        content_type="application/json",
        headers=headers,
    )


class SSEWriter:
    """Server-sent events writer that stops quietly when the client is gone."""

    def __init__(self, request: web.Request) -> None:
        self.request = request
        self.resp = web.StreamResponse(
            headers={"Content-Type": "text/event-stream", "Cache-Control": "no-cache"}
        )
        self.closed = False

    async def start(self) -> None:
        await self.resp.prepare(self.request)

    async def send(self, payloads: list[dict[str, Any]]) -> None:
        if self.closed or not payloads:
            return
        data = b"".join(b"data: " + json.dumps(p).encode() + b"\n\n" for p in payloads)
        try:
            await self.resp.write(data)
        except (ConnectionResetError, RuntimeError):
            self.closed = True

    async def finish(self) -> web.StreamResponse:
        if not self.closed:
            try:
                await self.resp.write(b"data: [DONE]\n\n")
                await self.resp.write_eof()
            except (ConnectionResetError, RuntimeError):
                pass
        return self.resp
