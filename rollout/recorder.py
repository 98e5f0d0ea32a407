"""`Recorder`: scopes calls to episodes and turns each call into a `CallRecord`.

    recorder = Recorder()
    client = recorder.wrap(AsyncOpenAI(...))          # same type as before
    async with recorder.episode(task_id="t1", sample=0) as ep:
        await agent(client)                            # every call lands in `ep`
    episodes = recorder.episodes()

The current episode lives in a `ContextVar`, so concurrent asyncio tasks and
threads sharing one wrapped client each record into their own episode. A call
made outside any episode goes to the `unscoped` episode, or is refused before
it is sent (`unscoped="refuse"`); it is never dropped.
"""

from __future__ import annotations

import asyncio
import contextvars
import threading
import time
from collections.abc import Callable
from typing import Any, Literal

from rollout.episode import Episode, EpisodeStatus
from rollout.record import CallRecord, TokenRecordError, build
from rollout.tokens import (
    StreamAccumulator,
    Tokenizer,
    extract_call,
    responses_api_as_chat,
    responses_input_as_messages,
)
from rollout.tokens import (
    get as _get,
)

_current: contextvars.ContextVar[Episode | None] = contextvars.ContextVar(
    "rollout_episode", default=None
)

# Never stored: credentials, transport objects, per-call plumbing.
_DROP_KEYS = frozenset(
    {"extra_headers", "extra_query", "api_key", "authorization", "headers", "timeout", "http_client"}
)
_SECRET_MARKERS = ("key", "auth", "secret", "password", "bearer")
CALL_FIELDS = set(CallRecord.model_fields)  # shared fields-set, see rollout.tokens


class UnscopedCallError(RuntimeError):
    """A call was made outside any episode while the recorder refuses those."""


def scrub(kwargs: dict[str, Any], memo: dict[int, dict[str, Any]] | None = None) -> dict[str, Any]:
    """The request as it may be stored: no headers, keys or transport objects.

    Messages are copied, so later edits by the agent cannot change the record.
    With `memo` (one per episode), a message already copied for an earlier call
    and still equal is shared instead of copied again: a multi-turn episode
    resends its whole history every turn, which would otherwise cost memory
    quadratic in its length.
    """
    out: dict[str, Any] = {}
    for k, v in kwargs.items():
        if k in _DROP_KEYS or type(v).__name__ in ("NotGiven", "Omit"):
            continue
        if k == "response_format" and isinstance(v, type):
            v = {"type": "pydantic", "name": v.__name__}
        if k == "extra_body" and isinstance(v, dict):
            v = {ek: ev for ek, ev in v.items() if not any(m in ek.lower() for m in _SECRET_MARKERS)}
        if k == "messages":
            v = [_copy_message(m, memo) for m in v]
        out[k] = v
    return out


def _copy_message(m: Any, memo: dict[int, dict[str, Any]] | None) -> Any:
    if not isinstance(m, dict):
        return m
    if memo is not None:
        seen = memo.get(id(m))
        if seen is not None and seen == m:
            return seen
    copied = dict(m)
    if memo is not None:
        memo[id(m)] = copied
    return copied


def _message_key(m: Any) -> tuple[Any, ...]:
    """What identifies a message for prefix matching (ignores None-valued fields)."""
    if hasattr(m, "model_dump"):
        m = m.model_dump(exclude_none=True)
    if not isinstance(m, dict):
        return (repr(m),)
    calls = tuple(
        (c.get("function", {}).get("name"), c.get("function", {}).get("arguments"))
        for c in (m.get("tool_calls") or [])
        if isinstance(c, dict)
    )
    content = m.get("content")
    if isinstance(content, list):
        content = repr(content)
    return (m.get("role"), content or None, calls, m.get("tool_call_id"))


class Recorder:
    """Records every call made through the clients it wraps.

    Args:
        unscoped: "keep" puts calls outside an episode into `recorder.unscoped`;
            "refuse" raises `UnscopedCallError` before the request is sent.
        request_token_ids: ask servers for exact ids (vLLM/SGLang
            `return_token_ids`) by adding it to `extra_body`.
        request_logprobs: add `logprobs=True` unless the caller set it.
        tokenizer: fallback for replies without ids; such records are inexact.
        policy_version: version stamped on tokens when the reply reports none.
        strict: raise `TokenRecordError` on inconsistent token data instead of
            recording it with a note.
        keep_finished: keep finished episodes for `episodes()`; a collector
            that streams them to disk turns this off to bound memory.
    """

    def __init__(
        self,
        *,
        unscoped: Literal["keep", "refuse"] = "keep",
        request_token_ids: bool = False,
        request_logprobs: bool = False,
        tokenizer: Tokenizer | None = None,
        policy_version: int | None = None,
        strict: bool = False,
        keep_finished: bool = True,
    ) -> None:
        if unscoped not in ("keep", "refuse"):
            raise ValueError(f"unscoped must be 'keep' or 'refuse', got {unscoped!r}")
        self.unscoped_mode = unscoped
        self.request_token_ids = request_token_ids
        self.request_logprobs = request_logprobs
        self.tokenizer = tokenizer
        self.policy_version = policy_version
        self.strict = strict
        self.keep_finished = keep_finished
        self.unscoped = Episode(task_id="__unscoped__")
        self._finished: list[Episode] = []
        # Per open episode: messages + reply of each call -> its index (parent lookup).
        self._prefixes: dict[str, dict[tuple[Any, ...], int]] = {}
        # Per open episode: id of an agent's message dict -> our stored copy of it.
        self._copies: dict[str, dict[int, dict[str, Any]]] = {}
        # Per open episode: how to record its streams that are still open.
        self._open: dict[str, list[Callable[[], Any]]] = {}
        self._lock = threading.Lock()

    # --- public API ---------------------------------------------------------------

    def wrap(self, client: Any) -> Any:
        """A recording client of the same type as `client`."""
        from rollout.wrap import wrap_client

        return wrap_client(client, self)

    def episode(
        self,
        task_id: str = "",
        sample: int = 0,
        *,
        task: Any = None,
        metadata: dict[str, Any] | None = None,
        episode: Episode | None = None,
    ) -> EpisodeScope:
        """A sync and async context manager that scopes calls to one episode."""
        ep = episode or Episode(task_id=str(task_id), sample=sample, task=task, metadata=dict(metadata or {}))
        return EpisodeScope(self, ep)

    def episodes(self) -> list[Episode]:
        """Finished episodes, in the order they finished."""
        with self._lock:
            return list(self._finished)

    def drain(self) -> list[Episode]:
        """Finished episodes, handed over and forgotten (frees their memory here)."""
        with self._lock:
            out, self._finished = self._finished, []
            return out

    @staticmethod
    def current() -> Episode | None:
        return _current.get()

    # --- used by the wrapper ---------------------------------------------------------

    def _message_copies(self, episode: Episode) -> dict[int, dict[str, Any]] | None:
        if episode is self.unscoped:  # never finishes: no memo that would only grow
            return None
        with self._lock:
            return self._copies.setdefault(episode.id, {})

    def _finish(self, episode: Episode) -> None:
        with self._lock:
            self._prefixes.pop(episode.id, None)
            self._copies.pop(episode.id, None)
            leftovers = self._open.pop(episode.id, [])
        for record_partial in leftovers:  # streams nobody read to the end or closed
            record_partial()
        if not self.keep_finished:
            return
        with self._lock:
            self._finished.append(episode)

    def start_call(self, kwargs: dict[str, Any], *, endpoint: str) -> tuple[dict[str, Any], PendingCall]:
        """Check scope, add requested fields, start the clock. Shared by sync and async."""
        episode = _current.get()
        if episode is None:
            if self.unscoped_mode == "refuse":
                raise UnscopedCallError(
                    f"{endpoint} called outside `recorder.episode(...)` (unscoped='refuse')"
                )
            episode = self.unscoped
        sent = dict(kwargs)
        if endpoint != "responses":
            if self.request_token_ids:
                extra = dict(sent.get("extra_body") or {})
                extra.setdefault("return_token_ids", True)
                sent["extra_body"] = extra
            if self.request_logprobs and "logprobs" not in sent:
                sent["logprobs"] = True
        return sent, PendingCall(self, episode, endpoint, sent)


class PendingCall:
    """One call in flight: turns its reply (or stream, or failure) into a record."""

    def __init__(self, recorder: Recorder, episode: Episode, endpoint: str, kwargs: dict[str, Any]) -> None:
        self.recorder = recorder
        self.episode = episode
        self.endpoint = endpoint
        self.kwargs = kwargs
        self.started = time.time()
        self._t0 = time.perf_counter()
        self.done = False

    @property
    def messages(self) -> list[dict[str, Any]]:
        if self.endpoint == "responses":
            return responses_input_as_messages(self.kwargs)
        return list(self.kwargs.get("messages") or [])

    def record(self, response: Any, client: Any) -> CallRecord:
        """Build and store the record for a complete reply."""
        self.done = True
        if self.endpoint == "responses":
            response = responses_api_as_chat(response)
        messages = self.messages
        rec = self.recorder
        try:
            prompt, prompt_source, choices, notes = extract_call(
                response,
                messages=messages,
                tools=self.kwargs.get("tools"),
                client=client,
                tokenizer=rec.tokenizer,
                policy_version=rec.policy_version,
                strict=rec.strict,
            )
        except TokenRecordError as exc:  # the reply reached the caller's code path: leave a trace
            self.fail(exc)
            raise
        usage = _get(response, "usage")
        if usage is not None and hasattr(usage, "model_dump"):
            usage = usage.model_dump(exclude_none=True)
        call = build(
            CallRecord,
            CALL_FIELDS,
            {
                "id": str(_get(response, "id") or ""),
                "index": 0,
                "endpoint": self.endpoint,
                "prompt_ids": prompt,
                "prompt_source": prompt_source,
                "choices": choices,
                "request": scrub(self.kwargs, rec._message_copies(self.episode)),
                "usage": usage,
                "latency_s": time.perf_counter() - self._t0,
                "started_at": self.started,
                "reward": None,
                "parent": None,
                "notes": notes,
            },
        )
        self._append(call, messages)
        return call

    def record_stream(self, acc: StreamAccumulator, client: Any, *, complete: bool) -> CallRecord | None:
        if self.done:
            return None
        if not acc.data["choices"]:
            self.fail(RuntimeError("stream closed before any chunk arrived"))
            return None
        call = self.record(acc.response(), client)
        if not complete:
            call.notes.append("stream closed before its end: completion is partial")
        return call

    def on_episode_end(self, finalize: Callable[[], Any]) -> None:
        """Run `finalize` when the episode ends, unless this call was recorded by then.

        (The unscoped bucket never ends: its abandoned streams stay unrecorded
        until closed, and are not tracked, so it cannot grow without bound.)
        """
        if self.episode is self.recorder.unscoped:
            return
        with self.recorder._lock:
            self.recorder._open.setdefault(self.episode.id, []).append(
                lambda: None if self.done else finalize()
            )

    def fail(self, exc: BaseException) -> None:
        """A failed call leaves a trace in the episode; the exception still propagates."""
        self.done = True
        failures = self.episode.metadata.setdefault("failed_calls", [])
        failures.append({"endpoint": self.endpoint, "error": f"{type(exc).__name__}: {exc}"})

    def _append(self, call: CallRecord, messages: list[dict[str, Any]]) -> None:
        keys = tuple(_message_key(m) for m in messages)
        episode = self.episode
        recorder = self.recorder
        with recorder._lock:
            table = recorder._prefixes.setdefault(episode.id, {})
            call.index = len(episode.calls)
            call.parent = _find_parent(table, keys)
            episode.calls.append(call)
            for choice in call.choices:  # children will look this call up by prefix
                with_reply = (*keys, _message_key(choice.message))
                table[with_reply] = call.index


def _find_parent(table: dict[tuple[Any, ...], int], keys: tuple[Any, ...]) -> int | None:
    """The call whose messages + reply are the longest prefix of `keys` (AReaL's tree).

    `table` maps each recorded call's messages + reply to its index, so the
    lookup costs one hash per assistant message, not a scan of the episode.
    """
    for end in range(len(keys), 0, -1):
        if keys[end - 1][0] == "assistant":
            parent = table.get(keys[:end])
            if parent is not None:
                return parent
    return None


class EpisodeScope:
    """Entered with `with` or `async with`; the episode is finished on exit.

    An exception inside marks the episode `error` (or `timeout`) with its text,
    keeps every call recorded so far, and propagates.
    """

    def __init__(self, recorder: Recorder, episode: Episode) -> None:
        self.recorder = recorder
        self.episode = episode
        self._token: contextvars.Token[Episode | None] | None = None

    def __enter__(self) -> Episode:
        self._token = _current.set(self.episode)
        return self.episode

    def __exit__(self, exc_type: Any, exc: BaseException | None, tb: Any) -> Literal[False]:
        if self._token is not None:
            _current.reset(self._token)
        finish_episode(self.episode, exc)
        self.recorder._finish(self.episode)
        return False

    async def __aenter__(self) -> Episode:
        return self.__enter__()

    async def __aexit__(self, exc_type: Any, exc: BaseException | None, tb: Any) -> Literal[False]:
        return self.__exit__(exc_type, exc, tb)


def finish_episode(episode: Episode, exc: BaseException | None) -> None:
    """Set the final status from how the episode ended."""
    if exc is not None:
        timed_out = isinstance(exc, (TimeoutError, asyncio.TimeoutError))
        episode.status = EpisodeStatus.TIMEOUT if timed_out else EpisodeStatus.ERROR
        episode.error = f"{type(exc).__name__}: {exc}"
    elif (
        episode.status == EpisodeStatus.COMPLETED
        and episode.calls
        and any(c.finish_reason == "length" for c in episode.calls[-1].choices)
    ):
        episode.status = EpisodeStatus.TRUNCATED
