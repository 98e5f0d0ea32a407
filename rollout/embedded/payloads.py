"""Reply bodies, one builder per endpoint: a whole reply or one stream chunk.

Each builder takes :class:`~rollout.embedded.engine.Piece` s. Not streaming,
that is one piece per choice holding all its tokens; streaming, one piece
per chunk holding a step's token. So a choice's fields are built by the same
code either way, and a streamed reply concatenates to the whole one.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from functools import cache
from typing import Any

import numpy as np

from .engine import ChoiceState, Piece
from .policy import Distribution
from .protocol import SamplingRequest
from .template import token_bytes, token_str, tool_call_arguments


@dataclass(frozen=True)
class ReplyContext:
    """What every payload of one request shares."""

    id: str
    created: int
    model: str
    version: int
    params: SamplingRequest
    prompt_ids: list[int]
    """The prompt (chat); completions carry each choice's own (``ChoiceState.prompt``)."""
    prompt_tokens: int
    tools: Sequence[Any] = ()
    output_mode: str = "tokens"
    """generate only: "text" adds each choice's text."""


# -------------------------------------------------------------------- generate


def _generate_choice(ctx: ReplyContext, piece: Piece) -> dict[str, Any]:
    p, c, start = ctx.params, piece.choice, piece.start
    choice: dict[str, Any] = {
        "index": c.index,
        "finish_reason": c.finish_reason,
        "stop_reason": c.stop_reason,
        "token_ids": c.token_ids[start:],
        "logprobs": None,
    }
    if ctx.output_mode == "text":
        choice["text"] = piece.text
    if p.logprobs:
        choice["logprobs"] = {
            "content": [
                generate_logprob_entry(t, lp, d, p.top_logprobs)
                for t, lp, d in zip(
                    c.token_ids[start:], c.logprobs[start:], c.dists[start:], strict=True
                )
            ]
        }
    if c.finish_reason is not None:  # one snapshot sampled the whole choice: one span
        choice["weight_versions"] = [{"version": str(ctx.version), "start": 0,
                                      "end": len(c.token_ids)}]  # fmt: skip
    return choice


def generate(
    ctx: ReplyContext, pieces: Sequence[Piece], stream: bool, usage: dict[str, int] | None = None
) -> dict[str, Any]:
    """An ``/inference/v1/generate`` reply or stream chunk, vLLM 0.33's layout.

    (vLLM 0.33.0 ``token_in_token_out/protocol.py:593-625``, streaming
    ``serving.py:646-820``.) Chunks carry delta ``token_ids``/``logprobs``;
    ``weight_versions`` comes with a choice's last chunk; ``prompt_token_ids``
    (``return_token_ids``) with the first; usage per chunk with
    ``continuous_usage_stats``, or in a final choice-less chunk.
    """
    p = ctx.params
    out: dict[str, Any] = {"request_id": ctx.id, "output_mode": ctx.output_mode}
    if not stream:
        out.update(model=ctx.model, created=ctx.created, usage=usage, prompt_logprobs=None)
    out["choices"] = [_generate_choice(ctx, piece) for piece in pieces]
    if stream and usage is None and p.continuous_usage and pieces:
        usage = usage_of(ctx.prompt_tokens, len(pieces[0].choice.token_ids))
    if stream and usage is not None:
        out["usage"] = usage
    # The stream's first chunk is the first step's choice 0 (choices advance in lockstep).
    first = bool(pieces) and pieces[0].start == 0 and pieces[0].choice.index == 0
    if p.return_token_ids and (not stream or first):
        out["prompt_token_ids"] = ctx.prompt_ids
    out["weight_version"] = ctx.version
    return out


# ------------------------------------------------------------- logprob entries


@cache
def _named(token_id: int, as_ids: bool) -> tuple[str, list[int]]:
    """A token's name in logprobs and its bytes, once per token (the lists are never mutated).

    Named ``token_id:N``, its bytes are that name's, as vLLM's chat route sends them
    (``bytes=list(token.encode("utf-8", errors="replace"))`` of the name it chose,
    ``_get_top_logprobs`` / ``_create_chat_logprobs`` in vLLM's serving_chat.py)."""
    name = token_str(token_id, as_ids)
    return name, list(name.encode("utf-8")) if as_ids else list(token_bytes(token_id))


def _top(dist: Distribution, top: int) -> zip[tuple[int, float]]:
    """The top candidates as Python ints and floats (``tolist`` converts in one C pass)."""
    return zip(dist.token_ids[:top].tolist(), dist.logprobs[:top].tolist(), strict=True)


def chat_logprob_entry(
    token_id: int, logprob: float, dist: Distribution, top: int, as_ids: bool
) -> dict[str, Any]:
    """One ``choices[i].logprobs.content[j]`` entry."""
    tops = []
    for t, lp in _top(dist, top):
        name, raw = _named(t, as_ids)
        tops.append({"token": name, "logprob": lp, "bytes": raw})
    name, raw = _named(token_id, as_ids)
    return {"token": name, "logprob": logprob, "bytes": raw, "top_logprobs": tops}


def completion_logprobs(
    token_ids: list[int],
    logprobs: list[float],
    dists: list[Distribution],
    top: int,
    as_ids: bool,
    text_offset: int = 0,
) -> dict[str, Any]:
    """Legacy ``/v1/completions`` logprobs block for a run of tokens."""
    tokens = [_named(t, as_ids)[0] for t in token_ids]
    offsets: list[int] = []
    pos = text_offset
    for t in token_ids:
        offsets.append(pos)
        pos += len(_named(t, False)[0])
    tops: list[dict[str, float]] | None = None
    if top:
        tops = [{_named(t, as_ids)[0]: lp for t, lp in _top(d, top)} for d in dists]
    return {
        "tokens": tokens,
        "token_logprobs": list(logprobs),
        "top_logprobs": tops,
        "text_offset": offsets,
    }


def generate_logprob_entry(
    token_id: int, logprob: float, dist: Distribution, top: int
) -> dict[str, Any]:
    """One ``/inference/v1/generate`` logprob entry, vLLM 0.33's layout.

    ``top_logprobs`` holds the sampled token first, then the top ``top``
    (vLLM 0.33.0 ``scale_out/token_in_token_out/protocol.py:453-483`` and
    ``serving.py:876-922``); ranks are 1-based in the sampling distribution.
    Only tokens with non-zero probability are listed, as on the chat route.
    """
    rank = int(np.flatnonzero(dist.token_ids == token_id)[0]) + 1
    sampled = {"token_id": token_id, "logprob": logprob, "rank": rank}
    tops = [sampled]
    for r, (t, lp) in enumerate(_top(dist, top), 1):
        tops.append({"token_id": t, "logprob": lp, "rank": r})
    return {**sampled, "top_logprobs": tops}


# ------------------------------------------------------------------ size bound


def size_bound(
    ctx: ReplyContext, budgets: Sequence[int], echoed_ids: int, token_bytes: int
) -> int:
    """An upper bound of the reply's bytes (every chunk, when streaming), before sampling.

    ``budgets``: max_tokens of each prompt (each gets ``n`` choices);
    ``echoed_ids``: prompt ids the reply repeats; ``token_bytes``: the
    longest token the policy can emit. Every string is counted at 6-7 JSON
    bytes per byte (``\\uXXXX``, escaped again inside tool-call arguments),
    every number at its longest; tests check real replies stay below it.
    """
    p = ctx.params
    choices = len(budgets) * p.n
    tokens = sum(budgets) * p.n
    names = sum(len(str(t.get("function", {}).get("name", ""))) for t in ctx.tools[:1])
    chunk = 400 + 6 * (len(ctx.model) + len(ctx.id))  # one stream chunk's envelope
    per_token = 8 + 7 * token_bytes
    if p.logprobs:  # the token, its top-k (and the sampled token again, in generate's layout)
        per_token += (p.top_logprobs + 2) * (96 + 11 * token_bytes)
    if p.stream:
        per_token += chunk
    return 1024 + chunk + 8 * echoed_ids + choices * (chunk + 6 * names) + tokens * per_token


def usage_of(prompt_tokens: int, completion_tokens: int) -> dict[str, int]:
    return {
        "prompt_tokens": prompt_tokens,
        "completion_tokens": completion_tokens,
        "total_tokens": prompt_tokens + completion_tokens,
    }


def _tool_call(ctx: ReplyContext, c: ChoiceState) -> dict[str, Any]:
    """The completion as a call of the first tool, ``{"arg": ...}`` (see template.py)."""
    first = ctx.tools[0] if ctx.tools else None
    fn = first.get("function", {}) if isinstance(first, Mapping) else {}
    return {
        "id": f"call_{ctx.id[-12:]}_{c.index}",
        "type": "function",
        "function": {
            "name": fn.get("name", "tool"),
            "arguments": tool_call_arguments(c.tool_arg or ""),
        },
    }


def _envelope(ctx: ReplyContext, obj: str, choices: list[dict[str, Any]]) -> dict[str, Any]:
    return {"id": ctx.id, "created": ctx.created, "model": ctx.model, "object": obj,
            "choices": choices}  # fmt: skip


def _finish(
    ctx: ReplyContext, out: dict[str, Any], stream: bool, usage: dict[str, int] | None
) -> dict[str, Any]:
    """Usage (every whole reply; stream chunks only with include_usage) and the version."""
    if not stream or ctx.params.include_usage:
        out["usage"] = usage
    out["weight_version"] = ctx.version
    return out


# ------------------------------------------------------------------------ chat


def _chat_choice(ctx: ReplyContext, piece: Piece, stream: bool) -> dict[str, Any]:
    p, c, start = ctx.params, piece.choice, piece.start
    body: dict[str, Any]
    if c.tool_arg is not None:
        call = _tool_call(ctx, c)
        body = (
            {"tool_calls": [{"index": 0, **call}]}
            if stream
            else {"role": "assistant", "content": None, "tool_calls": [call]}
        )
    elif stream:
        body = {"content": piece.text} if piece.text else {}
    else:
        body = {"role": "assistant", "content": piece.text}
    choice: dict[str, Any] = {
        "index": c.index,
        "delta" if stream else "message": body,
        "logprobs": None,
        "finish_reason": c.finish_reason,
    }
    if p.logprobs:
        choice["logprobs"] = {
            "content": [
                chat_logprob_entry(t, lp, d, p.top_logprobs, p.tokens_as_ids)
                for t, lp, d in zip(
                    c.token_ids[start:], c.logprobs[start:], c.dists[start:], strict=True
                )
            ]
        }
    if p.return_token_ids:
        choice["token_ids"] = c.token_ids[start:]
    return choice


def _chat_opening(ctx: ReplyContext, c: ChoiceState) -> dict[str, Any]:
    choice: dict[str, Any] = {
        "index": c.index,
        "delta": {"role": "assistant", "content": ""},
        "logprobs": None,
        "finish_reason": None,
    }
    if ctx.params.return_token_ids:
        choice["token_ids"] = []
    return choice


def chat(
    ctx: ReplyContext,
    pieces: Sequence[Piece],
    stream: bool,
    usage: dict[str, int] | None = None,
    opening: Sequence[ChoiceState] = (),
) -> dict[str, Any]:
    """A ``chat.completion``, or a ``chat.completion.chunk`` when streaming.

    ``opening``: the first chunk of a stream, the assistant role for each of
    these choices (and the prompt ids, with ``return_token_ids``).
    """
    choices = [_chat_opening(ctx, c) for c in opening]
    choices += [_chat_choice(ctx, piece, stream) for piece in pieces]
    obj = "chat.completion.chunk" if stream else "chat.completion"
    out = _finish(ctx, _envelope(ctx, obj, choices), stream, usage)
    if ctx.params.return_token_ids and (opening or not stream):
        out["prompt_token_ids"] = ctx.prompt_ids
    return out


# ----------------------------------------------------------------- completions


def _completion_choice(ctx: ReplyContext, piece: Piece, stream: bool) -> dict[str, Any]:
    p, c, start = ctx.params, piece.choice, piece.start
    choice: dict[str, Any] = {
        "index": c.index,
        "text": piece.text,
        "logprobs": None,
        "finish_reason": c.finish_reason,
    }
    if p.logprobs:
        # Offsets count released text; streamed, this piece's text was just released.
        offset = c.emitted - len(piece.text) if stream else 0
        choice["logprobs"] = completion_logprobs(
            c.token_ids[start:], c.logprobs[start:], c.dists[start:],
            p.top_logprobs, p.tokens_as_ids, offset,
        )  # fmt: skip
    if p.return_token_ids:
        if start == 0:
            choice["prompt_token_ids"] = c.prompt
        choice["token_ids"] = c.token_ids[start:]
    return choice


def completion(
    ctx: ReplyContext, pieces: Sequence[Piece], stream: bool, usage: dict[str, int] | None = None
) -> dict[str, Any]:
    """A ``text_completion`` (whole, or one stream chunk); prompt ids go per choice."""
    choices = [_completion_choice(ctx, piece, stream) for piece in pieces]
    return _finish(ctx, _envelope(ctx, "text_completion", choices), stream, usage)
