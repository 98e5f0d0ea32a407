"""Reply bodies, one builder per endpoint: a whole reply or one stream chunk.

Each builder takes :class:`~rollout.embedded.engine.Piece` s. Not streaming,
that is one piece per choice holding all its tokens; streaming, one piece
per chunk holding a step's token. So a choice's fields are built by the same
code either way, and a streamed reply concatenates to the whole one.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from .engine import ChoiceState, Piece
from .protocol import SamplingRequest, chat_logprob_entry, completion_logprobs
from .template import tool_call_arguments


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


def usage(prompt_tokens: int, completion_tokens: int) -> dict[str, int]:
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
