"""The recording client wrapper: same type as the client it wraps.

Frameworks check `isinstance(client, AsyncOpenAI)`, so `wrap_client` returns a
shallow copy of the client whose class is a cached subclass of the original
that overrides just `chat`, `beta` and `responses` (each proxied on first
access). Everything else (base URL, `get_interaction`, the HTTP pool) is the
original's.

Intercepted: `chat.completions.create` (plain and streamed),
`chat.completions.parse`, `beta.chat.completions.parse`,
`chat.completions.stream` and `responses.create`; `copy` / `with_options`
return clients that record too. Sync and async clients get
twin proxies over the same `PendingCall` logic.
"""

from __future__ import annotations

import copy
import inspect
import logging
from collections.abc import Callable
from typing import Any, Protocol

from compat.threads import to_thread
from rollout.tokens import StreamAccumulator

logger = logging.getLogger(__name__)

_OVERRIDDEN = ("chat", "beta", "responses")


class PendingCall(Protocol):
    """One call in flight, as the recorder sees it (see `rollout.recorder.PendingCall`)."""

    done: bool
    turn: Any  # token mode: set when the call goes as token ids

    @property
    def record_blocks(self) -> bool: ...  # recording may wait on the network: async callers use a thread

    def send_tokens(self) -> Any: ...

    async def asend_tokens(self) -> Any: ...

    def record(self, response: Any, client: Any) -> Any: ...

    def record_stream(self, acc: StreamAccumulator, client: Any, *, complete: bool) -> Any: ...

    def fail(self, exc: BaseException) -> None: ...

    def on_episode_end(self, finalize: Callable[[], Any]) -> None: ...


class CallSink(Protocol):
    """Where wrapped clients report their calls: a `Recorder`."""

    def start_call(
        self, kwargs: dict[str, Any], *, endpoint: str, client: Any = None
    ) -> tuple[dict[str, Any], PendingCall]: ...
_SUBCLASSES: dict[type, type] = {}


class _Namespace:
    """Passes attributes through to `inner`, except the overrides given."""

    def __init__(self, inner: Any, **overrides: Any) -> None:
        self.__wrapped__ = inner
        self.__dict__.update(overrides)

    def __getattr__(self, name: str) -> Any:
        return getattr(self.__wrapped__, name)

    def compat_forwards_to(self) -> Any:
        """`compat.Forwarding`: compat judges the resource this proxy forwards to."""
        return self.__wrapped__


def _is_stream(kwargs: dict[str, Any], result: Any) -> bool:
    if not kwargs.get("stream"):
        return False
    return not hasattr(result, "choices") and not isinstance(result, dict)


class _Completions(_Namespace):
    """`chat.completions` of a sync client."""

    def __init__(self, inner: Any, recorder: CallSink, root: Any, endpoint: str) -> None:
        super().__init__(inner)
        self._recorder = recorder
        self._root = root
        self._endpoint = endpoint

    def __getattr__(self, name: str) -> Any:
        attr = getattr(self.__wrapped__, name)
        if name == "parse" and callable(attr):
            return self._recording(attr, f"{self._endpoint}.parse")
        if name == "stream" and callable(attr):
            return self._recording_manager(attr)
        return attr

    def create(self, **kwargs: Any) -> Any:
        return self._call(self.__wrapped__.create, self._endpoint, kwargs)

    def _recording(self, fn: Any, endpoint: str) -> Any:
        def call(**kwargs: Any) -> Any:
            return self._call(fn, endpoint, kwargs)

        return call

    def _call(self, fn: Any, endpoint: str, kwargs: dict[str, Any]) -> Any:
        """Record one call: the reply, a stream wrapped to record, or an awaitable of either."""
        sent, pending = self._recorder.start_call(kwargs, endpoint=_helper(kwargs, endpoint), client=self._root)
        if pending.turn is not None:
            return self._tokens(fn, sent, pending)
        return self._messages(fn, sent, pending)

    def _tokens(self, fn: Any, sent: dict[str, Any], pending: PendingCall) -> Any:
        """Token mode: the stitched turn, or the messages path when it falls back."""
        reply = pending.send_tokens()
        return reply if reply is not None else self._messages(fn, sent, pending)

    def _messages(self, fn: Any, sent: dict[str, Any], pending: PendingCall) -> Any:
        result = _invoke(fn, sent, pending)
        if inspect.isawaitable(result):  # an async client's call (or a sync-looking function of one)
            return _finish_async(result, sent, pending, self._root)
        return _finish(result, sent, pending, self._root)

    def _recording_manager(self, fn: Any) -> Any:
        """The SDK's `.stream(...)` helper, run with this proxy as its resource.

        The helper builds its request with `resource.create(stream=True)`, so
        bound to the proxy it goes through the recording `create`: every chunk,
        token ids included, is recorded exactly as for a plain stream.
        """
        unbound = getattr(type(self.__wrapped__), "stream", None)
        if unbound is None:  # a duck-typed client's own helper: record nothing twice
            return fn

        def call(**kwargs: Any) -> Any:
            return unbound(self, **kwargs)

        return call


class _AsyncCompletions(_Completions):
    """`chat.completions` of an async client: the twin of `_Completions`."""

    async def create(self, **kwargs: Any) -> Any:
        result = self._call(self.__wrapped__.create, self._endpoint, kwargs)
        return await result if inspect.isawaitable(result) else result

    def _recording(self, fn: Any, endpoint: str) -> Any:
        async def call(**kwargs: Any) -> Any:
            result = self._call(fn, endpoint, kwargs)
            return await result if inspect.isawaitable(result) else result

        return call

    async def _tokens(self, fn: Any, sent: dict[str, Any], pending: PendingCall) -> Any:
        reply = await pending.asend_tokens()
        if reply is not None:
            return reply
        result = self._messages(fn, sent, pending)
        return await result if inspect.isawaitable(result) else result


def _invoke(fn: Any, sent: dict[str, Any], pending: PendingCall) -> Any:
    """Make the call; a call that fails at once leaves its trace."""
    try:
        return fn(**sent)
    except BaseException as exc:
        pending.fail(exc)
        raise


def _helper(kwargs: dict[str, Any], endpoint: str) -> str:
    """The SDK names its helpers (e.g. `.stream`) in a header; record calls under that name."""
    headers = kwargs.get("extra_headers")
    name = headers.get("X-Stainless-Helper-Method") if isinstance(headers, dict) else None
    return name if isinstance(name, str) and name.startswith(endpoint) else endpoint


def _finish(result: Any, sent: dict[str, Any], pending: PendingCall, root: Any) -> Any:
    if _is_stream(sent, result):
        return RecordingStream(result, pending, root)
    pending.record(result, root)
    return result


async def _settle(awaitable: Any, pending: PendingCall) -> Any:
    """Await a call's reply; a failure leaves its trace in the episode and propagates."""
    try:
        return await awaitable
    except BaseException as exc:
        pending.fail(exc)
        raise


async def _arecord(pending: PendingCall, record: Callable[..., Any], *args: Any, **kwargs: Any) -> None:
    """Record from async code: in a thread where recording waits on the network."""
    if pending.record_blocks:
        await to_thread(record, *args, **kwargs)
    else:
        record(*args, **kwargs)


async def _finish_async(awaitable: Any, sent: dict[str, Any], pending: PendingCall, root: Any) -> Any:
    result = await _settle(awaitable, pending)
    if _is_stream(sent, result):
        return RecordingAsyncStream(result, pending, root)
    await _arecord(pending, pending.record, result, root)
    return result


class _StreamTap:
    """What the sync and async recording streams share.

    Chunks pass through unchanged and are folded into one reply; the call is
    recorded at the last chunk, at a usage chunk after every choice finished
    (callers may stop reading there), or at `close()`. A stream still open
    when its episode ends is recorded then, as partial, so a call is never lost.
    """

    def __init__(self, inner: Any, pending: PendingCall, root: Any) -> None:
        self._inner = inner
        self._pending = pending
        self._root = root
        self._acc = StreamAccumulator()
        self._it: Any = None
        pending.on_episode_end(lambda: self._record(complete=False))

    def __getattr__(self, name: str) -> Any:
        return getattr(self._inner, name)

    def _record(self, *, complete: bool) -> None:
        self._pending.record_stream(self._acc, self._root, complete=complete)

    def _add(self, chunk: Any) -> bool:
        """Fold `chunk` in; True once every choice finished (time to record)."""
        self._acc.add(chunk)
        return self._acc.finished

    def _failed(self, exc: BaseException) -> None:
        if not self._pending.done:
            self._pending.fail(exc)


class RecordingStream(_StreamTap):
    """A sync stream that records its call (see `_StreamTap`)."""

    def __iter__(self) -> RecordingStream:
        return self

    def __next__(self) -> Any:
        if self._it is None:
            self._it = iter(self._inner)
        try:
            chunk = next(self._it)
        except StopIteration:
            self._record(complete=True)
            raise
        except BaseException as exc:
            self._failed(exc)
            raise
        if self._add(chunk):
            self._record(complete=True)
        return chunk

    def close(self) -> None:
        self._record(complete=False)
        close = getattr(self._inner, "close", None)
        if close is not None:
            close()

    def __enter__(self) -> RecordingStream:
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()


class RecordingAsyncStream(_StreamTap):
    """The async twin of `RecordingStream`."""

    def __aiter__(self) -> RecordingAsyncStream:
        return self

    async def __anext__(self) -> Any:
        if self._it is None:
            self._it = self._inner.__aiter__()
        try:
            chunk = await self._it.__anext__()
        except StopAsyncIteration:
            await _arecord(self._pending, self._record, complete=True)
            raise
        except BaseException as exc:
            self._failed(exc)
            raise
        if self._add(chunk):
            await _arecord(self._pending, self._record, complete=True)
        return chunk

    async def close(self) -> None:
        await _arecord(self._pending, self._record, complete=False)
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


class _Responses(_Namespace):
    def __init__(self, inner: Any, recorder: CallSink, root: Any) -> None:
        super().__init__(inner)
        self._recorder = recorder
        self._root = root

    def create(self, **kwargs: Any) -> Any:
        sent, pending = self._recorder.start_call(kwargs, endpoint="responses", client=self._root)
        result = _invoke(self.__wrapped__.create, sent, pending)
        if inspect.isawaitable(result):
            return _finish_responses_async(result, sent, pending, self._root)
        return _finish_responses(result, sent, pending, self._root)


def _finish_responses(result: Any, sent: dict[str, Any], pending: PendingCall, root: Any) -> Any:
    if sent.get("stream"):
        pending.fail(NotImplementedError("streamed Responses calls are not recorded"))
        return result
    pending.record(result, root)
    return result


async def _finish_responses_async(awaitable: Any, sent: dict[str, Any], pending: PendingCall, root: Any) -> Any:
    result = await _settle(awaitable, pending)
    if sent.get("stream"):
        return _finish_responses(result, sent, pending, root)
    await _arecord(pending, pending.record, result, root)
    return result


def _completions_proxy(inner: Any, recorder: CallSink, root: Any, endpoint: str) -> _Completions:
    from compat.clients import is_async_callable

    cls = _AsyncCompletions if is_async_callable(getattr(inner, "create", None)) else _Completions
    return cls(inner, recorder, root, endpoint)


def _proxy(name: str, inner: Any, recorder: CallSink, root: Any) -> Any | None:
    """The recording stand-in for `root.<name>` (which is `inner`), or None when
    `inner` has no endpoint to record.

    Built on first access, not at wrap time: reaching `client.beta` or
    `client.responses` makes the openai SDK import large type modules, which
    an agent that never calls them should not pay for (nor its GC scan).
    """
    from compat.clients import resolve  # at wrap time: `import rollout` stays light

    if name == "chat" and resolve(inner, "completions.create"):
        return _Namespace(
            inner, completions=_completions_proxy(inner.completions, recorder, root, "chat.completions")
        )
    if name == "beta" and (resolve(inner, "chat.completions.parse") or resolve(inner, "chat.completions.create")):
        completions = _completions_proxy(inner.chat.completions, recorder, root, "beta.chat.completions")
        return _Namespace(inner, chat=_Namespace(inner.chat, completions=completions))
    if name == "responses" and resolve(inner, "create"):
        return _Responses(inner, recorder, root)
    return None


def _recording_type(cls: type) -> type:
    """A subclass of `cls` whose `chat` / `beta` / `responses` are the proxies."""
    if cls not in _SUBCLASSES:

        def make(name: str) -> property:
            def fget(self: Any) -> Any:
                state = self.__dict__
                proxies = state.get("_rollout_proxies")
                if proxies is not None and name in proxies:
                    return proxies[name]
                # The client's own attribute: an instance attribute (duck clients, an
                # SDK's cached_property value) or the class's.
                inner = state[name] if name in state else getattr(super(sub, self), name)
                if proxies is None:  # an instance the SDK made itself, not (yet) recording
                    return inner
                proxy = _proxy(name, inner, state["_rollout_recorder"], self)
                proxies[name] = inner if proxy is None else proxy
                return proxies[name]

            return property(fget)

        namespace: dict[str, Any] = {n: make(n) for n in _OVERRIDDEN}
        if callable(getattr(cls, "copy", None)):

            def copy_(self: Any, *args: Any, **kwargs: Any) -> Any:
                """`copy` / `with_options` give a client that records to the same recorder."""
                new = getattr(cls, "copy")(self, *args, **kwargs)  # noqa: B009 (cls is any client type)
                new.__dict__["_rollout_proxies"] = {}
                new.__dict__["_rollout_recorder"] = self.__dict__["_rollout_recorder"]
                return new

            namespace["copy"] = copy_
            namespace["with_options"] = copy_
        sub = type(f"Recording{cls.__name__}", (cls,), namespace)
        sub.__module__ = cls.__module__
        _SUBCLASSES[cls] = sub
    return _SUBCLASSES[cls]


class _PlainProxy(_Namespace):
    """Last resort for clients that cannot be copied or re-classed (e.g. a fixed
    `__slots__` layout): calls are recorded and attributes pass through, but
    `isinstance` against the client's type no longer holds (a warning says so)."""

    def __init__(self, inner: Any, recorder: CallSink) -> None:
        super().__init__(inner, _rollout_recorder=recorder)

    def __getattr__(self, name: str) -> Any:
        attr = getattr(self.__wrapped__, name)
        proxy = _proxy(name, attr, self._rollout_recorder, self.__wrapped__) if name in _OVERRIDDEN else None
        if proxy is None:
            return attr
        self.__dict__[name] = proxy  # found directly from now on
        return proxy


def wrap_client(client: Any, recorder: CallSink) -> Any:
    """A client of the same type that records through `recorder`."""
    from compat.clients import resolve

    if getattr(client, "_rollout_recorder", None) is not None:
        raise ValueError("client is already wrapped by a Recorder")
    if resolve(client, "chat.completions.create") is None and resolve(client, "responses.create") is None:
        raise TypeError(f"{type(client).__name__} has neither chat.completions.create nor responses.create")
    try:
        wrapped = copy.copy(client)
        wrapped.__class__ = _recording_type(type(client))
        wrapped.__dict__["_rollout_proxies"] = {}
        wrapped.__dict__["_rollout_recorder"] = recorder
        return wrapped
    except (TypeError, AttributeError) as exc:
        logger.warning("cannot keep the type of %s (%s); returning a plain proxy", type(client).__name__, exc)
        return _PlainProxy(client, recorder)
