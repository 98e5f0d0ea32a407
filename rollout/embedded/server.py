"""Local OpenAI-compatible server for the embedded policy, in vLLM's wire format.

Built on aiohttp because it is a well-kept asyncio server with native
streaming responses, and already a dependency. Requests run as coroutines on
one event loop; each choice samples token by token and yields to the loop
between steps, so hundreds of concurrent requests interleave.

Run it in-process (``with EmbeddedServer() as srv: srv.base_url``) or in the
foreground with :func:`serve_main` (``rollout serve``). Extras beyond OpenAI
follow vLLM: ``return_token_ids``, ``return_tokens_as_token_ids``,
``ignore_eos``, ``POST /tokenize``. Every success reply (and every stream
chunk) carries a top-level ``weight_version``.
"""

from __future__ import annotations

import argparse
import asyncio
import hmac
import json
import os
import threading
import time
import urllib.error
import urllib.parse
import urllib.request
import uuid
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np
from aiohttp import web

from .engine import ChoiceState, Generation, StepOutput
from .policy import Policy, get_encoding, load_weights_npz, weights_to_npz
from .protocol import (
    ApiError,
    SamplingRequest,
    bad,
    chat_logprob_entry,
    completion_logprobs,
    parse_sampling,
    parse_token_ids,
    usage,
)
from .template import ChatTemplate, TemplateError, encode_text, tool_call_arguments

BACKLOG = 4096
MAX_BODY_BYTES = 512 * 1024 * 1024
YIELD_EVERY_STEPS = 32

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


@dataclass(frozen=True)
class Snapshot:
    """Weights and their version, swapped as one reference between requests."""

    policy: Policy
    version: int


class ServerState:
    """Everything the handlers share; weight updates replace ``snapshot``."""

    def __init__(
        self,
        policy: Policy,
        model_name: str,
        api_key: str | None,
        latency_s: float,
        latency_per_token_s: float,
        seed: int,
        version: int = 0,
    ) -> None:
        self.snapshot = Snapshot(policy, version)
        self.model_name = model_name
        self.api_key = api_key
        self.latency_s = latency_s
        self.latency_per_token_s = latency_per_token_s
        self.template = ChatTemplate()
        self._seeds = np.random.default_rng(seed)

    def next_seed(self) -> int:
        """Seed for a request that gave none: reproducible per server seed and order."""
        return int(self._seeds.integers(0, 2**63))

    def set_weights(self, weights: Mapping[str, np.ndarray], version: int) -> None:
        """Validate on a copy, then swap; in-flight requests keep their snapshot."""
        policy = self.snapshot.policy.copy()
        policy.set_weights(weights)
        self.snapshot = Snapshot(policy, version)

    @property
    def max_model_len(self) -> int:
        return self.snapshot.policy.config.max_model_len


STATE_KEY = web.AppKey("state", ServerState)

# ------------------------------------------------------------------ helpers


def _json(data: Any, status: int = 200, version: int | None = None) -> web.Response:
    headers = {"X-Weight-Version": str(version)} if version is not None else None
    return web.Response(
        body=json.dumps(data).encode(),
        status=status,
        content_type="application/json",
        headers=headers,
    )


async def _body(request: web.Request) -> dict[str, Any]:
    raw = await request.read()
    try:
        body = json.loads(raw)
    except (ValueError, UnicodeDecodeError):
        raise ApiError(400, "Request body is not valid JSON.", code="invalid_json") from None
    if not isinstance(body, dict):
        raise ApiError(400, "Request body must be a JSON object.", code="invalid_json")
    return body


def _check_model(state: ServerState, body: Mapping[str, Any]) -> None:
    model = body.get("model")
    if model is not None and model != state.model_name:
        raise ApiError(
            404, f"The model `{model}` does not exist.", param="model", code="model_not_found"
        )


def _budget(state: ServerState, prompt_len: int, params: SamplingRequest, param: str) -> int:
    """max_tokens to use; 400 when the prompt (plus max_tokens) exceeds the context."""
    limit = state.max_model_len
    if prompt_len >= limit or (params.max_tokens and prompt_len + params.max_tokens > limit):
        asked = prompt_len + (params.max_tokens or 0)
        raise ApiError(
            400,
            f"This model's maximum context length is {limit} tokens; the request has "
            f"{prompt_len} prompt tokens and {asked} tokens with the completion.",
            param=param,
            code="context_length_exceeded",
        )
    return params.max_tokens or (limit - prompt_len)


async def _run(
    state: ServerState, gen: Generation, on_step: Callable[[list[StepOutput]], Awaitable[None]]
) -> None:
    """Drive a generation, sleeping for artificial latency between steps."""
    if state.latency_s > 0:
        await asyncio.sleep(state.latency_s)
    steps = 0
    while not gen.done:
        outputs = gen.step()
        steps += 1
        if state.latency_per_token_s > 0:
            await asyncio.sleep(state.latency_per_token_s)
        elif steps % YIELD_EVERY_STEPS == 0:
            await asyncio.sleep(0)
        await on_step(outputs)


async def _noop(_: list[StepOutput]) -> None:
    return None


class _SSE:
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


def _tool_call(c: ChoiceState, tools: list[Any], rid: str) -> dict[str, Any]:
    fn = tools[0].get("function", {}) if isinstance(tools[0], Mapping) else {}
    return {
        "id": f"call_{rid[-12:]}_{c.index}",
        "type": "function",
        "function": {
            "name": fn.get("name", "tool"),
            "arguments": tool_call_arguments(c.tool_arg or ""),
        },
    }


# ------------------------------------------------------------ chat handler


def _parse_tools(body: Mapping[str, Any]) -> tuple[list[Any], bool]:
    tools = body.get("tools")
    if tools is None:
        return [], False
    if not isinstance(tools, list) or not all(
        isinstance(t, Mapping) and isinstance(t.get("function"), Mapping) for t in tools
    ):
        raise bad("tools", "'tools' must be a list of {type: function, function: {...}}")
    choice = body.get("tool_choice")
    return tools, bool(tools) and choice != "none"


async def chat_completions(request: web.Request) -> web.StreamResponse:
    state = request.app[STATE_KEY]
    body = await _body(request)
    _check_model(state, body)
    params = parse_sampling(body, chat=True)
    tools, tool_mode = _parse_tools(body)
    try:
        prompt = state.template.render(body.get("messages"), tools or None)
    except TemplateError as e:
        raise bad("messages", str(e)) from None
    max_tokens = _budget(state, len(prompt), params, "messages")
    snap = state.snapshot
    seed = params.seed if params.seed is not None else state.next_seed()
    gen = Generation(snap.policy, prompt, params, max_tokens, seed, tool_mode)
    rid = f"chatcmpl-{uuid.uuid4().hex}"
    created = int(time.time())
    head = {"id": rid, "created": created, "model": state.model_name}

    def entry(o: StepOutput) -> dict[str, Any]:
        return chat_logprob_entry(
            o.token_id, o.logprob, o.dist, params.top_logprobs, params.tokens_as_ids
        )

    if not params.stream:
        await _run(state, gen, _noop)
        choices = []
        for c in gen.choices:
            message: dict[str, Any] = {"role": "assistant", "content": c.text}
            if c.tool_arg is not None:
                message = {
                    "role": "assistant",
                    "content": None,
                    "tool_calls": [_tool_call(c, tools, rid)],
                }
            choice: dict[str, Any] = {
                "index": c.index,
                "message": message,
                "logprobs": None,
                "finish_reason": c.finish_reason,
            }
            if params.logprobs:
                choice["logprobs"] = {
                    "content": [
                        chat_logprob_entry(t, lp, d, params.top_logprobs, params.tokens_as_ids)
                        for t, lp, d in zip(c.token_ids, c.logprobs, c.dists, strict=True)
                    ]
                }
            if params.return_token_ids:
                choice["token_ids"] = c.token_ids
            choices.append(choice)
        out: dict[str, Any] = {
            **head,
            "object": "chat.completion",
            "choices": choices,
            "usage": usage(len(prompt), sum(len(c.token_ids) for c in gen.choices)),
            "weight_version": snap.version,
        }
        if params.return_token_ids:
            out["prompt_token_ids"] = prompt
        return _json(out, version=snap.version)

    sse = _SSE(request)
    await sse.start()
    extra: dict[str, Any] = {"usage": None} if params.include_usage else {}

    def chunk(choices: list[dict[str, Any]]) -> dict[str, Any]:
        return {
            **head,
            "object": "chat.completion.chunk",
            "choices": choices,
            **extra,
            "weight_version": snap.version,
        }

    first = chunk(
        [
            {
                "index": c.index,
                "delta": {"role": "assistant", "content": ""},
                "logprobs": None,
                "finish_reason": None,
                **({"token_ids": []} if params.return_token_ids else {}),
            }
            for c in gen.choices
        ]
    )
    if params.return_token_ids:
        first["prompt_token_ids"] = prompt
    await sse.send([first])

    async def on_step(outputs: list[StepOutput]) -> None:
        payloads = []
        for o in outputs:
            c = o.choice
            delta: dict[str, Any] = {"content": o.delta} if o.delta else {}
            if c.tool_arg is not None:
                call = _tool_call(c, tools, rid)
                delta = {"tool_calls": [{"index": 0, **call}]}
            ch: dict[str, Any] = {
                "index": c.index,
                "delta": delta,
                "logprobs": None,
                "finish_reason": c.finish_reason,
            }
            if params.logprobs:
                ch["logprobs"] = {"content": [entry(o)]}
            if params.return_token_ids:
                ch["token_ids"] = [o.token_id]
            payloads.append(chunk([ch]))
        await sse.send(payloads)

    await _run(state, gen, on_step)
    if params.include_usage:
        done = chunk([])
        done["usage"] = usage(len(prompt), sum(len(c.token_ids) for c in gen.choices))
        await sse.send([done])
    return await sse.finish()


# ------------------------------------------------------ completions handler


def _prompts(body: Mapping[str, Any]) -> list[list[int]]:
    """``prompt`` as str, [str], [int] or [[int]] -> list of token-id prompts."""
    raw = body.get("prompt")
    if isinstance(raw, str):
        return [encode_text(raw)]
    if isinstance(raw, list) and raw:
        if all(isinstance(p, str) for p in raw):
            return [encode_text(p) for p in raw]
        if all(isinstance(p, list) for p in raw):
            return [parse_token_ids(p, "prompt") for p in raw]
        return [parse_token_ids(raw, "prompt")]
    raise bad("prompt", "'prompt' must be a string, a list of strings, or token ids")


async def completions(request: web.Request) -> web.StreamResponse:
    state = request.app[STATE_KEY]
    body = await _body(request)
    _check_model(state, body)
    params = parse_sampling(body, chat=False)
    if body.get("echo"):
        raise bad("echo", "'echo' is not supported", code="unsupported_parameter")
    prompts = _prompts(body)
    if any(not p for p in prompts):
        raise bad("prompt", "'prompt' must not be empty")
    budgets = [_budget(state, len(p), params, "prompt") for p in prompts]
    snap = state.snapshot
    base_seed = params.seed if params.seed is not None else state.next_seed()
    gens = [
        Generation(snap.policy, p, params, mt, base_seed + 7919 * k, first_index=k * params.n)
        for k, (p, mt) in enumerate(zip(prompts, budgets, strict=True))
    ]
    rid = f"cmpl-{uuid.uuid4().hex}"
    head = {"id": rid, "created": int(time.time()), "model": state.model_name}
    n_prompt = sum(len(p) for p in prompts)

    if not params.stream:
        for g in gens:
            await _run(state, g, _noop)
        choices = []
        for p, g in zip(prompts, gens, strict=True):
            for c in g.choices:
                ch: dict[str, Any] = {
                    "index": c.index,
                    "text": c.text,
                    "logprobs": None,
                    "finish_reason": c.finish_reason,
                }
                if params.logprobs:
                    ch["logprobs"] = completion_logprobs(
                        c.token_ids, c.logprobs, c.dists, params.top_logprobs, params.tokens_as_ids
                    )
                if params.return_token_ids:
                    ch["prompt_token_ids"] = p
                    ch["token_ids"] = c.token_ids
                choices.append(ch)
        n_out = sum(len(c.token_ids) for g in gens for c in g.choices)
        return _json(
            {
                **head,
                "object": "text_completion",
                "choices": choices,
                "usage": usage(n_prompt, n_out),
                "weight_version": snap.version,
            },
            version=snap.version,
        )

    sse = _SSE(request)
    await sse.start()
    extra: dict[str, Any] = {"usage": None} if params.include_usage else {}
    offsets: dict[int, int] = {}
    first_sent: set[int] = set()

    def make_on_step(prompt: list[int]) -> Callable[[list[StepOutput]], Awaitable[None]]:
        async def on_step(outputs: list[StepOutput]) -> None:
            payloads = []
            for o in outputs:
                c = o.choice
                ch: dict[str, Any] = {
                    "index": c.index,
                    "text": o.delta,
                    "logprobs": None,
                    "finish_reason": c.finish_reason,
                }
                if params.logprobs:
                    ch["logprobs"] = completion_logprobs(
                        [o.token_id],
                        [o.logprob],
                        [o.dist],
                        params.top_logprobs,
                        params.tokens_as_ids,
                        offsets.get(c.index, 0),
                    )
                offsets[c.index] = offsets.get(c.index, 0) + len(o.delta)
                if params.return_token_ids:
                    if c.index not in first_sent:
                        ch["prompt_token_ids"] = prompt
                        first_sent.add(c.index)
                    ch["token_ids"] = [o.token_id]
                payloads.append(
                    {
                        **head,
                        "object": "text_completion",
                        "choices": [ch],
                        **extra,
                        "weight_version": snap.version,
                    }
                )
            await sse.send(payloads)

        return on_step

    for p, g in zip(prompts, gens, strict=True):
        await _run(state, g, make_on_step(p))
    if params.include_usage:
        n_out = sum(len(c.token_ids) for g in gens for c in g.choices)
        await sse.send(
            [
                {
                    **head,
                    "object": "text_completion",
                    "choices": [],
                    "usage": usage(n_prompt, n_out),
                    "weight_version": snap.version,
                }
            ]
        )
    return await sse.finish()


# ------------------------------------------------------------ small routes


async def models(request: web.Request) -> web.StreamResponse:
    state = request.app[STATE_KEY]
    return _json(
        {
            "object": "list",
            "data": [
                {
                    "id": state.model_name,
                    "object": "model",
                    "created": 0,
                    "owned_by": "rollout",
                    "root": state.model_name,
                    "max_model_len": state.max_model_len,
                }
            ],
            "weight_version": state.snapshot.version,
        }
    )


async def tokenize(request: web.Request) -> web.StreamResponse:
    state = request.app[STATE_KEY]
    body = await _body(request)
    _check_model(state, body)
    if "messages" in body:
        add_gen = body.get("add_generation_prompt", True)
        if not isinstance(add_gen, bool):
            raise bad("add_generation_prompt", "'add_generation_prompt' must be a boolean")
        tools, _ = _parse_tools(body)
        try:
            tokens = state.template.render(body["messages"], tools or None, add_gen)
        except TemplateError as e:
            raise bad("messages", str(e)) from None
    elif isinstance(body.get("prompt"), str):
        tokens = encode_text(body["prompt"])
    else:
        raise bad("prompt", "give 'messages' or a string 'prompt'")
    return _json(
        {
            "tokens": tokens,
            "count": len(tokens),
            "max_model_len": state.max_model_len,
            "token_strs": None,
            "weight_version": state.snapshot.version,
        }
    )


async def detokenize(request: web.Request) -> web.StreamResponse:
    state = request.app[STATE_KEY]
    body = await _body(request)
    _check_model(state, body)
    tokens = parse_token_ids(body.get("tokens"), "tokens")
    return _json(
        {"prompt": get_encoding().decode(tokens), "weight_version": state.snapshot.version}
    )


async def health(request: web.Request) -> web.StreamResponse:
    state = request.app[STATE_KEY]
    return _json({"status": "ok", "weight_version": state.snapshot.version})


async def update_weights(request: web.Request) -> web.StreamResponse:
    """``.npz`` body + ``?version=N``, or JSON ``{"version": N, "path": ...}``."""
    state = request.app[STATE_KEY]
    loop = asyncio.get_running_loop()
    version_raw: Any = request.query.get("version")
    if request.content_type == "application/json":
        body = await _body(request)
        version_raw = body.get("version", version_raw)
        path = body.get("path")
        if not isinstance(path, str):
            raise bad("path", "'path' must name a server-side .npz file")
        source: bytes | str = path
    else:
        source = await request.read()
        if not source:
            raise bad("body", "empty body; send the .npz bytes")
    if version_raw is None:
        version = state.snapshot.version + 1
    else:
        try:
            version = int(version_raw)
        except (TypeError, ValueError):
            raise bad("version", "'version' must be an integer") from None
    try:
        weights = await loop.run_in_executor(None, load_weights_npz, source)
        await loop.run_in_executor(None, state.set_weights, weights, version)
    except (OSError, ValueError, KeyError) as e:
        raise bad("weights", f"could not load weights: {e}") from None
    return _json({"status": "ok", "weight_version": version}, version=version)


# -------------------------------------------------------------- middleware


@web.middleware
async def _errors(request: web.Request, handler: Handler) -> web.StreamResponse:
    try:
        return await handler(request)
    except ApiError as e:
        return _json(e.body(), status=e.status)
    except web.HTTPException as e:
        if e.status == 413:
            return _json(
                ApiError(413, "Request body too large.", code="payload_too_large").body(), 413
            )
        if e.status < 400:
            raise
        kind = "not_found" if e.status == 404 else "method_not_allowed" if e.status == 405 else None
        return _json(ApiError(e.status, e.reason, code=kind).body(), status=e.status)


def _auth_middleware(api_key: str) -> Callable[..., Awaitable[web.StreamResponse]]:
    expected = f"Bearer {api_key}".encode()

    @web.middleware
    async def auth(request: web.Request, handler: Handler) -> web.StreamResponse:
        if request.path != "/health":
            given = request.headers.get("Authorization", "").encode()
            if not hmac.compare_digest(given, expected):
                err = ApiError(401, "Incorrect or missing API key.", code="invalid_api_key")
                return _json(err.body(), status=401)
        return await handler(request)

    return auth


def build_app(state: ServerState) -> web.Application:
    """The aiohttp application (also handy for aiohttp's own test client)."""
    middlewares: list[Any] = [_errors]
    if state.api_key:
        middlewares.insert(0, _auth_middleware(state.api_key))
    app = web.Application(middlewares=middlewares, client_max_size=MAX_BODY_BYTES)
    app[STATE_KEY] = state
    app.router.add_post("/v1/chat/completions", chat_completions)
    app.router.add_post("/v1/completions", completions)
    app.router.add_get("/v1/models", models)
    for prefix in ("", "/v1"):
        app.router.add_post(f"{prefix}/tokenize", tokenize)
        app.router.add_post(f"{prefix}/detokenize", detokenize)
        app.router.add_post(f"{prefix}/update_weights", update_weights)
    app.router.add_get("/health", health)
    return app


async def _start_site(state: ServerState, host: str, port: int) -> tuple[web.AppRunner, int]:
    runner = web.AppRunner(build_app(state), access_log=None, shutdown_timeout=1.0)
    await runner.setup()
    site = web.TCPSite(runner, host, port, backlog=BACKLOG)
    await site.start()
    bound = port
    for addr in runner.addresses:
        if isinstance(addr, tuple) and len(addr) >= 2:
            bound = int(addr[1])
            break
    return runner, bound


# ----------------------------------------------------------- public surface


class EmbeddedServer:
    """The server on a background thread; a context manager for tests and examples."""

    def __init__(
        self,
        policy: Policy | None = None,
        host: str = "127.0.0.1",
        port: int = 0,
        api_key: str | None = None,
        model_name: str = "tiny",
        latency_s: float = 0.0,
        latency_per_token_s: float = 0.0,
        seed: int = 0,
    ) -> None:
        self.host = host
        self.port = port
        self.state = ServerState(
            policy or Policy(seed=seed), model_name, api_key, latency_s, latency_per_token_s, seed
        )
        self._loop: asyncio.AbstractEventLoop | None = None
        self._runner: web.AppRunner | None = None
        self._thread: threading.Thread | None = None

    def __repr__(self) -> str:  # never show the key
        return f"EmbeddedServer(url={self.url!r}, model={self.state.model_name!r})"

    @property
    def url(self) -> str:
        """Root URL (``/health``, ``/tokenize``, ``/update_weights`` live here)."""
        return f"http://{self.host}:{self.port}"

    @property
    def base_url(self) -> str:
        """OpenAI base URL (``.../v1``) for ``openai.OpenAI(base_url=...)``."""
        return f"{self.url}/v1"

    @property
    def model_name(self) -> str:
        return self.state.model_name

    @property
    def policy(self) -> Policy:
        """The policy serving new requests (do not mutate; use set_weights)."""
        return self.state.snapshot.policy

    @property
    def weight_version(self) -> int:
        return self.state.snapshot.version

    def set_weights(self, weights: Mapping[str, np.ndarray], version: int) -> None:
        """In-process weight update (same effect as ``POST /update_weights``)."""
        self.state.set_weights(weights, version)

    def start(self) -> EmbeddedServer:
        ready = threading.Event()
        failure: list[BaseException] = []

        def main() -> None:
            loop = asyncio.new_event_loop()
            self._loop = loop
            asyncio.set_event_loop(loop)
            try:
                self._runner, self.port = loop.run_until_complete(
                    _start_site(self.state, self.host, self.port)
                )
            except BaseException as e:
                failure.append(e)
                ready.set()
                loop.close()
                return
            ready.set()
            loop.run_forever()
            loop.close()

        self._thread = threading.Thread(target=main, name="embedded-server", daemon=True)
        self._thread.start()
        ready.wait()
        if failure:
            raise failure[0]
        return self

    def stop(self) -> None:
        loop, runner = self._loop, self._runner
        if loop is None or runner is None or self._thread is None:
            return
        try:
            asyncio.run_coroutine_threadsafe(runner.cleanup(), loop).result(timeout=10)
        finally:
            loop.call_soon_threadsafe(loop.stop)
            self._thread.join(timeout=10)
            self._loop = self._runner = self._thread = None

    def __enter__(self) -> EmbeddedServer:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


def push_weights(
    base_url: str,
    weights: Mapping[str, np.ndarray],
    version: int,
    api_key: str | None = None,
    timeout: float = 60.0,
) -> int:
    """POST weights to a running server (stdlib only); returns the version it reports.

    ``base_url`` may be the root or the ``.../v1`` OpenAI base URL. Blocking:
    from async code, call it in an executor.
    """
    root = base_url.rstrip("/")
    if root.endswith("/v1"):
        root = root[: -len("/v1")]
    url = f"{root}/update_weights?{urllib.parse.urlencode({'version': int(version)})}"
    headers = {"Content-Type": "application/octet-stream"}
    if api_key:
        headers["Authorization"] = f"Bearer {api_key}"
    req = urllib.request.Request(url, data=weights_to_npz(weights), headers=headers, method="POST")
    try:
        with urllib.request.urlopen(req, timeout=timeout) as resp:
            return int(json.loads(resp.read())["weight_version"])
    except urllib.error.HTTPError as e:
        detail = e.read().decode("utf-8", errors="replace")
        raise RuntimeError(f"weight update failed with HTTP {e.code}: {detail}") from None


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="rollout serve", description="Serve the embedded policy.")
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int, default=8000)
    p.add_argument(
        "--api-key",
        default=os.environ.get("ROLLOUT_API_KEY"),
        help="require 'Authorization: Bearer KEY' (default: $ROLLOUT_API_KEY)",
    )
    p.add_argument("--model", default="tiny", help="served model name")
    p.add_argument("--weights", default=None, help="policy .npz written by Policy.save")
    p.add_argument("--latency-ms", type=float, default=0.0, help="fixed delay per request")
    p.add_argument("--latency-per-token-ms", type=float, default=0.0, help="delay per decode step")
    p.add_argument("--seed", type=int, default=0)
    return p


def serve_main(argv: list[str] | None = None) -> int:
    """Foreground server until Ctrl-C; prints its base URL once it listens."""
    args = _parser().parse_args(argv)
    policy = Policy.load(args.weights) if args.weights else Policy(seed=args.seed)
    state = ServerState(
        policy,
        args.model,
        args.api_key,
        args.latency_ms / 1000,
        args.latency_per_token_ms / 1000,
        args.seed,
    )

    async def run() -> None:
        runner, port = await _start_site(state, args.host, args.port)
        print(
            f"embedded server listening on http://{args.host}:{port}/v1 "
            f"(model {args.model!r}, auth {'on' if args.api_key else 'off'})",
            flush=True,
        )
        try:
            await asyncio.Event().wait()
        finally:
            await runner.cleanup()

    try:
        asyncio.run(run())
    except KeyboardInterrupt:
        pass
    except OSError as e:
        print(f"cannot serve on {args.host}:{args.port}: {e}", flush=True)
        return 1
    return 0


if __name__ == "__main__":
    raise SystemExit(serve_main())
