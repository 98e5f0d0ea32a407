"""Calling duck-typed clients from either side of the sync/async divide.

A backend may hold a sync client, an async client, or both; any of them may
be a real `openai` client, an RL framework's client (AReaL's `ArealOpenAI` is
async only), or anything with `.chat.completions.create`. `ClientPair` lets
`run` and `arun` each use whichever client exists:

- sync over an async-only client runs the coroutine on one private background
  event loop, so it also works when called from inside a running loop;
- async over a sync-only client runs the call (and each step of a returned
  stream) in a worker thread, so the caller's loop never blocks.
"""

from __future__ import annotations

import asyncio
import inspect
import sys
import threading
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from concurrent.futures import TimeoutError as FutureTimeout
from typing import Any, Protocol, runtime_checkable

from compat.errors import CompatError, ModelTimeoutError
from compat.threads import to_thread

_STREAM_END = object()


@runtime_checkable
class Forwarding(Protocol):
    """A stand-in for a client resource that sends every call on to another one.

    Proxies in front of `chat.completions` (a recorder's, a tracer's)
    implement it so compat can judge the resource doing the work, e.g.
    whether its `parse` goes where its `create` goes
    (`compat.structured.native_parse_path`), without knowing the proxy.
    """

    def compat_forwards_to(self) -> Any:
        """The resource this proxy forwards calls to."""
        ...


def forwarded(obj: Any) -> Any:
    """The resource behind any chain of `Forwarding` proxies (`obj` itself when none)."""
    for _ in range(16):  # a bound on the chain, against a proxy that forwards to itself
        if not isinstance(obj, Forwarding):
            return obj
        obj = obj.compat_forwards_to()
    return obj


def attr_path(obj: Any, path: str) -> Any:
    """`attr_path(client, "chat.completions")`, or None when any step is absent."""
    for part in path.split("."):
        if obj is None:
            return None
        try:
            obj = getattr(obj, part)
        except Exception:  # duck-typed clients may raise anything on unknown attributes
            return None
    return obj


def resolve(obj: Any, path: str) -> Callable[..., Any] | None:
    """`resolve(client, "chat.completions.create")`, or None when absent."""
    fn = attr_path(obj, path)
    return fn if callable(fn) else None


def is_async_callable(fn: Any) -> bool:
    """A coroutine function (seen through decorators, as the SDK's `create` needs), or an
    object whose `__call__` is one."""
    if fn is None:
        return False
    try:
        target = inspect.unwrap(fn)
    except ValueError:  # a __wrapped__ cycle
        target = fn
    return inspect.iscoroutinefunction(target) or inspect.iscoroutinefunction(type(fn).__call__)


def is_async_client(client: Any) -> bool:
    """Whether `client.chat.completions.create` is async (AsyncOpenAI, ArealOpenAI, ...)."""
    return is_async_callable(resolve(client, "chat.completions.create"))


class _BackgroundLoop:
    """One daemon thread running an event loop, shared by all sync-over-async calls.

    Reusing a single loop matters: async HTTP clients bind their connection
    pools to the loop they first ran on, so `asyncio.run` per call would break
    them on the second call.
    """

    _lock = threading.Lock()
    _loop: asyncio.AbstractEventLoop | None = None

    @classmethod
    def loop(cls) -> asyncio.AbstractEventLoop:
        with cls._lock:
            if cls._loop is None or cls._loop.is_closed():
                loop = asyncio.new_event_loop()
                thread = threading.Thread(
                    target=loop.run_forever, name="compat-sync-bridge", daemon=True
                )
                thread.start()
                cls._loop = loop
            return cls._loop

    @classmethod
    def run(cls, awaitable: Awaitable[Any], timeout: float | None) -> Any:
        async def _await() -> Any:
            return await awaitable

        loop = cls.loop()
        if _running_loop() is loop:
            raise CompatError("sync call made from the bridge's own loop would deadlock")
        future = asyncio.run_coroutine_threadsafe(_await(), loop)
        try:
            return future.result(timeout)
        except FutureTimeout:
            future.cancel()
            raise ModelTimeoutError(f"call timed out after {timeout} s", attempts=1) from None


def _running_loop() -> asyncio.AbstractEventLoop | None:
    try:
        return asyncio.get_running_loop()
    except RuntimeError:
        return None


def _sync_iter(stream: Any, timeout: float | None) -> Iterator[Any]:
    """Iterate an async stream from sync code, one `__anext__` at a time."""

    async def _next(it: Any) -> Any:
        try:
            return await it.__anext__()
        except StopAsyncIteration:
            return _STREAM_END

    it = stream.__aiter__()
    while True:
        item = _BackgroundLoop.run(_next(it), timeout)
        if item is _STREAM_END:
            return
        yield item


async def _async_iter(stream: Any) -> AsyncIterator[Any]:
    """Iterate a sync stream from async code without blocking the loop."""
    it = iter(stream)
    while True:
        item = await to_thread(next, it, _STREAM_END)
        if item is _STREAM_END:
            return
        yield item


async def _with_timeout(awaitable: Awaitable[Any], timeout: float | None) -> Any:
    """Await with a deadline. On 3.11+ `asyncio.timeout` runs it in the caller's
    task; `wait_for` (3.10) would start a task per call on this hot path."""
    if timeout is None:
        return await awaitable
    try:
        if sys.version_info >= (3, 11):
            async with asyncio.timeout(timeout):
                return await awaitable
        return await asyncio.wait_for(awaitable, timeout)
    except asyncio.TimeoutError:
        raise ModelTimeoutError(f"call timed out after {timeout} s", attempts=1) from None


class ClientPair:
    """A sync and/or async client, callable from `run` and `arun` alike.

    `timeout` is enforced here only when `enforce_timeout` is set (custom
    clients); clients the backend builds itself get it from the SDK.
    """

    def __init__(
        self,
        sync: Any | None,
        async_: Any | None,
        *,
        timeout: float | None = None,
        enforce_timeout: bool = False,
    ) -> None:
        if sync is None and async_ is None:
            raise CompatError("a backend needs at least one client")
        self.sync = sync
        self.async_ = async_
        self._timeout = timeout if enforce_timeout else None

    def call(self, path: str, **kwargs: Any) -> Any:
        """Call `path` from sync code; a returned async stream becomes a sync iterator."""
        fn = resolve(self.sync, path)
        if fn is not None:
            result = fn(**kwargs)
            if inspect.isawaitable(result):  # a "sync" client that is async after all
                return _BackgroundLoop.run(result, self._timeout)
            return result
        fn = resolve(self.async_, path)
        if fn is None:
            raise AttributeError(f"neither client has `{path}`")
        result = _BackgroundLoop.run(_maybe_await(fn, kwargs), self._timeout)
        if hasattr(result, "__aiter__"):
            return _sync_iter(result, self._timeout)
        return result

    async def acall(self, path: str, **kwargs: Any) -> Any:
        """Call `path` from async code; a returned sync stream becomes an async iterator."""
        fn = resolve(self.async_, path)
        if fn is not None:
            return await _with_timeout(_maybe_await(fn, kwargs), self._timeout)
        fn = resolve(self.sync, path)
        if fn is None:
            raise AttributeError(f"neither client has `{path}`")
        result = await _with_timeout(to_thread(fn, **kwargs), self._timeout)
        if inspect.isawaitable(result):
            result = await _with_timeout(result, self._timeout)
        if hasattr(result, "__next__") and not hasattr(result, "__aiter__"):
            return _async_iter(result)
        return result


async def _maybe_await(fn: Callable[..., Any], kwargs: dict[str, Any]) -> Any:
    result = fn(**kwargs)
    if inspect.isawaitable(result):
        result = await result
    return result
