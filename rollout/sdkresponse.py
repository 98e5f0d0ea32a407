"""The SDK's raw responses (`with_raw_response`, `with_streaming_response`) on a recording client.

openai's `to_raw_response_wrapper` / `to_streamed_response_wrapper` (openai 3.60
`_legacy_response.py`, `_response.py`) wrap a resource's *bound* `create` /
`parse` and mark the request with the `X-Stainless-Raw-Response` header: "true"
gives a read `LegacyAPIResponse`, "stream" an unread `APIResponse` (inside the
SDK's response context manager). The recording proxies rebuild those views over
themselves (`rollout.wrap`), so such a call reaches the recorder; this module
turns what comes back into a record:

- a reply is parsed once, at once (the SDK caches the parse per type, so the
  agent's own `parse()` returns that same object; `.headers`, `.text`,
  `.http_response` are untouched);
- a stream is re-classed so that `parse()` returns a recording stream; one the
  agent reads as bytes instead fails its call with that reason (when the
  response closes, or when the episode ends), so it is never silently missing;
- in token mode the call never reaches the chat endpoint, so there is no HTTP
  response to hand back: `synthesize` builds the SDK's own response class over
  an in-memory `httpx2.Response` whose body is the JSON (or SSE) the chat
  endpoint would have sent. `parse()` then runs the SDK's own parsing (a
  `ChatCompletion`, or a real `Stream` of chunks); its headers are ours
  (`content-type`, and `x-rollout-sent-as: tokens` so a reader can tell).
"""

from __future__ import annotations

import datetime
import inspect
from collections.abc import Callable
from typing import Any

RAW_HEADER = "X-Stainless-Raw-Response"  # openai/_constants.py RAW_RESPONSE_HEADER
SENT_AS_HEADER = "x-rollout-sent-as"

Tap = Callable[[Any, Any, Any], Any]
"""Wraps a stream so it records: (stream, pending call, client) -> recording stream."""

_RECORDING_TYPES: dict[type, type] = {}


def raw_kind(sent: dict[str, Any]) -> str | None:
    """"true" (`with_raw_response`), "stream" (`with_streaming_response`) or None."""
    headers = sent.get("extra_headers")
    if not isinstance(headers, dict):
        return None
    value = headers.get(RAW_HEADER)
    return value if value in ("true", "stream") else None


def is_sdk_response(result: Any) -> bool:
    """Whether `result` is one of the SDK's raw response objects."""
    from openai._legacy_response import LegacyAPIResponse
    from openai._response import BaseAPIResponse

    return isinstance(result, (LegacyAPIResponse, BaseAPIResponse))


def settle(result: Any, pending: Any, root: Any, tap: Tap, *, stream: bool) -> Any:
    """Record a sync raw response (see the module docstring); the response, for the agent.
    `stream`: the request asked for a stream."""
    if stream:
        return _recording(result, pending, root, tap)
    try:
        reply = result.parse()
    except Exception as exc:  # e.g. a structured reply cut off by max_tokens: the agent's parse() raises it
        reply = _body(result, pending, exc)
    if reply is not None:
        pending.record(reply, root)
    return result


def _body(result: Any, pending: Any, exc: Exception) -> Any:
    """The reply as the JSON body, when the SDK's parse fails: the generation is still recorded,
    and the agent meets the SDK's error at its own `parse()`, as without the wrapper."""
    try:
        return result.http_response.json()
    except Exception:
        pending.fail(exc)
        return None


async def asettle(result: Any, pending: Any, root: Any, tap: Tap, record: Callable[..., Any], *, stream: bool) -> Any:
    """The async twin of `settle`; `record` runs `pending.record` (off the loop where it blocks)."""
    if stream:
        return _recording(result, pending, root, tap)
    try:
        reply = result.parse()
        if inspect.isawaitable(reply):  # AsyncAPIResponse.parse is a coroutine, LegacyAPIResponse's is not
            reply = await reply
    except Exception as exc:
        reply = _body(result, pending, exc)
    if reply is not None:
        await record(pending, pending.record, reply, root)
    return result


class _Tapped:
    """What a re-classed streaming raw response knows: its call and the recording stream it gave."""

    __slots__ = ("pending", "root", "stream", "tap")

    def __init__(self, pending: Any, root: Any, tap: Tap) -> None:
        self.pending = pending
        self.root = root
        self.tap = tap
        self.stream: Any = None

    def wrap(self, parsed: Any) -> Any:
        from openai import AsyncStream, Stream

        if not isinstance(parsed, (Stream, AsyncStream)):
            return parsed  # e.g. parse(to=httpx2.Response): the agent reads bytes itself
        if self.stream is None:
            self.stream = self.tap(parsed, self.pending, self.root)
        return self.stream

    def unread(self, when: str) -> None:
        """The body was never read through `parse()`: its call fails with the reason."""
        if self.pending.done:
            return
        if self.stream is not None:  # what was read is recorded, as partial
            tap = getattr(self.stream, "_tap", None) or self.stream.__dict__.get("_rollout_tap")
            tap.record(complete=False)
            return
        from rollout.errors import UnrecordedCallError

        self.pending.fail(UnrecordedCallError(
            f"streamed raw response {when} without parse(): its chunks were not recorded"
        ))  # fmt: skip


def _recording(result: Any, pending: Any, root: Any, tap: Tap) -> Any:
    """Re-class a streaming raw response so its `parse()` gives a recording stream."""
    state = _Tapped(pending, root, tap)
    result.__dict__["_rollout_tap"] = state
    result.__class__ = _recording_type(type(result))
    pending.on_episode_end(lambda: state.unread("left at the end of its episode"))
    return result


def _recording_type(cls: type) -> type:
    """A cached subclass of the SDK's response class whose `parse()` (and `close()`) record."""
    if cls in _RECORDING_TYPES:
        return _RECORDING_TYPES[cls]
    namespace: dict[str, Any] = {}
    if inspect.iscoroutinefunction(cls.parse):  # type: ignore[attr-defined]

        async def aparse(self: Any, *, to: Any = None) -> Any:
            return self.__dict__["_rollout_tap"].wrap(await cls.parse(self, to=to))  # type: ignore[attr-defined]

        namespace["parse"] = aparse
    else:

        def parse(self: Any, *, to: Any = None) -> Any:
            return self.__dict__["_rollout_tap"].wrap(cls.parse(self, to=to))  # type: ignore[attr-defined]

        namespace["parse"] = parse
    close = getattr(cls, "close", None)
    if close is not None and inspect.iscoroutinefunction(close):

        async def aclose(self: Any) -> None:
            await close(self)
            self.__dict__["_rollout_tap"].unread("closed")

        namespace["close"] = aclose
    elif close is not None:

        def close_(self: Any) -> None:
            close(self)
            self.__dict__["_rollout_tap"].unread("closed")

        namespace["close"] = close_
    sub = type(f"Recording{cls.__name__}", (cls,), namespace)
    sub.__module__ = cls.__module__
    _RECORDING_TYPES[cls] = sub
    return sub


# --- token mode: the raw response the chat endpoint would have sent ---------------------


def _sse(chunks: list[Any]) -> bytes:
    lines = [b"data: " + chunk.model_dump_json().encode() + b"\n\n" for chunk in chunks]
    return b"".join(lines) + b"data: [DONE]\n\n"


def _response(kind: str, root: Any, body: bytes, *, stream: bool, elapsed_s: float) -> Any:
    import httpx2
    from openai import AsyncStream, Stream
    from openai._legacy_response import LegacyAPIResponse
    from openai._models import FinalRequestOptions
    from openai._response import APIResponse, AsyncAPIResponse
    from openai.types.chat import ChatCompletion, ChatCompletionChunk

    is_async = _is_async_client(root)
    url = str(getattr(root, "base_url", "http://localhost/")).rstrip("/") + "/chat/completions"
    raw = httpx2.Response(
        200,
        headers={"content-type": "text/event-stream" if stream else "application/json", SENT_AS_HEADER: "tokens"},
        content=body,
        request=httpx2.Request("POST", url),
    )
    raw.elapsed = datetime.timedelta(seconds=elapsed_s)
    cls: Any = LegacyAPIResponse if kind == "true" else (AsyncAPIResponse if is_async else APIResponse)
    stream_cls = AsyncStream[ChatCompletionChunk] if is_async else Stream[ChatCompletionChunk]
    return cls(
        raw=raw,
        cast_to=ChatCompletion,
        client=root,
        stream=stream,
        stream_cls=stream_cls,
        options=FinalRequestOptions.construct(method="post", url="/chat/completions"),
    )


def _is_async_client(root: Any) -> bool:
    from openai import AsyncOpenAI

    return isinstance(root, AsyncOpenAI) or type(getattr(root, "_client", None)).__name__.startswith("Async")


def synthesize(kind: str, reply: Any, root: Any, *, elapsed_s: float) -> Any:
    """The SDK's raw response for a token-mode reply (a ChatCompletion or a replayed stream)."""
    if hasattr(reply, "model_dump_json"):
        return _response(kind, root, reply.model_dump_json().encode(), stream=False, elapsed_s=elapsed_s)
    return _response(kind, root, _sse(list(reply)), stream=True, elapsed_s=elapsed_s)


async def asynthesize(kind: str, reply: Any, root: Any, *, elapsed_s: float) -> Any:
    """The async twin of `synthesize` (a replayed async stream is drained here: it is in memory)."""
    if hasattr(reply, "model_dump_json"):
        return _response(kind, root, reply.model_dump_json().encode(), stream=False, elapsed_s=elapsed_s)
    return _response(kind, root, _sse([chunk async for chunk in reply]), stream=True, elapsed_s=elapsed_s)


def _sdk_client(root: Any) -> bool:
    from openai._base_client import BaseClient

    return isinstance(root, BaseClient)


def as_sdk_stream(reply: Any, root: Any) -> Any:
    """A token-mode replayed stream as the SDK's own `Stream` (what a streamed chat call returns
    without the wrapper: `.response`, the stream helpers); unchanged for a client not the SDK's."""
    if not _sdk_client(root) or hasattr(reply, "model_dump_json"):
        return reply
    return synthesize("true", reply, root, elapsed_s=0.0).parse()


async def aas_sdk_stream(reply: Any, root: Any) -> Any:
    """The async twin of `as_sdk_stream`."""
    if not _sdk_client(root) or hasattr(reply, "model_dump_json"):
        return reply
    return (await asynthesize("true", reply, root, elapsed_s=0.0)).parse()

