"""A finished reply served as a stream: how token mode answers `stream=True` calls.

The token routes generate the whole reply first, so a streaming caller gets
it replayed as `ChatCompletionChunk`s: the role and content (or tool calls)
in one delta, the finish reason, then usage when `stream_options` asked for
it. The objects iterate and close like the SDK's `Stream` / `AsyncStream`
(frameworks such as CAMEL check for `__iter__` plus `__enter__`).
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any


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
    return [ChatCompletionChunk.model_validate(chunk) for chunk in out]


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
