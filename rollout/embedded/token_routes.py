"""vLLM's token routes: generate from token ids, render a chat request, derender a reply.

Token mode sends an episode's later turns as token ids (parent prompt +
parent's sampled ids + the new turn), so the whole episode is one exact
training row. These routes speak vLLM 0.33.0's wire format
(``vllm/entrypoints/scale_out/``: ``token_in_token_out/``, ``render/``,
``derender/``), so the default offline run exercises the same protocol a
real vLLM server does. They run the same :class:`Generation` as the chat
route: the same prompt ids, seed and parameters give the same tokens and
logprobs.
"""

from __future__ import annotations

import time
from typing import Any

import numpy as np
from aiohttp import web

from . import payloads
from .engine import ChoiceState, Generation, Piece
from .handlers import checked_size, new_id, read_chat, reply_context, respond
from .httpio import json_response, read_json
from .policy import END_ID, Distribution
from .protocol import (
    MAX_TOP_LOGPROBS,
    SamplingRequest,
    bad,
    check_model,
    completion_budget,
    parse_token_ids,
    parse_tools,
)
from .state import STATE_KEY
from .template import parse_tool_call, token_bytes
from .token_protocol import DerenderRequest, GeneratedChoice, GenerateRequest, validated


async def generate(request: web.Request) -> web.StreamResponse:
    """``POST /inference/v1/generate``: token ids and engine sampling params in, token ids out."""
    state = request.app[STATE_KEY]
    body = await read_json(request)
    req = validated(GenerateRequest, body)
    check_model(body, state.model_name)
    params = req.sampling()
    prompt = req.token_ids
    max_tokens = completion_budget(len(prompt), state.max_model_len, params, "token_ids")
    parse_token_ids(prompt, "token_ids")
    parse_token_ids(sorted(params.stop_token_ids), "sampling_params.stop_token_ids")
    snap = state.snapshot
    rid = f"generate-tokens-{req.request_id or new_id('gen')}"  # vLLM prefixes the same way
    ctx = reply_context(state, snap, rid, params, prompt, len(prompt), output_mode=req.output_mode)
    bound = checked_size(state, ctx, [max_tokens], len(prompt))
    gen = Generation(snap.policy, prompt, params, max_tokens, state.seed_for(params.seed))
    return await respond(request, [gen], ctx, payloads.generate, bound)


async def render(request: web.Request) -> web.StreamResponse:
    """``POST /v1/chat/completions/render``: a chat request as the generate request it becomes.

    The reply can be sent to ``/inference/v1/generate`` as it is (vLLM 0.33.0
    ``scale_out/render/serving.py:117-226``): the template's ids, every
    sampling parameter resolved (``max_tokens`` included), and the tools in
    ``parse_context`` for the derender that follows.
    """
    state = request.app[STATE_KEY]
    chat = await read_chat(request)
    params = chat.params
    sampling = {
        "n": params.n,
        "temperature": params.temperature,
        "top_p": params.top_p,
        "seed": params.seed,
        "stop": list(params.stop) or None,
        "stop_token_ids": sorted(params.stop_token_ids) or None,
        "ignore_eos": params.ignore_eos,
        "max_tokens": chat.max_tokens,
        "logprobs": params.top_logprobs if params.logprobs else None,
        "detokenize": True,
        "skip_special_tokens": params.skip_special_tokens,
    }
    out: dict[str, Any] = {
        "token_ids": chat.prompt,
        "sampling_params": sampling,
        "model": state.model_name,
        "request_id": new_id("chatcmpl"),
        "stream": params.stream,
        "return_token_ids": params.return_token_ids,
        "parse_context": {"tools": chat.tools or None, "tool_choice": chat.tool_choice},
        "weight_version": state.snapshot.version,
    }
    if params.stream:
        out["stream_options"] = {"include_usage": params.include_usage}
    return json_response(out)


async def derender(request: web.Request) -> web.StreamResponse:
    """``POST /v1/chat/completions/derender``: a generate reply as the ChatCompletion it means.

    The message is parsed as the chat route parses its own completions
    (content without the end token, the policy's ``CALL`` tool calls when
    the chat request has tools), and logprobs and ids come in the chat
    route's layout (vLLM 0.33.0 ``scale_out/derender/serving.py:142-217``).
    """
    state = request.app[STATE_KEY]
    body = await read_json(request)
    req = validated(DerenderRequest, body)
    check_model(body, state.model_name)
    chat = req.chat_request or {}
    tools, tool_mode = parse_tools(chat)
    reply = req.generate_response
    prompt = parse_token_ids(req.prompt_token_ids or [], "prompt_token_ids")
    choices = [_rebuild(c, i, prompt, tool_mode) for i, c in enumerate(reply.choices)]
    params = SamplingRequest(
        logprobs=any(c.logprobs is not None for c in reply.choices),
        top_logprobs=MAX_TOP_LOGPROBS,  # each entry keeps the candidates the reply carried
        return_token_ids=True,
        tokens_as_ids=chat.get("return_tokens_as_token_ids") is True,
    )
    version = reply.weight_version
    ctx = payloads.ReplyContext(
        id=reply.request_id,
        created=int(time.time()),
        model=state.model_name,
        version=state.snapshot.version if version is None else version,
        params=params,
        prompt_ids=prompt,
        prompt_tokens=len(prompt) if req.prompt_tokens is None else req.prompt_tokens,
        tools=tools,
    )
    completion = sum(len(c.token_ids) for c in choices)
    pieces = [Piece(c, 0, c.text) for c in choices]
    out = payloads.chat(ctx, pieces, False, payloads.usage_of(ctx.prompt_tokens, completion))
    if req.prompt_token_ids is None:
        del out["prompt_token_ids"]
    return json_response(out, version=ctx.version)


def _rebuild(c: GeneratedChoice, i: int, prompt: list[int], tool_mode: bool) -> ChoiceState:
    """A generated choice as the engine's state, text and tool call as the engine makes them."""
    where = f"generate_response.choices.{i}"
    ids = parse_token_ids(c.token_ids, f"{where}.token_ids")
    text_ids = ids
    if c.finish_reason == "stop" and isinstance(c.stop_reason, int) and ids[-1:] == [c.stop_reason]:
        text_ids = ids[:-1]  # a stop token is not text
    raw = b"".join(token_bytes(t) for t in text_ids if t != END_ID)
    text = raw.decode("utf-8", errors="replace")
    if isinstance(c.stop_reason, str) and (at := text.find(c.stop_reason)) >= 0:
        text = text[:at]
    choice = ChoiceState(c.index, prompt, [], None, token_ids=ids, text=text,
                         finish_reason=c.finish_reason or "stop", stop_reason=c.stop_reason)  # fmt: skip
    if tool_mode and (arg := parse_tool_call(text)) is not None:
        choice.tool_arg, choice.finish_reason = arg, "tool_calls"
    if c.logprobs is not None:
        choice.logprobs, choice.dists = _read_logprobs(c.logprobs, ids, where)
    return choice


def _read_logprobs(
    block: dict[str, Any], ids: list[int], where: str
) -> tuple[list[float], list[Distribution]]:
    """Generate-layout entries (sampled token first in ``top_logprobs``) as logprobs + candidates."""
    entries = block.get("content")
    if not isinstance(entries, list) or len(entries) != len(ids):
        raise bad(f"{where}.logprobs", "logprobs.content must have one entry per token id")
    logprobs: list[float] = []
    dists: list[Distribution] = []
    for j, (entry, tid) in enumerate(zip(entries, ids, strict=True)):
        try:
            if entry["token_id"] != tid:
                raise ValueError
            tops = entry["top_logprobs"][1:]  # [0] repeats the sampled token
            top_ids = np.array([int(e["token_id"]) for e in tops], dtype=np.int64)
            top_lps = np.array([float(e["logprob"]) for e in tops], dtype=np.float64)
            logprobs.append(float(entry["logprob"]))
        except (KeyError, TypeError, ValueError):
            raise bad(f"{where}.logprobs.content.{j}",
                      "expected {token_id, logprob, rank, top_logprobs} for the token") from None  # fmt: skip
        dists.append(Distribution(top_ids, top_lps, np.arange(top_ids.size)))
    return logprobs, dists
