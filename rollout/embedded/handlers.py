"""Route handlers: OpenAI's chat and text completions with vLLM's extras, and small routes.

Each generating handler validates, builds its :class:`Generation` s on the
current weight snapshot, and hands them to :func:`respond`, which runs them
and writes the reply whole or as server-sent events with the endpoint's
payload builder.
"""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import Callable, Sequence
from typing import Any

from aiohttp import web

from . import payloads
from .engine import ChoiceState, Generation, Piece, drive
from .httpio import SSEWriter, json_response, read_json
from .policy import get_encoding, load_weights_npz
from .protocol import (
    SamplingRequest,
    bad,
    check_model,
    completion_budget,
    parse_prompts,
    parse_sampling,
    parse_token_ids,
    parse_tools,
)
from .state import STATE_KEY, ServerState
from .template import TemplateError, encode_text

Builder = Callable[..., dict[str, Any]]


async def respond(
    request: web.Request,
    gens: Sequence[Generation],
    ctx: payloads.ReplyContext,
    build: Builder,
    opening: Sequence[ChoiceState] = (),
) -> web.StreamResponse:
    """Run the generations and reply with ``build``'s payloads, whole or streamed."""
    state = request.app[STATE_KEY]

    def used() -> dict[str, int]:
        completion = sum(len(c.token_ids) for g in gens for c in g.choices)
        return payloads.usage(ctx.prompt_tokens, completion)

    if not ctx.params.stream:
        for g in gens:
            await drive(g, state.latency_s, state.latency_per_token_s)
        pieces = [Piece(c, 0, c.text) for g in gens for c in g.choices]
        return json_response(build(ctx, pieces, False, used()), version=ctx.version)

    sse = SSEWriter(request)
    await sse.start()
    if opening:
        await sse.send([build(ctx, [], True, opening=opening)])

    async def on_step(pieces: list[Piece]) -> None:
        await sse.send([build(ctx, [piece], True) for piece in pieces])

    for g in gens:
        await drive(g, state.latency_s, state.latency_per_token_s, on_step)
    if ctx.params.include_usage:
        await sse.send([build(ctx, [], True, used())])
    return await sse.finish()


def _context(
    state: ServerState, version: int, prefix: str, params: SamplingRequest, prompt: list[int],
    prompt_tokens: int, tools: Sequence[Any] = (),
) -> payloads.ReplyContext:  # fmt: skip
    return payloads.ReplyContext(
        id=f"{prefix}-{uuid.uuid4().hex}",
        created=int(time.time()),
        model=state.model_name,
        version=version,
        params=params,
        prompt_ids=prompt,
        prompt_tokens=prompt_tokens,
        tools=tools,
    )


async def chat_completions(request: web.Request) -> web.StreamResponse:
    state = request.app[STATE_KEY]
    body = await read_json(request)
    check_model(body, state.model_name)
    params = parse_sampling(body, chat=True)
    tools, tool_mode = parse_tools(body)
    try:
        prompt = state.template.render(body.get("messages"), tools or None)
    except TemplateError as e:
        raise bad("messages", str(e)) from None
    max_tokens = completion_budget(len(prompt), state.max_model_len, params, "messages")
    snap = state.snapshot  # one read: a weight update may swap it from another thread
    ctx = _context(state, snap.version, "chatcmpl", params, prompt, len(prompt), tools)
    seed = state.seed_for(params.seed)
    gen = Generation(snap.policy, prompt, params, max_tokens, seed, tool_mode)
    return await respond(request, [gen], ctx, payloads.chat, opening=gen.choices)


async def completions(request: web.Request) -> web.StreamResponse:
    state = request.app[STATE_KEY]
    body = await read_json(request)
    check_model(body, state.model_name)
    params = parse_sampling(body, chat=False)
    if body.get("echo"):
        raise bad("echo", "'echo' is not supported", code="unsupported_parameter")
    prompts = parse_prompts(body)
    if any(not p for p in prompts):
        raise bad("prompt", "'prompt' must not be empty")
    budgets = [completion_budget(len(p), state.max_model_len, params, "prompt") for p in prompts]
    snap = state.snapshot
    ctx = _context(state, snap.version, "cmpl", params, [], sum(len(p) for p in prompts))
    base_seed = state.seed_for(params.seed)
    gens = [
        Generation(snap.policy, p, params, mt, base_seed + 7919 * k, first_index=k * params.n)
        for k, (p, mt) in enumerate(zip(prompts, budgets, strict=True))
    ]
    return await respond(request, gens, ctx, payloads.completion)


# ------------------------------------------------------------------ small routes


async def models(request: web.Request) -> web.StreamResponse:
    state = request.app[STATE_KEY]
    return json_response(
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
    body = await read_json(request)
    check_model(body, state.model_name)
    if "messages" in body:
        add_gen = body.get("add_generation_prompt", True)
        if not isinstance(add_gen, bool):
            raise bad("add_generation_prompt", "'add_generation_prompt' must be a boolean")
        tools, _ = parse_tools(body)
        try:
            tokens = state.template.render(body["messages"], tools or None, add_gen)
        except TemplateError as e:
            raise bad("messages", str(e)) from None
    elif isinstance(body.get("prompt"), str):
        tokens = encode_text(body["prompt"])
    else:
        raise bad("prompt", "give 'messages' or a string 'prompt'")
    return json_response(
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
    body = await read_json(request)
    check_model(body, state.model_name)
    tokens = parse_token_ids(body.get("tokens"), "tokens")
    return json_response(
        {"prompt": get_encoding().decode(tokens), "weight_version": state.snapshot.version}
    )


async def health(request: web.Request) -> web.StreamResponse:
    state = request.app[STATE_KEY]
    return json_response({"status": "ok", "weight_version": state.snapshot.version})


async def update_weights(request: web.Request) -> web.StreamResponse:
    """``.npz`` body + ``?version=N``, or JSON ``{"version": N, "path": ...}``."""
    state = request.app[STATE_KEY]
    loop = asyncio.get_running_loop()
    version_raw: Any = request.query.get("version")
    if request.content_type == "application/json":
        body = await read_json(request)
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
    return json_response({"status": "ok", "weight_version": version}, version=version)
