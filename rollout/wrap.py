"""The recording client wrapper: same type as the client it wraps.

Frameworks check `isinstance(client, AsyncOpenAI)`, so `wrap_client` returns a
shallow copy of the client whose class is a cached subclass of the original
that overrides `chat`, `beta`, `responses` and `completions` (each proxied on
first access). Everything else (base URL, `get_interaction`, the HTTP pool) is
the original's.

Every way the SDK can ask for a generation is recorded, or refused loudly
(`UnrecordedCallError`, raised before the request is sent, with a trace in the
episode's `failed_calls`); nothing passes through unrecorded:

- `chat.completions`: `create` (plain and streamed; token mode), `parse`,
  `stream` (the SDK's helper, run over the proxy so it streams through the
  recording `create`; token mode), and the same through `with_raw_response` /
  `with_streaming_response` (the SDK's views rebuilt over the proxy;
  `rollout.sdkresponse` records what they return, and in token mode hands back
  the SDK's own raw-response type). `retrieve`, `update`, `list`, `delete` and
  `messages` read or edit stored completions: no generation, passed through.
- `beta.chat.completions`: as `chat.completions` (messages only).
- `responses` / `beta.responses`: `create` (streamed too: recorded from the
  final `response.completed` event), `parse`, `stream`, the raw views.
  Refused: `create(background=True)` (the reply arrives later, elsewhere),
  `compact` and `connect` (a websocket session). `retrieve`, `delete`,
  `cancel`, `input_items`, `input_tokens` make no generation: passed through.
- `completions` (the legacy text Completions API): refused.

`copy` / `with_options` and the client-level `with_raw_response` /
`with_streaming_response` give clients and views that record too. The agent
gets the SDK's own types: a recorded `Stream` is the SDK's object re-classed
in place (`tap_stream`), a token-mode reply a `ChatCompletion` or the SDK's
`Stream` / raw response built over the body the endpoint would have sent.
Sync and async clients get twin proxies over the same `PendingCall` logic.
"""

from __future__ import annotations

import copy
import inspect
import logging
import time
from collections.abc import Callable
from typing import Any, Protocol

from compat import is_async_callable, resolve
from rollout import reply_tap
from rollout.errors import UnrecordedCallError
from rollout.reply_ids import StreamAccumulator
from rollout.sdkresponse import (
    aas_sdk_stream,
    as_sdk_stream,
    asettle,
    asynthesize,
    is_sdk_response,
    raw_kind,
    settle,
    synthesize,
)
from rollout.stream_tap import ChatChunks, ResponseEvents, arecord, tap_stream

logger = logging.getLogger(__name__)

_OVERRIDDEN = ("chat", "beta", "responses", "completions")
_RAW_VIEWS = ("with_raw_response", "with_streaming_response")


class PendingCall(Protocol):
    """One call in flight, as the recorder sees it (see `rollout.recorder.PendingCall`)."""

    done: bool
    turn: Any  # token mode: set when the call goes as token ids

    @property
    def record_blocks(self) -> bool: ...  # recording may wait on the network: async callers use a thread

    def send_tokens(self) -> Any: ...

    async def asend_tokens(self) -> Any: ...

    def record(self, response: Any, client: Any) -> Any: ...

    def reader(self, client: Any) -> reply_tap.Reader | None: ...  # reads the reply as it is parsed

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
    """Passes attributes through to `inner`, except the overrides given.

    The SDK's `with_raw_response` / `with_streaming_response` views wrap the
    methods of the object they are built on, so the inner one's would bypass
    the recording; they are rebuilt over this proxy instead.
    """

    def __init__(self, inner: Any, **overrides: Any) -> None:
        self.__wrapped__ = inner
        self.__dict__.update(overrides)

    def __getattr__(self, name: str) -> Any:
        attr = getattr(self.__wrapped__, name)
        if name in _RAW_VIEWS and type(attr).__module__.startswith("openai."):
            view = self.__dict__[name] = type(attr)(self)
            return view
        return attr

    def compat_forwards_to(self) -> Any:
        """`compat.Forwarding`: compat judges the resource this proxy forwards to."""
        return self.__wrapped__


def _is_stream(kwargs: dict[str, Any], result: Any) -> bool:
    if not kwargs.get("stream"):
        return False
    return not (isinstance(result, dict) or hasattr(result, "choices") or hasattr(result, "model_dump"))


class _Resource(_Namespace):
    """A recording stand-in for one SDK resource: its generation methods record,
    refuse or pass through, as the class says."""

    _recorded: tuple[str, ...] = ()  # besides `create`: methods recorded as `<endpoint>.<name>`
    _helpers: tuple[str, ...] = ()  # the SDK's helpers that call `resource.create`: run over this proxy
    _refused: tuple[str, ...] = ()  # methods that generate but cannot be recorded

    def __init__(self, inner: Any, recorder: CallSink, root: Any, endpoint: str) -> None:
        super().__init__(inner)
        self._recorder = recorder
        self._root = root
        self._endpoint = endpoint

    def __getattr__(self, name: str) -> Any:
        attr = super().__getattr__(name)
        if not callable(attr) or name in _RAW_VIEWS:
            return attr
        if name in self._recorded:
            return self._recording(attr, f"{self._endpoint}.{name}")
        if name in self._helpers:
            return self._helper_over_self(name, attr)
        if name in self._refused:
            return self._refusing(f"{self._endpoint}.{name}")
        return attr

    def create(self, **kwargs: Any) -> Any:
        return self._call(self.__wrapped__.create, self._endpoint, kwargs)

    def _recording(self, fn: Any, endpoint: str) -> Any:
        def call(**kwargs: Any) -> Any:
            return self._call(fn, endpoint, kwargs)

        return call

    def _refusing(self, endpoint: str, why: str = "") -> Any:
        def call(*args: Any, **kwargs: Any) -> Any:
            self._refuse(endpoint, kwargs, why)

        return call

    def _refuse(self, endpoint: str, kwargs: dict[str, Any], why: str = "") -> None:
        """Raise `UnrecordedCallError` before sending; the episode keeps a trace of the attempt."""
        exc = UnrecordedCallError(
            f"{endpoint}{why} cannot be recorded, so the recording client refuses it before sending "
            "(call it on the unwrapped client if it must not be part of the episode)"
        )
        _, pending = self._recorder.start_call(kwargs, endpoint=endpoint, client=self._root)
        pending.fail(exc)
        raise exc

    def _helper_over_self(self, name: str, fn: Any) -> Any:
        """One of the SDK's helpers (e.g. `.stream(...)`), run with a proxy as its resource.

        The helper builds its request with `resource.create(...)`, so bound to a
        proxy it goes through the recording `create`: every chunk, token ids
        included, is recorded exactly as for a plain stream.
        """
        unbound = getattr(type(self.__wrapped__), name, None)
        if unbound is None:  # a duck-typed client's own helper: record nothing twice
            return fn
        resource = self._named(f"{self._endpoint}.{name}")

        def call(*args: Any, **kwargs: Any) -> Any:
            return unbound(resource, *args, **kwargs)

        return call

    def _named(self, endpoint: str) -> _Resource:
        """A twin of this proxy that records its `create` calls under `endpoint`."""
        return type(self)(self.__wrapped__, self._recorder, self._root, endpoint)

    def _call(self, fn: Any, endpoint: str, kwargs: dict[str, Any]) -> Any:
        """Record one call: the reply, a stream wrapped to record, or an awaitable of either."""
        t0 = time.perf_counter()
        sent, pending = self._recorder.start_call(kwargs, endpoint=_helper(kwargs, endpoint), client=self._root)
        if pending.turn is not None:
            return self._tokens(fn, sent, pending, t0)
        return self._messages(fn, sent, pending)

    def _tokens(self, fn: Any, sent: dict[str, Any], pending: PendingCall, t0: float) -> Any:
        """Token mode: the stitched turn, or the messages path when it falls back."""
        reply = pending.send_tokens()
        if reply is None:
            return self._messages(fn, sent, pending)
        kind = raw_kind(sent)
        if kind is None:
            return as_sdk_stream(reply, self._root)
        return synthesize(kind, reply, self._root, elapsed_s=time.perf_counter() - t0)

    def _messages(self, fn: Any, sent: dict[str, Any], pending: PendingCall) -> Any:
        # The reply is read as the SDK parses it, where it can be (`rollout.reply_tap`).
        reader = pending.reader(self._root) if raw_kind(sent) is None and reply_tap.tapped(self._root) else None
        result = _invoke(fn, sent, pending, reader)
        if inspect.isawaitable(result):  # an async client's call (or a sync-looking function of one)
            return self._finish_async(result, sent, pending, reader)
        return self._finish(result, sent, pending)

    def _tap(self, stream: Any, pending: PendingCall, root: Any) -> Any:
        """The stream, recording its call as it is read."""
        return tap_stream(stream, pending, root, ChatChunks(read_bodies=reply_tap.tapped(root)), is_async=False)

    def _atap(self, stream: Any, pending: PendingCall, root: Any) -> Any:
        return tap_stream(stream, pending, root, ChatChunks(read_bodies=reply_tap.tapped(root)), is_async=True)

    def _finish(self, result: Any, sent: dict[str, Any], pending: PendingCall) -> Any:
        if raw_kind(sent) is not None and is_sdk_response(result):
            return settle(result, pending, self._root, self._tap, stream=bool(sent.get("stream")))
        if _is_stream(sent, result):
            return self._tap(result, pending, self._root)
        pending.record(result, self._root)
        return result

    async def _finish_async(self, awaitable: Any, sent: dict[str, Any], pending: PendingCall,
                            reader: reply_tap.Reader | None = None) -> Any:  # fmt: skip
        result = await _settle(awaitable, pending, reader)
        if raw_kind(sent) is not None and is_sdk_response(result):
            return await asettle(result, pending, self._root, self._atap, arecord, stream=bool(sent.get("stream")))
        if _is_stream(sent, result):
            return self._atap(result, pending, self._root)
        await arecord(pending, pending.record, result, self._root)
        return result


class _AsyncResource(_Resource):
    """The async twin of `_Resource`: `create` and the recorded methods are coroutines."""

    async def create(self, **kwargs: Any) -> Any:
        result = self._call(self.__wrapped__.create, self._endpoint, kwargs)
        return await result if inspect.isawaitable(result) else result

    def _recording(self, fn: Any, endpoint: str) -> Any:
        async def call(**kwargs: Any) -> Any:
            result = self._call(fn, endpoint, kwargs)
            return await result if inspect.isawaitable(result) else result

        return call

    def _refusing(self, endpoint: str, why: str = "") -> Any:
        if not inspect.iscoroutinefunction(getattr(self.__wrapped__, endpoint.rsplit(".", 1)[-1], None)):
            return super()._refusing(endpoint, why)  # e.g. `connect`: sync even on an async client

        async def call(*args: Any, **kwargs: Any) -> Any:
            self._refuse(endpoint, kwargs, why)

        return call

    async def _tokens(self, fn: Any, sent: dict[str, Any], pending: PendingCall, t0: float) -> Any:
        reply = await pending.asend_tokens()
        if reply is None:
            result = self._messages(fn, sent, pending)
            return await result if inspect.isawaitable(result) else result
        kind = raw_kind(sent)
        if kind is None:
            return await aas_sdk_stream(reply, self._root)
        return await asynthesize(kind, reply, self._root, elapsed_s=time.perf_counter() - t0)


class _Completions(_Resource):
    """`chat.completions` (and `beta.chat.completions`) of a sync client."""

    _recorded = ("parse",)
    _helpers = ("stream",)


class _AsyncCompletions(_AsyncResource, _Completions):
    """`chat.completions` of an async client: the twin of `_Completions`."""


class _Responses(_Resource):
    """`responses` (and `beta.responses`): streamed calls record from their final event."""

    _recorded = ("parse",)
    _helpers = ("stream",)
    _refused = ("compact", "connect")

    def create(self, **kwargs: Any) -> Any:
        self._refuse_background(kwargs)
        return super().create(**kwargs)

    def _refuse_background(self, kwargs: dict[str, Any]) -> None:
        if kwargs.get("background") is True:
            self._refuse(self._endpoint, kwargs, "(background=True) (its reply arrives later, by retrieve)")

    def _tap(self, stream: Any, pending: PendingCall, root: Any) -> Any:
        return tap_stream(stream, pending, root, ResponseEvents(), is_async=False)

    def _atap(self, stream: Any, pending: PendingCall, root: Any) -> Any:
        return tap_stream(stream, pending, root, ResponseEvents(), is_async=True)


class _AsyncResponses(_AsyncResource, _Responses):
    """The async twin of `_Responses`."""

    async def create(self, **kwargs: Any) -> Any:
        self._refuse_background(kwargs)
        return await _AsyncResource.create(self, **kwargs)


class _LegacyCompletions(_Resource):
    """The legacy text Completions API (`client.completions`): refused, never silently unrecorded."""

    def create(self, **kwargs: Any) -> Any:
        self._refuse(self._endpoint + ".create", kwargs, " (the legacy Completions API)")


class _AsyncLegacyCompletions(_LegacyCompletions):
    async def create(self, **kwargs: Any) -> Any:
        self._refuse(self._endpoint + ".create", kwargs, " (the legacy Completions API)")


def _invoke(fn: Any, sent: dict[str, Any], pending: PendingCall, reader: reply_tap.Reader | None = None) -> Any:
    """Make the call (its reply body read by `reader` as it is parsed); a call that fails at
    once leaves its trace."""
    try:
        if reader is None:
            return fn(**sent)
        with reply_tap.reading(reader):
            return fn(**sent)
    except BaseException as exc:
        pending.fail(exc)
        raise


def _helper(kwargs: dict[str, Any], endpoint: str) -> str:
    """The SDK names its helpers (e.g. `.stream`) in a header; record calls under that name."""
    headers = kwargs.get("extra_headers")
    name = headers.get("X-Stainless-Helper-Method") if isinstance(headers, dict) else None
    return name if isinstance(name, str) and name.startswith(endpoint) else endpoint


async def _settle(awaitable: Any, pending: PendingCall, reader: reply_tap.Reader | None = None) -> Any:
    """Await a call's reply (its body read by `reader` as it is parsed); a failure leaves its
    trace in the episode and propagates."""
    try:
        if reader is None:
            return await awaitable
        with reply_tap.reading(reader):
            return await awaitable
    except BaseException as exc:
        pending.fail(exc)
        raise


def _resource(kind: tuple[type[_Resource], type[_Resource]], inner: Any, recorder: CallSink, root: Any,
              endpoint: str) -> _Resource:  # fmt: skip
    """The sync or async proxy class of `kind` for `inner`."""

    cls = kind[1] if is_async_callable(getattr(inner, "create", None)) else kind[0]
    return cls(inner, recorder, root, endpoint)


_COMPLETIONS = (_Completions, _AsyncCompletions)
_RESPONSES = (_Responses, _AsyncResponses)
_LEGACY = (_LegacyCompletions, _AsyncLegacyCompletions)


class _Beta(_Namespace):
    """`client.beta`: `chat.completions` and `responses` record; built on first access
    (reaching `beta.responses` imports large SDK modules)."""

    def __init__(self, inner: Any, recorder: CallSink, root: Any) -> None:
        super().__init__(inner)
        self._recorder = recorder
        self._root = root

    def __getattr__(self, name: str) -> Any:

        attr = super().__getattr__(name)
        if name == "chat" and resolve(attr, "completions.create"):
            completions = _resource(_COMPLETIONS, attr.completions, self._recorder, self._root, "beta.chat.completions")
            attr = _Namespace(attr, completions=completions)
        elif name == "responses" and resolve(attr, "create"):
            attr = _resource(_RESPONSES, attr, self._recorder, self._root, "beta.responses")
        else:
            return attr
        self.__dict__[name] = attr
        return attr


def _proxy(name: str, inner: Any, recorder: CallSink, root: Any) -> Any | None:
    """The recording stand-in for `root.<name>` (which is `inner`), or None when
    `inner` has no endpoint to record.

    Built on first access, not at wrap time: reaching `client.beta` or
    `client.responses` makes the openai SDK import large type modules, which
    an agent that never calls them should not pay for (nor its GC scan).
    """

    if name == "chat" and resolve(inner, "completions.create"):
        return _Namespace(inner, completions=_resource(_COMPLETIONS, inner.completions, recorder, root, "chat.completions"))
    if name == "beta" and (resolve(inner, "chat.completions.create") or resolve(inner, "responses.create")):
        return _Beta(inner, recorder, root)
    if name == "responses" and resolve(inner, "create"):
        return _resource(_RESPONSES, inner, recorder, root, "responses")
    if name == "completions" and resolve(inner, "create"):
        return _resource(_LEGACY, inner, recorder, root, "completions")
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
                reply_tap.install(new)
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
        if name in _RAW_VIEWS:
            return super().__getattr__(name)  # rebuilt over this proxy, so its calls record
        attr = getattr(self.__wrapped__, name)
        proxy = _proxy(name, attr, self._rollout_recorder, self.__wrapped__) if name in _OVERRIDDEN else None
        if proxy is None:
            return attr
        self.__dict__[name] = proxy  # found directly from now on
        return proxy


def wrap_client(client: Any, recorder: CallSink) -> Any:
    """A client of the same type that records through `recorder`."""

    if getattr(client, "_rollout_recorder", None) is not None:
        raise ValueError("client is already wrapped by a Recorder")
    if resolve(client, "chat.completions.create") is None and resolve(client, "responses.create") is None:
        raise TypeError(f"{type(client).__name__} has neither chat.completions.create nor responses.create")
    try:
        wrapped = copy.copy(client)
        wrapped.__class__ = _recording_type(type(client))
        wrapped.__dict__["_rollout_proxies"] = {}
        wrapped.__dict__["_rollout_recorder"] = recorder
        for name in _RAW_VIEWS:  # the SDK caches these per client: a copied one is bound to `client`
            wrapped.__dict__.pop(name, None)
        if reply_tap.install(wrapped):  # an openai client: the copy builds its own (cached) resources
            for name in _OVERRIDDEN:
                if getattr(wrapped.__dict__.get(name), "_client", None) is client:
                    del wrapped.__dict__[name]
        return wrapped
    except (TypeError, AttributeError) as exc:
        logger.warning("cannot keep the type of %s (%s); returning a plain proxy", type(client).__name__, exc)
        return _PlainProxy(client, recorder)
