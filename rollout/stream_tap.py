"""Streams that record their call: the SDK's own stream, re-classed in place.

A recorded chat stream is still the SDK's `Stream` / `AsyncStream` (frameworks
check its type): `tap_stream` gives the object a subclass whose iteration folds
each chunk (or Responses event) into one reply and records it at the last
chunk, at a usage chunk after every choice finished, or at `close()`. A
stream still open when its episode ends is recorded then, as partial, so a
call is never lost.

On a recording copy of a genuine openai client, each chat chunk is folded from
its JSON as the SDK parses it (`rollout.reply_tap`), not read back out of the
chunk object afterwards; any other stream's chunks are folded from the objects.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from compat import to_thread
from rollout import reply_tap
from rollout.call_record import TokenRecordError
from rollout.reply_ids import MALFORMED, StreamAccumulator, unreadable
from rollout.reply_ids import get as _get

if TYPE_CHECKING:
    from rollout.wrap import PendingCall


async def arecord(pending: PendingCall, record: Callable[..., Any], *args: Any, **kwargs: Any) -> None:
    """Record from async code: in a thread where recording waits on the network."""
    if pending.record_blocks:
        await to_thread(record, *args, **kwargs)
    else:
        record(*args, **kwargs)


class ChatChunks:
    """Chat chunks folded into one reply, recorded as a streamed call.

    With `read_bodies`, each chunk is folded from the JSON the SDK parses it from
    (`body_reader`, handed to `rollout.reply_tap`); a chunk whose JSON was not seen
    is folded from its object, so nothing depends on the hook firing.
    """

    def __init__(self, *, read_bodies: bool = False) -> None:
        self.acc = StreamAccumulator()
        self.chunks = 0
        self.folded = False  # the chunk in flight was folded from its JSON
        self.unread: TokenRecordError | None = None  # why it could not be, raised by `add`
        self.body_reader: reply_tap.Reader | None = self.read if read_bodies else None

    def read(self, data: dict[str, Any]) -> None:
        """Fold a chunk's JSON, inside the SDK's parse. Never raises there: an error would end the
        SDK's stream for the agent; `add` raises it once the chunk has been handed over."""
        self.chunks += 1
        self.folded = True
        try:
            self.acc.add(data, owned=True)
        except MALFORMED as exc:
            self.unread = unreadable(exc, f"stream chunk {self.chunks}")

    def add(self, chunk: Any) -> bool:
        """Fold `chunk` in (unless its JSON was); True once every choice finished (time to record)."""
        if self.folded:
            self.folded = False
            if self.unread is not None:
                err, self.unread = self.unread, None
                raise err
        else:
            self.chunks += 1
            try:
                self.acc.add(chunk)
            except MALFORMED as exc:
                raise unreadable(exc, f"stream chunk {self.chunks}")  # noqa: B904  (chained by `unreadable`)
        return self.acc.finished

    def record(self, pending: PendingCall, root: Any, *, complete: bool) -> None:
        pending.record_stream(self.acc, root, complete=complete)


_FINAL_EVENTS = ("response.completed", "response.incomplete")


class ResponseEvents:
    """Responses API stream events: the final event carries the whole `Response`, recorded as is."""

    body_reader: reply_tap.Reader | None = None  # events are read from their objects

    def __init__(self) -> None:
        self.final: Any = None
        self.error: str | None = None

    def add(self, event: Any) -> bool:
        kind = _get(event, "type")
        if kind in _FINAL_EVENTS:
            self.final = _get(event, "response")
            return True
        if kind in ("response.failed", "error"):
            self.error = f"{kind}: {_get(_get(event, 'response'), 'error') or _get(event, 'message')}"
            return True
        return False

    def record(self, pending: PendingCall, root: Any, *, complete: bool) -> None:
        if pending.done:
            return
        if self.final is not None:
            pending.record(self.final, root)
        else:
            why = self.error or ("ended" if complete else "closed") + " before its response.completed event"
            pending.fail(RuntimeError(f"Responses stream {why}"))


class _Tap:
    """One streamed call being recorded.

    Chunks (or events) are folded into one reply as the agent reads them; the
    call is recorded at the last chunk, at a usage chunk after every choice
    finished (callers may stop reading there), or at `close()`. A stream still
    open when its episode ends is recorded then, as partial, so a call is never lost.
    """

    __slots__ = ("fold", "pending", "root")

    def __init__(self, pending: PendingCall, root: Any, fold: ChatChunks | ResponseEvents) -> None:
        self.pending = pending
        self.root = root
        self.fold = fold
        pending.on_episode_end(self.finalize)

    def record(self, *, complete: bool) -> None:
        self.fold.record(self.pending, self.root, complete=complete)

    def finalize(self) -> None:
        """At the episode's end, a stream still open is recorded as partial. A stream no record
        can be read from is a failed call in the episode; the episode itself is kept."""
        try:
            self.record(complete=False)
        except Exception as exc:
            self.failed(exc)

    def add(self, chunk: Any) -> bool:
        """Fold `chunk` in; True once the call is complete (time to record)."""
        return self.fold.add(chunk)

    def failed(self, exc: BaseException) -> None:
        if not self.pending.done:
            self.pending.fail(exc)

    def next(self, step: Callable[[], Any]) -> Any:
        """The next chunk from `step()`, folded in (a sync stream)."""
        reader = self.fold.body_reader
        try:
            if reader is None:
                chunk = step()
            else:  # the SDK parses this chunk inside `step`: its JSON goes to `reader`
                token = reply_tap.read_by(reader)
                try:
                    chunk = step()
                finally:
                    reply_tap.reset(token)
        except StopIteration:
            self.record(complete=True)
            raise
        except BaseException as exc:
            self.failed(exc)
            raise
        try:
            if self.add(chunk):
                self.record(complete=True)
        except Exception as exc:  # a chunk no record can be read from: the call fails, once
            self.failed(exc)
            raise
        return chunk

    async def anext(self, step: Callable[[], Any]) -> Any:
        """The async twin of `next`."""
        reader = self.fold.body_reader
        try:
            if reader is None:
                chunk = await step()
            else:
                token = reply_tap.read_by(reader)
                try:
                    chunk = await step()
                finally:
                    reply_tap.reset(token)
        except StopAsyncIteration:
            await arecord(self.pending, self.record, complete=True)
            raise
        except BaseException as exc:
            self.failed(exc)
            raise
        try:
            if self.add(chunk):
                await arecord(self.pending, self.record, complete=True)
        except Exception as exc:
            self.failed(exc)
            raise
        return chunk


def tap_stream(stream: Any, pending: PendingCall, root: Any, fold: ChatChunks | ResponseEvents, *, is_async: bool) -> Any:
    """`stream`, recording its call as it is read.

    The SDK's own `Stream` / `AsyncStream` is re-classed in place (a cached
    subclass that folds each chunk in), so the agent keeps the SDK's type
    (`isinstance(s, openai.Stream)`, `.response`, the stream helpers built on
    it); any other stream is wrapped in a `RecordingStream`.
    """
    from openai import AsyncStream, Stream

    tap = _Tap(pending, root, fold)
    if type(stream) in (Stream, AsyncStream) or type(stream) in _STREAM_TYPES.values():
        stream.__dict__["_rollout_tap"] = tap
        stream.__class__ = _recording_stream_type(type(stream))
        return stream
    return RecordingAsyncStream(stream, tap) if is_async else RecordingStream(stream, tap)


_STREAM_TYPES: dict[type, type] = {}


def _recording_stream_type(cls: type) -> type:
    """A cached subclass of the SDK's `Stream` (or `AsyncStream`) whose chunks are folded in."""
    if cls in _STREAM_TYPES.values():
        return cls
    if cls in _STREAM_TYPES:
        return _STREAM_TYPES[cls]
    namespace: dict[str, Any] = {}
    base: Any = cls
    if hasattr(cls, "__anext__"):

        async def anext_(self: Any) -> Any:
            return await self.__dict__["_rollout_tap"].anext(lambda: base.__anext__(self))

        async def aiter_(self: Any) -> Any:
            while True:
                try:
                    chunk = await self.__anext__()
                except StopAsyncIteration:
                    return
                yield chunk

        async def aclose(self: Any) -> None:
            tap = self.__dict__["_rollout_tap"]
            await arecord(tap.pending, tap.record, complete=False)
            await base.close(self)

        namespace.update(__anext__=anext_, __aiter__=aiter_, close=aclose)
    else:

        def next_(self: Any) -> Any:
            return self.__dict__["_rollout_tap"].next(lambda: base.__next__(self))

        def iter_(self: Any) -> Any:
            while True:
                try:
                    chunk = self.__next__()
                except StopIteration:
                    return
                yield chunk

        def close(self: Any) -> None:
            self.__dict__["_rollout_tap"].record(complete=False)
            base.close(self)

        namespace.update(__next__=next_, __iter__=iter_, close=close)
    sub = type(f"Recording{cls.__name__}", (cls,), namespace)
    sub.__module__ = cls.__module__
    _STREAM_TYPES[cls] = sub
    return sub


class RecordingStream:
    """A sync stream that is not the SDK's (a duck client's): wrapped, recording its call (see `_Tap`)."""

    def __init__(self, inner: Any, tap: _Tap) -> None:
        self._inner = inner
        self._tap = tap
        self._it: Any = None

    def __getattr__(self, name: str) -> Any:
        return getattr(self._inner, name)

    def __iter__(self) -> RecordingStream:
        return self

    def __next__(self) -> Any:
        if self._it is None:
            self._it = iter(self._inner)
        return self._tap.next(lambda: next(self._it))

    def close(self) -> None:
        self._tap.record(complete=False)
        close = getattr(self._inner, "close", None)
        if close is not None:
            close()

    def __enter__(self) -> RecordingStream:
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()


class RecordingAsyncStream:
    """The async twin of `RecordingStream`."""

    def __init__(self, inner: Any, tap: _Tap) -> None:
        self._inner = inner
        self._tap = tap
        self._it: Any = None

    def __getattr__(self, name: str) -> Any:
        return getattr(self._inner, name)

    def __aiter__(self) -> RecordingAsyncStream:
        return self

    async def __anext__(self) -> Any:
        if self._it is None:
            self._it = self._inner.__aiter__()
        return await self._tap.anext(lambda: self._it.__anext__())

    async def close(self) -> None:
        await arecord(self._tap.pending, self._tap.record, complete=False)
        for name in ("close", "aclose"):
            fn = getattr(self._inner, name, None)
            if fn is not None:
                result = fn()
                if inspect.isawaitable(result):
                    await result
                return

    async def aclose(self) -> None:
        await self.close()

    async def __aenter__(self) -> RecordingAsyncStream:
        return self

    async def __aexit__(self, *exc: Any) -> None:
        await self.close()
