"""Threads for sync work called from async code: one per call in flight, daemon, reused.

asyncio's default executor has min(32, cpus + 4) threads whatever the
caller's concurrency, and asyncio.run and the interpreter join its threads at
exit. So six sync agents (or sync-only clients under `arun`) hung in a call
without a timeout (on 2 cores) starved every other one, and the command
never exited.

Here a call gets an idle thread or a new one, so as many sync calls run at
once as the caller lets run (collection's `concurrency`). A call that never
returns costs its caller a timeout, not the run: the caller stops waiting,
the next call gets another thread, and the process can exit because the
threads are daemons. The limitation: Python cannot kill a thread, so a hung
call's thread lingers (and holds what it references) until the call returns
or the process exits.
"""

from __future__ import annotations

import asyncio
import contextvars
import functools
import queue
import threading
from collections.abc import Callable
from concurrent.futures import Executor, Future
from typing import Any

IDLE_EXIT_S = 30.0
"""An idle thread exits after this long, so a burst of sync episodes leaves no threads behind."""

_Work = tuple["Future[Any]", Callable[..., Any], tuple[Any, ...], dict[str, Any]]


class DaemonThreadPool(Executor):
    """An Executor whose threads are daemons, started whenever no idle one is waiting."""

    def __init__(self, name: str = "compat-sync") -> None:
        self._name = name
        self._work: queue.SimpleQueue[_Work] = queue.SimpleQueue()
        self._lock = threading.Lock()
        self._idle = 0  # threads waiting for work that no submitted item has claimed yet
        self._started = 0

    def submit(self, fn: Callable[..., Any], /, *args: Any, **kwargs: Any) -> Future[Any]:
        future: Future[Any] = Future()
        with self._lock:
            self._work.put((future, fn, args, kwargs))
            if self._idle:
                self._idle -= 1  # that waiting thread takes this item
            else:
                self._started += 1
                threading.Thread(
                    target=self._worker, name=f"{self._name}-{self._started}", daemon=True
                ).start()
        return future

    def _worker(self) -> None:
        while True:
            try:
                future, fn, args, kwargs = self._work.get(timeout=IDLE_EXIT_S)
            except queue.Empty:
                with self._lock:
                    if self._work.empty():  # no item is waiting for this thread: leave
                        self._idle -= 1
                        return
                continue
            if future.set_running_or_notify_cancel():
                try:
                    future.set_result(fn(*args, **kwargs))
                except BaseException as exc:  # handed to the awaiting episode
                    future.set_exception(exc)
            del future, fn, args, kwargs  # an idle thread holds no episode
            with self._lock:
                self._idle += 1

    def shutdown(self, wait: bool = True, *, cancel_futures: bool = False) -> None:
        """Nothing to join: idle threads exit on their own, hung ones cannot be stopped."""


_pool: DaemonThreadPool | None = None
_pool_lock = threading.Lock()


def sync_pool() -> DaemonThreadPool:
    """The process's pool (each Ray actor has its own process, so its own pool)."""
    global _pool
    with _pool_lock:
        if _pool is None:
            _pool = DaemonThreadPool()
        return _pool


async def to_thread(fn: Callable[..., Any], /, *args: Any, **kwargs: Any) -> Any:
    """`asyncio.to_thread` on `sync_pool()`: the caller's context (its recording
    scope) goes with the call, and no fixed thread count throttles it."""
    call = functools.partial(contextvars.copy_context().run, fn, *args, **kwargs)
    return await asyncio.get_running_loop().run_in_executor(sync_pool(), call)
