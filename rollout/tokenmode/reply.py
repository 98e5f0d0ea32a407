"""The reply the agent gets in token mode: a `ChatCompletion`, or its chunks replayed.

`chat_completion` builds the same object the chat endpoint would have sent.
The token routes generate the whole reply first, so a streaming caller gets
it replayed as `ChatCompletionChunk`s: the role and content (or tool calls)
in one delta, the finish reason, then usage when `stream_options` asked for
it. The objects iterate and close like the SDK's `Stream` / `AsyncStream`
(frameworks such as CAMEL check for `__iter__` plus `__enter__`).
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from typing import Any

from rollout.reply_object import sdk_object
from rollout.tokenmode.plan import Generation

OPENAI_FINISH = frozenset({"stop", "length", "tool_calls", "content_filter", "function_call"})
"""The finish reasons the SDK's `ChatCompletion` types name."""
SERVER_FINISH = frozenset({"abort", "error", "repetition"})
"""What vLLM's chat endpoint also sends, as a plain string (`FINISH_REASON_STRINGS`,
vllm/v1/engine/__init__.py; `finish_reason: str | None` in
vllm/entrypoints/openai/chat_completion/protocol.py @002032ee), and SGLang's "abort"
(`ChatCompletionResponseChoice.finish_reason`, sglang/srt/entrypoints/openai/protocol.py).
The SDK does not validate replies (`construct_type`), so messages mode hands them to the
agent as they are; token mode does the same."""


def raw_finish(value: Any) -> str:
    """A server's finish reason as the record keeps it: its text ("stop" when it sent none)."""
    if value is None or value == "":
        return "stop"  # vLLM's default (`finish_reason: str | None = "stop"`)
    return value if isinstance(value, str) else json.dumps(value, default=str)[:100]


def agent_finish(raw: str | None) -> str:
    """The finish reason the agent gets: what the chat endpoint would have sent, or "stop"
    for a value no server sends (the record keeps the raw one, with a note)."""
    return raw if raw in OPENAI_FINISH or raw in SERVER_FINISH else "stop"


def chat_completion(gen: Generation, model: str, *, logprobs: dict[int, list[Any]] | None) -> dict[str, Any]:
    """The reply the agent gets: a ChatCompletion, with vLLM's id fields like `return_token_ids`.

    `logprobs`: each choice's `logprobs.content` as the chat endpoint builds it (token text,
    bytes, top_logprobs; see `Dialect.logprob_views`), or None when the agent did not ask."""
    choices = []
    for c in gen.choices:
        block: dict[str, Any] | None = None
        if logprobs is not None and c.index in logprobs:
            block = {"content": logprobs[c.index]}
        choices.append({
            "index": c.index,
            "message": {"role": "assistant", **(c.message or {"content": c.text or ""})},
            "finish_reason": agent_finish(c.finish_reason),
            "logprobs": block,
            "token_ids": c.token_ids,
        })  # fmt: skip
    n_out = sum(len(c.token_ids) for c in gen.choices)
    return {
        "id": gen.id if gen.id.startswith("chatcmpl-") else f"chatcmpl-{gen.id}",
        "object": "chat.completion",
        "created": int(time.time()),
        "model": model,
        "choices": choices,
        "usage": {
            "prompt_tokens": len(gen.prompt_ids),
            "completion_tokens": n_out,
            "total_tokens": len(gen.prompt_ids) + n_out,
        },
        "prompt_token_ids": gen.prompt_ids,
        **({"weight_version": gen.weight_version} if gen.weight_version is not None else {}),
    }


def chunks(reply: dict[str, Any], *, include_usage: bool) -> list[Any]:
    """The `ChatCompletionChunk`s a streaming server would have sent for `reply`."""
    from openai.types.chat import ChatCompletionChunk

    head = {k: reply[k] for k in ("id", "created", "model")}
    head["object"] = "chat.completion.chunk"
    out: list[dict[str, Any]] = []
    for c in reply["choices"]:
        message = dict(c["message"])
        delta: dict[str, Any] = {"role": "assistant", "content": message.get("content")}
        for key in ("reasoning_content", "reasoning"):
            if message.get(key) is not None:
                delta[key] = message[key]
        if message.get("tool_calls"):
            delta["tool_calls"] = [{"index": i, **call} for i, call in enumerate(message["tool_calls"])]
        out.append({**head, "choices": [{"index": c["index"], "delta": delta, "logprobs": c.get("logprobs"),
                                         "finish_reason": None}]})  # fmt: skip
        out.append({**head, "choices": [{"index": c["index"], "delta": {}, "finish_reason": c["finish_reason"]}]})
    if include_usage:
        out.append({**head, "choices": [], "usage": reply.get("usage")})
    return [sdk_object(ChatCompletionChunk, chunk) for chunk in out]


class ReplayStream:
    """A sync stream over ready chunks."""

    def __init__(self, items: list[Any]) -> None:
        self._it: Iterator[Any] = iter(items)

    def __iter__(self) -> ReplayStream:
        return self

    def __next__(self) -> Any:
        return next(self._it)

    def close(self) -> None:
        self._it = iter(())

    def __enter__(self) -> ReplayStream:
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()


class AsyncReplayStream:
    """The async twin of `ReplayStream`."""

    def __init__(self, items: list[Any]) -> None:
        self._it: Iterator[Any] = iter(items)

    def __aiter__(self) -> AsyncReplayStream:
        return self

    async def __anext__(self) -> Any:
        try:
            return next(self._it)
        except StopIteration:
            raise StopAsyncIteration from None

    async def close(self) -> None:
        self._it = iter(())

    async def aclose(self) -> None:
        await self.close()

    async def __aenter__(self) -> AsyncReplayStream:
        return self

    async def __aexit__(self, *exc: Any) -> None:
        await self.close()
