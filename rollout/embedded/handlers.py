"""Route handlers: OpenAI's chat and text completions with vLLM's extras, and small routes.

Each generating handler validates, checks the request's size against the
server's limits, builds its :class:`Generation` s on the current weight
snapshot, and hands them to :func:`respond`, which runs them and writes the
reply whole or as server-sent events with the endpoint's payload builder.
"""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

from aiohttp import web

from . import payloads
from .engine import ChoiceState, Generation, Piece, drive
from .httpio import SSEWriter, encode, json_response, read_body, read_json, unsupported_type
from .policy import get_encoding
from .protocol import (
    SamplingRequest,
    bad,
    check_model,
    check_request_size,
    completion_budget,
    context_error,
    opt_bool,
    parse_sampling,
    parse_token_ids,
    parse_tools,
    prompt_ids,
    raw_prompts,
)
from .state import MAX_VERSION, STATE_KEY, ServerState, Snapshot, check_version
from .template import PromptTooLongError, TemplateError, token_str
from .weights import npz_size_limit, read_weights_npz

Builder = Callable[..., dict[str, Any]]

OFFLOAD_REPLY_BYTES = 256 * 1024
"""Replies that may be larger are built and encoded on a worker thread, off the event loop."""

WEIGHTS_TYPES = frozenset({"application/octet-stream", "application/x-npz"})


async def respond(
    request: web.Request,
    gens: Sequence[Generation],
    ctx: payloads.ReplyContext,
    build: Builder,
    size_bound: int,
    opening: Sequence[ChoiceState] = (),
) -> web.StreamResponse:
    """Run the generations and reply with ``build``'s payloads, whole or streamed."""
    state = request.app[STATE_KEY]

    def used() -> dict[str, int]:
        completion = sum(len(c.token_ids) for g in gens for c in g.choices)
        return payloads.usage_of(ctx.prompt_tokens, completion)

    if not ctx.params.stream:
        for g in gens:
            await drive(g, state.latency_s, state.latency_per_token_s)
        pieces = [Piece(c, 0, c.text) for g in gens for c in g.choices]

        def whole() -> bytes:
            return encode(build(ctx, pieces, False, used()))

        if size_bound > OFFLOAD_REPLY_BYTES:
            body = await asyncio.get_running_loop().run_in_executor(None, whole)
        else:
            body = whole()
        return json_response(None, version=ctx.version, encoded=body)

    sse = SSEWriter(request, state.limits.read_timeout_s)
    await sse.start()
    if opening:
        await sse.send([build(ctx, [], True, opening=opening)])

    async def on_step(pieces: list[Piece]) -> bool:
        return await sse.send([build(ctx, [piece], True) for piece in pieces])

    for g in gens:
        await drive(g, state.latency_s, state.latency_per_token_s, on_step)
    if ctx.params.include_usage:
        await sse.send([build(ctx, [], True, used())])
    return await sse.finish()


def new_id(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex}"


def reply_context(
    state: ServerState, snap: Snapshot, rid: str, params: SamplingRequest,
    prompt: list[int], prompt_tokens: int, tools: Sequence[Any] = (), output_mode: str = "tokens",
) -> payloads.ReplyContext:  # fmt: skip
    return payloads.ReplyContext(
        id=rid,
        created=int(time.time()),
        model=state.model_name,
        version=snap.version,
        params=params,
        prompt_ids=prompt,
        prompt_tokens=prompt_tokens,
        tools=tools,
        output_mode=output_mode,
    )


def render_prompt(
    state: ServerState, messages: Any, tools: Sequence[Any], **options: bool
) -> list[int]:
    """The chat template's ids, refused early (400) when they cannot fit the context."""
    limit = state.max_model_len
    try:
        return state.template.render(messages, tools or None, limit=limit, **options)
    except PromptTooLongError as e:
        raise context_error(e.at_least, limit, "messages", at_least=True) from None
    except TemplateError as e:
        raise bad("messages", str(e)) from None


def checked_size(
    state: ServerState, ctx: payloads.ReplyContext, budgets: Sequence[int], echoed_ids: int
) -> int:
    """The reply's size bound, after refusing a request that is too large (400)."""
    bound = payloads.size_bound(ctx, budgets, echoed_ids, state.token_bytes)
    check_request_size(sum(budgets) * ctx.params.n, bound, state.limits)
    return bound


@dataclass(frozen=True)
class ChatPrompt:
    """A validated chat request: what to sample from, and how."""

    params: SamplingRequest
    tools: list[Any]
    tool_choice: Any
    tool_mode: bool
    prompt: list[int]
    max_tokens: int


async def read_chat(request: web.Request) -> ChatPrompt:
    """The chat request in ``request`` checked and rendered (chat and render routes)."""
    state = request.app[STATE_KEY]
    body = await read_json(request)
    check_model(body, state.model_name)
    params = parse_sampling(body, chat=True)
    tools, tool_mode = parse_tools(body)
    prompt = render_prompt(state, body.get("messages"), tools)
    max_tokens = completion_budget(len(prompt), state.max_model_len, params, "messages")
    return ChatPrompt(params, tools, body.get("tool_choice"), tool_mode, prompt, max_tokens)


async def chat_completions(request: web.Request) -> web.StreamResponse:
    state = request.app[STATE_KEY]
    chat = await read_chat(request)
    params, prompt = chat.params, chat.prompt
    snap = state.snapshot  # one read: a weight update may swap it from another thread
    ctx = reply_context(state, snap, new_id("chatcmpl"), params, prompt, len(prompt), chat.tools)
    bound = checked_size(state, ctx, [chat.max_tokens], len(prompt))
    seed = state.seed_for(params.seed)
    gen = Generation(snap.policy, prompt, params, chat.max_tokens, seed, chat.tool_mode)
    return await respond(request, [gen], ctx, payloads.chat, bound, opening=gen.choices)


async def completions(request: web.Request) -> web.StreamResponse:
    state = request.app[STATE_KEY]
    body = await read_json(request)
    check_model(body, state.model_name)
    params = parse_sampling(body, chat=False)
    if body.get("echo"):
        raise bad("echo", "'echo' is not supported", code="unsupported_parameter")
    raw = raw_prompts(body)
    check_request_size(len(raw) * params.n, 0, state.limits)  # >= 1 token each, before any work
    prompts = [prompt_ids(p, state.max_model_len) for p in raw]
    if any(not p for p in prompts):
        raise bad("prompt", "'prompt' must not be empty")
    budgets = [completion_budget(len(p), state.max_model_len, params, "prompt") for p in prompts]
    snap = state.snapshot
    ctx = reply_context(state, snap, new_id("cmpl"), params, [], sum(len(p) for p in prompts))
    echoed = params.n * ctx.prompt_tokens if params.return_token_ids else 0
    bound = checked_size(state, ctx, budgets, echoed)
    base_seed = state.seed_for(params.seed)
    gens = [
        Generation(snap.policy, p, params, mt, base_seed + 7919 * k, first_index=k * params.n)
        for k, (p, mt) in enumerate(zip(prompts, budgets, strict=True))
    ]
    return await respond(request, gens, ctx, payloads.completion, bound)


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
    """vLLM's ``/tokenize`` (vLLM 0.33.0 ``serve/tokenize/protocol.py:23-205``).

    ``{"messages", "tools"?, "add_generation_prompt"?, "continue_final_message"?}``
    renders the chat template as the chat route does; ``{"prompt": str}``
    encodes text. ``add_special_tokens`` and ``chat_template_kwargs`` are
    accepted and have no effect (the template adds no BOS and takes no options).
    """
    state = request.app[STATE_KEY]
    body = await read_json(request)
    check_model(body, state.model_name)
    opt_bool(body, "add_special_tokens")
    strs = opt_bool(body, "return_token_strs")
    if not isinstance(body.get("chat_template_kwargs") or {}, dict):
        raise bad("chat_template_kwargs", "'chat_template_kwargs' must be an object")
    if "messages" in body:
        tools, _ = parse_tools(body)
        options = {
            "add_generation_prompt": opt_bool(body, "add_generation_prompt", True),
            "continue_final_message": opt_bool(body, "continue_final_message"),
        }
        tokens = render_prompt(state, body["messages"], tools, **options)
    elif isinstance(body.get("prompt"), str):
        tokens = prompt_ids(body["prompt"], state.max_model_len + 1)
    else:
        raise bad("prompt", "give 'messages' or a string 'prompt'")
    return json_response(
        {
            "tokens": tokens,
            "count": len(tokens),
            "max_model_len": state.max_model_len,
            "token_strs": [token_str(t, False) for t in tokens] if strs else None,
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
    """``np.savez`` bytes (``application/octet-stream``) + ``?version=N`` (default: current + 1).

    There is no server-side path form: it let any client probe which files
    exist (issue 12.13). The upload is checked against the served shapes
    before it is inflated (see weights.py).
    """
    state = request.app[STATE_KEY]
    if request.content_type not in WEIGHTS_TYPES:
        raise unsupported_type("application/octet-stream (the np.savez bytes)")
    version_raw = request.query.get("version")
    try:
        version = check_version(state.snapshot.version + 1 if version_raw is None else int(version_raw))
    except ValueError:
        raise bad("version", f"'version' must be an integer in [0, {MAX_VERSION}] (int32, "
                             "as records store it)") from None  # fmt: skip
    shapes = state.snapshot.policy.weight_shapes()
    data = await read_body(request, npz_size_limit(shapes), state.limits.read_timeout_s)
    if not data:
        raise bad("body", "empty body; send the .npz bytes")
    loop = asyncio.get_running_loop()
    try:
        weights = await loop.run_in_executor(None, read_weights_npz, data, shapes)
        await loop.run_in_executor(None, state.set_weights, weights, version)
    except ValueError as e:
        raise bad("weights", f"could not load weights: {e}") from None
    return json_response({"status": "ok", "weight_version": version}, version=version)
