"""The aiohttp application: middleware (errors, API key) and the route table."""

from __future__ import annotations

import hmac
import logging
from collections.abc import Awaitable, Callable
from typing import Any

from aiohttp import web

from . import handlers, token_routes
from .httpio import json_response
from .protocol import ApiError
from .state import STATE_KEY, ServerState

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]

log = logging.getLogger(__name__)


@web.middleware
async def _errors(request: web.Request, handler: Handler) -> web.StreamResponse:
    """Every error as OpenAI's ``{"error": {...}}`` body; never a traceback."""
    try:
        return await handler(request)
    except ApiError as e:
        return json_response(e.body(), status=e.status)
    except web.HTTPException as e:
        if e.status < 400:
            raise
        kind = "not_found" if e.status == 404 else "method_not_allowed" if e.status == 405 else None
        return json_response(ApiError(e.status, e.reason, code=kind).body(), status=e.status)
    except RecursionError:  # a structure that parsed but is too deep to walk (issue 12.15)
        err = ApiError(400, "Request is nested too deeply.", code="invalid_value")
        return json_response(err.body(), status=400)
    except Exception:
        log.exception("embedded server: unhandled error on %s %s", request.method, request.path)
        err = ApiError(500, "Internal server error.", code="internal_error", type_="server_error")
        return json_response(err.body(), status=500)


def _auth_middleware(api_key: str) -> Callable[..., Awaitable[web.StreamResponse]]:
    expected = f"Bearer {api_key}".encode()

    @web.middleware
    async def auth(request: web.Request, handler: Handler) -> web.StreamResponse:
        if request.path != "/health":
            try:  # raw non-UTF-8 header bytes arrive as surrogates: a wrong key, not a 500
                given = request.headers.get("Authorization", "").encode()
            except UnicodeEncodeError:
                given = b""
            if not hmac.compare_digest(given, expected):
                err = ApiError(401, "Incorrect or missing API key.", code="invalid_api_key")
                return json_response(err.body(), status=401)
        return await handler(request)

    return auth


def build_app(state: ServerState) -> web.Application:
    """The aiohttp application (also handy for aiohttp's own test client)."""
    middlewares: list[Any] = [_errors]
    if state.api_key:
        middlewares.insert(0, _auth_middleware(state.api_key))
    # Bodies are read through httpio.read_body, which applies the limits per route.
    app = web.Application(middlewares=middlewares, client_max_size=state.limits.max_body_bytes)
    app[STATE_KEY] = state
    app.router.add_post("/v1/chat/completions", handlers.chat_completions)
    app.router.add_post("/v1/completions", handlers.completions)
    app.router.add_post("/inference/v1/generate", token_routes.generate)
    app.router.add_post("/v1/chat/completions/render", token_routes.render)
    app.router.add_post("/v1/chat/completions/derender", token_routes.derender)
    app.router.add_get("/v1/models", handlers.models)
    for prefix in ("", "/v1"):
        app.router.add_post(f"{prefix}/tokenize", handlers.tokenize)
        app.router.add_post(f"{prefix}/detokenize", handlers.detokenize)
        app.router.add_post(f"{prefix}/update_weights", handlers.update_weights)
    app.router.add_get("/health", handlers.health)
    return app
