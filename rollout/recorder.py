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

import contextvars
import sys
import threading
import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, Literal

from rollout.call_record import CallRecord, TokenRecordError, TokenSource, as_ids
from rollout.episode import Episode, EpisodeStatus
from rollout.errors import UnscopedCallError, explain_failure
from rollout.lineage import EpisodeLog, message_keys
from rollout.redact import register_secret
from rollout.reply_ids import (
    MALFORMED,
    StreamAccumulator,
    extract_call,
    responses_api_as_chat,
    responses_input_as_messages,
    unreadable,
)
from rollout.reply_ids import (
    get as _get,
)
from rollout.snapshot import plain, scrub, unset
from rollout.tokenizers import PerServer, ServerTokenizer, Tokenizer, load_tokenizer
from rollout.wrap import wrap_client

if TYPE_CHECKING:  # token mode is imported on its first call: `import rollout` stays light
    from rollout.tokenmode import Generation, TokenCall, TokenServer, TokenServers
    from rollout.tokenmode.local_template import LocalTemplate

_current: contextvars.ContextVar[Episode | None] = contextvars.ContextVar(
    "rollout_episode", default=None
)

class Recorder:
    """Records every call made through the clients it wraps.

    Args:
        unscoped: "keep" puts calls outside an episode into `recorder.unscoped`;
            "refuse" raises `UnscopedCallError` before the request is sent.
        request_token_ids: ask servers for exact ids (vLLM/SGLang
            `return_token_ids`) by adding it to `extra_body`.
        request_logprobs: add `logprobs=True` unless the caller set it (the SDK's
            "not given" sentinels count as unset).
        tokenizer: ids for replies without them: a `Tokenizer`, or a name for
            `rollout.tokenizers.load_tokenizer` ("server" uses each client's
            server's `/tokenize`). Its ids are inexact, and carry the server's
            logprobs only when they match its tokens one for one.
        policy_version: version stamped on tokens when the reply reports none.
        strict: raise `TokenRecordError` on inconsistent token data instead of
            recording it with a note.
        keep_finished: keep finished episodes for `episodes()`; a collector
            that streams them to disk turns this off to bound memory.
        token_mode: "auto" sends an episode's later calls as token ids (parent
            prompt + sampled ids + server-rendered bridge; see `rollout.tokenmode`)
            where the parent's ids are exact and the server has a token route,
            so the episode stays one exact row; "all" sends each episode's first
            call that way too (the server renders the messages, then generates
            from those ids: the client's lean path); "off" sends every call as
            messages. Either way each record says how it was sent and why.
        local_template: the model's chat template, tokenizer and parser on the
            client (`rollout.tokenmode.local_template.LocalTemplate`): token
            mode then renders and parses here and sends one request per call
            (the server's generate route) instead of three. Checked against
            the server's own renders first; needs token mode on. A string
            names one: "embedded" or "hf:<name or path>".
    """

    def __init__(
        self,
        *,
        unscoped: Literal["keep", "refuse"] = "keep",
        request_token_ids: bool = False,
        request_logprobs: bool = False,
        tokenizer: Tokenizer | str | None = None,
        policy_version: int | None = None,
        strict: bool = False,
        keep_finished: bool = True,
        token_mode: Literal["auto", "all", "off"] = "auto",
        local_template: LocalTemplate | str | None = None,
    ) -> None:
        if unscoped not in ("keep", "refuse"):
            raise ValueError(f"unscoped must be 'keep' or 'refuse', got {unscoped!r}")
        if token_mode not in ("auto", "all", "off"):
            raise ValueError(f"token_mode must be 'auto', 'all' or 'off', got {token_mode!r}")
        if isinstance(local_template, str):
            from rollout.tokenmode.local_template import load_template

            local_template = load_template(local_template)
        if local_template is not None:
            missing = [m for m in ("render", "decode", "parse") if not callable(getattr(local_template, m, None))]
            if missing:
                raise TypeError(f"local_template has no {', '.join(missing)} method (see LocalTemplate)")
            if token_mode == "off":
                raise ValueError("local_template renders token-mode calls; it needs token_mode 'auto' or 'all'")
        self.unscoped_mode = unscoped
        self.request_token_ids = request_token_ids
        self.request_logprobs = request_logprobs
        self.tokenizer: Tokenizer | PerServer | None = (
            load_tokenizer(tokenizer) if isinstance(tokenizer, str) else tokenizer
        )
        self._server_tokenizers: dict[str, ServerTokenizer] = {}
        self.policy_version = policy_version
        self.strict = strict
        self.keep_finished = keep_finished
        self.token_mode = token_mode
        self.local_template = local_template
        self._servers: TokenServers | None = None  # token mode: one transport per client, facts per URL + credentials
        self.unscoped = Episode(task_id="__unscoped__")
        self._finished: list[Episode] = []
        self._logs: dict[str, EpisodeLog] = {self.unscoped.id: EpisodeLog(self.unscoped, closes=False)}
        self._lock = threading.Lock()

    # --- public API ---------------------------------------------------------------

    def wrap(self, client: Any) -> Any:
        """A recording client of the same type as `client`; its API key is never written."""
        register_secret(getattr(client, "api_key", None))
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

    def token_server(self, client: Any) -> TokenServer:
        """Token mode's view of the server behind `client`: its own transport (its URL,
        headers, query, timeout, proxy and CA), the server's facts shared with the clients
        that send the same URL and headers."""
        from rollout.tokenmode import TokenServers, server_for

        if self._servers is None:  # made once, on token mode's first call
            with self._lock:
                if self._servers is None:
                    self._servers = TokenServers(self.local_template)
        return server_for(client, self._servers)

    def tokenizer_for(self, client: Any, model: str) -> Tokenizer | None:
        """The tokenizer for replies from `client`'s server (`tokenizer="server"`: its own)."""
        if not isinstance(self.tokenizer, PerServer):
            return self.tokenizer
        from rollout.tokenmode import Unavailable

        try:
            http = self.token_server(client).http
        except Unavailable:
            return None
        with self._lock:
            key = f"{id(http)} {model}"  # per client transport: never another client's headers
            tok = self._server_tokenizers.get(key)
            if tok is None:
                tok = self._server_tokenizers[key] = ServerTokenizer(http, model)
            return tok

    def close(self) -> None:
        """Close token mode's own sync connections (the clients you wrapped are yours to close)."""
        if self._servers is not None:
            self._servers.close()

    async def aclose(self) -> None:
        """Close token mode's connections for this event loop (call it from that loop)."""
        if self._servers is not None:
            await self._servers.aclose()

    # --- used by the wrapper ---------------------------------------------------------

    def _log(self, episode: Episode) -> EpisodeLog:
        with self._lock:
            log = self._logs.get(episode.id)
            if log is None:
                log = self._logs[episode.id] = EpisodeLog(episode)
            return log

    def finish(self, episode: Episode) -> None:
        """The episode ended: record its open streams, forget its state, keep it if asked."""
        with self._lock:
            log = self._logs.pop(episode.id, None)
        if log is not None:
            log.close()
        if self.keep_finished:
            with self._lock:
                self._finished.append(episode)

    def start_call(
        self, kwargs: dict[str, Any], *, endpoint: str, client: Any = None
    ) -> tuple[dict[str, Any], PendingCall]:
        """Check scope, add requested fields, plan token mode, start the clock.

        Shared by sync and async. With token mode on, a chat call that can be
        stitched onto its parent comes back with `pending.turn` set (send it
        with `send_tokens` / `asend_tokens`); otherwise `pending.fallback`
        says why it goes as messages.
        """
        episode = _current.get()
        if episode is None:
            if self.unscoped_mode == "refuse":
                raise UnscopedCallError(
                    f"{endpoint} called outside `recorder.episode(...)` (unscoped='refuse')"
                )
            episode = self.unscoped
        # The SDK's "not given" sentinels mean absent, as the SDK reads them: stripped once
        # here, so neither mode (nor the record) ever sees one.
        sent = {k: v for k, v in kwargs.items() if not unset(v)}
        if not _responses_api(endpoint):
            if self.request_token_ids:
                extra = dict(sent.get("extra_body") or {})
                extra.setdefault("return_token_ids", True)
                sent["extra_body"] = extra
            if self.request_logprobs and "logprobs" not in sent:
                sent["logprobs"] = True
        pending = PendingCall(self, self._log(episode), endpoint, sent)
        pending.request = scrub(sent, pending.log.copies)  # the record's snapshot, taken now
        if self.token_mode != "off":
            if endpoint in ("chat.completions", "chat.completions.stream"):
                pending.plan_tokens(client, asked_logprobs=bool(kwargs.get("logprobs")) and not unset(kwargs["logprobs"]))
            else:
                pending.fallback = f"{endpoint} goes as messages"
        return sent, pending


def _wire_messages(kwargs: dict[str, Any]) -> dict[str, Any]:
    """`kwargs` with pydantic objects in its messages (a message, or a tool call inside a dict)
    as the dicts the SDK itself would send (its `_transform`: `model_dump(exclude_unset=True,
    mode="json")`): token mode's own requests are plain JSON."""
    messages = kwargs.get("messages")
    if not isinstance(messages, list) or not any(_has_model(m) for m in messages):
        return kwargs
    return {**kwargs, "messages": [_wire(m) for m in messages]}


def _has_model(x: Any) -> bool:
    if hasattr(x, "model_dump"):
        return True
    if isinstance(x, dict):
        return any(_has_model(v) for v in x.values())
    return isinstance(x, list) and any(_has_model(v) for v in x)


def _wire(x: Any) -> Any:
    if hasattr(x, "model_dump"):
        return x.model_dump(exclude_unset=True, mode="json", exclude=getattr(x, "__api_exclude__", None))
    if isinstance(x, dict):
        return {k: _wire(v) for k, v in x.items()}
    if isinstance(x, list):
        return [_wire(v) for v in x]
    return x


def _responses_api(endpoint: str) -> bool:
    """Whether calls to `endpoint` speak the Responses API (`responses`, `responses.parse`,
    `beta.responses`, ...), not chat completions."""
    return endpoint.removeprefix("beta.").split(".")[0] == "responses"


class PendingCall:
    """One call in flight: turns its reply (or stream, or failure) into a record."""

    __slots__ = ("_keys", "_read", "_t0", "done", "endpoint", "episode", "fallback", "kwargs", "log", "recorder",
                 "request", "started", "turn")  # fmt: skip

    def __init__(self, recorder: Recorder, log: EpisodeLog, endpoint: str, kwargs: dict[str, Any]) -> None:
        self.recorder = recorder
        self.log = log
        self.episode = log.episode
        self.endpoint = endpoint
        self.kwargs = kwargs
        self.request: dict[str, Any] | None = None  # the snapshot the record stores (`scrub`)
        self.started = time.time()
        self._t0 = time.perf_counter()
        self.done = False
        self.turn: TokenCall | None = None  # token mode: this call goes as token ids
        self.fallback: str | None = None  # token mode: why it goes as messages instead
        self._keys: tuple[Any, ...] | None = None  # `message_keys(messages)`, taken once
        self._read: tuple[Any, ...] | TokenRecordError | None = None  # the reply, read as parsed

    def snapshot(self) -> dict[str, Any]:
        """The request as recorded: taken when the call was made (`start_call`)."""
        if self.request is None:
            self.request = scrub(self.kwargs, self.log.copies)
        return self.request

    @property
    def record_blocks(self) -> bool:
        """Recording may wait on the network: `tokenizer="server"` asks the server for ids.
        Async callers then record off the event loop."""
        return isinstance(self.recorder.tokenizer, PerServer)

    @property
    def messages(self) -> list[dict[str, Any]]:
        if _responses_api(self.endpoint):
            return responses_input_as_messages(self.kwargs)
        return list(self.kwargs.get("messages") or [])

    def message_keys(self, messages: list[Any]) -> tuple[Any, ...]:
        """The lineage keys of this call's messages: matched when the call is planned and again
        when it is recorded, computed once (at the first, so both see the messages as sent)."""
        if self._keys is None:
            self._keys = message_keys(messages)
        return self._keys

    def reader(self, client: Any) -> Callable[[dict[str, Any]], None] | None:
        """What reads this call's reply body as the SDK parses it (`rollout.reply_tap`), or
        None where this call's record is read from the SDK's objects: a stream or raw view
        (parsed later, chunk by chunk or on demand), the Responses API, a tokenizer that waits
        on the network (not inside the SDK's parse)."""
        if _responses_api(self.endpoint) or self.kwargs.get("stream") or self.record_blocks:
            return None

        def read(data: dict[str, Any]) -> None:
            try:
                self._read = self._extract(data, client, self.messages)
            except TokenRecordError as exc:  # raised where a record is made: `record`
                self._read = exc

        return read

    def _extract(self, response: Any, client: Any, messages: list[Any]) -> tuple[Any, ...]:
        """What the record takes from a reply: `extract_call`'s findings, its usage and id."""
        rec = self.recorder
        tokenizer = rec.tokenizer_for(client, str(self.kwargs.get("model") or ""))  # its errors are its own
        try:
            found = extract_call(
                response,
                messages=messages,
                tools=self.kwargs.get("tools"),
                client=client,
                tokenizer=tokenizer,
                policy_version=rec.policy_version,
                strict=rec.strict,
                request=None if _responses_api(self.endpoint) else self.kwargs,
            )
            return (*found, plain(_get(response, "usage")), str(_get(response, "id") or ""))
        except MALFORMED as exc:  # a reply of a shape no record can be read from: a typed error
            raise unreadable(exc, "the reply")  # noqa: B904  (chained by `unreadable`)

    def record(self, response: Any, client: Any) -> CallRecord:
        """Build and store the record for a complete reply (read as it was parsed, if it was)."""
        self.done = True
        found, self._read = self._read, None
        messages = self.messages
        try:
            if isinstance(found, TokenRecordError):
                raise found
            if found is None:
                if _responses_api(self.endpoint):
                    response = responses_api_as_chat(response)
                found = self._extract(response, client, messages)
        except TokenRecordError as exc:  # the reply reached the caller's code path: leave a trace
            self.fail(exc)
            raise
        prompt, prompt_source, choices, notes, usage, call_id = found
        call = CallRecord(
            id=call_id,
            endpoint=self.endpoint,
            prompt_ids=prompt,
            prompt_source=prompt_source,
            choices=choices,
            request=self.snapshot(),
            usage=usage,
            latency_s=time.perf_counter() - self._t0,
            started_at=self.started,
            notes=notes,
            fallback=self.fallback,
        )
        self.log.append(call, messages, self.message_keys(messages))
        return call

    # --- token mode: `rollout.tokenmode` sends, the recorder records -------------------

    def plan_tokens(self, client: Any, *, asked_logprobs: bool) -> None:
        """Decide whether this call goes as token ids (`turn`) or as messages (`fallback`).

        The agent's reply carries logprobs when the agent asked for them. Those the recorder
        adds for its own record (`request_logprobs`) are not built into the reply: the SDK's
        logprob objects cost more client CPU than the rest of a token-mode call."""
        from rollout.tokenmode import TokenCall, plan_turn

        messages = self.kwargs.get("messages")
        found = self.log.parent_of(messages, self.message_keys(messages)) if isinstance(messages, list) else None
        kwargs = _wire_messages({k: v for k, v in self.kwargs.items() if not unset(v)})  # the SDK's helpers send sentinels
        outcome = plan_turn(
            kwargs,
            found,
            earlier_calls=bool(self.episode.calls),
            server=lambda: self.recorder.token_server(client),
            continued=() if found is None else self.log.continued(found[0], found[1]),
            first_call=self.recorder.token_mode == "all",
        )
        if isinstance(outcome, str):
            self.fallback = outcome
        else:
            self.turn = TokenCall(outcome, kwargs, asked_logprobs=asked_logprobs)

    def send_tokens(self) -> Any:
        """Send the stitched turn; the reply (or a replayed stream), or None when the
        call must go as messages after all (`fallback` says why)."""
        assert self.turn is not None
        try:
            gen = self.turn.send()
            return self._fell_back() if gen is None else self._deliver(gen, is_async=False)
        except BaseException as exc:  # interrupted, or a failure: the same trace as messages mode
            self.fail(exc)
            raise

    async def asend_tokens(self) -> Any:
        """The async twin of `send_tokens`."""
        assert self.turn is not None
        try:
            gen = await self.turn.asend()
            return self._fell_back() if gen is None else self._deliver(gen, is_async=True)
        except BaseException as exc:  # cancelled, or a failure: the same trace as messages mode
            self.fail(exc)
            raise

    def _fell_back(self) -> None:
        assert self.turn is not None
        self.fallback, self.turn = self.turn.fallback, None
        return None

    def _deliver(self, gen: Generation, *, is_async: bool) -> Any:
        """Record a token-mode generation; the ChatCompletion (or its stream) for the agent."""
        assert self.turn is not None
        choices, reply = self.turn.deliver(gen, self.recorder.policy_version, strict=self.recorder.strict)
        self.done = True
        call = CallRecord(
            id=reply["id"],
            endpoint=self.endpoint,
            prompt_ids=as_ids(gen.prompt_ids),
            prompt_source=TokenSource.TOKEN_IN,
            choices=choices,
            request=self.snapshot(),
            usage=reply["usage"],
            latency_s=time.perf_counter() - self._t0,
            started_at=self.started,
            sent_as="tokens",
            notes=self.turn.notes,
        )
        messages = self.messages
        self.log.append(call, messages, self.message_keys(messages))
        return self.turn.agent_reply(reply, is_async=is_async)

    def record_stream(self, acc: StreamAccumulator, client: Any, *, complete: bool) -> CallRecord | None:
        if self.done:
            return None
        if not acc.data["choices"]:
            self.fail(RuntimeError("stream closed before any chunk arrived"))
            return None
        try:
            response = acc.response()
        except MALFORMED as exc:  # e.g. a delta's content that is not text
            self.fail(err := unreadable(exc, "the stream"))
            raise err  # noqa: B904  (chained by `unreadable`)
        call = self.record(response, client)
        if not complete:
            call.notes.append("stream closed before its end: completion is partial")
        return call

    def on_episode_end(self, finalize: Callable[[], Any]) -> None:
        """Run `finalize` when the episode ends, unless this call was recorded by then."""
        self.log.on_end(lambda: None if self.done else finalize())

    def fail(self, exc: BaseException) -> None:
        """A failed call leaves a trace in the episode; the exception still propagates."""
        self.done = True
        failures = self.episode.metadata.setdefault("failed_calls", [])
        failures.append({"endpoint": self.endpoint, "error": explain_failure(exc)[1]})


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
        self.recorder.finish(self.episode)
        return False

    async def __aenter__(self) -> Episode:
        return self.__enter__()

    async def __aexit__(self, exc_type: Any, exc: BaseException | None, tb: Any) -> Literal[False]:
        return self.__exit__(exc_type, exc, tb)


def finish_episode(episode: Episode, exc: BaseException | None) -> None:
    """Set the final status from how the episode ended."""
    if exc is not None:
        timed_out = isinstance(exc, TimeoutError) or _is_asyncio_timeout(exc)
        episode.status = EpisodeStatus.TIMEOUT if timed_out else EpisodeStatus.ERROR
        episode.error = f"{type(exc).__name__}: {exc}"
    elif (
        episode.status == EpisodeStatus.COMPLETED
        and episode.calls
        and any(c.finish_reason == "length" for c in episode.calls[-1].choices)
    ):
        episode.status = EpisodeStatus.TRUNCATED


def _is_asyncio_timeout(exc: BaseException) -> bool:
    """asyncio's own TimeoutError (a separate class before Python 3.11). Looked up
    only if asyncio is loaded: nothing else can raise it, and a sync user's
    `import rollout` then does not pay for importing asyncio."""
    asyncio = sys.modules.get("asyncio")
    return asyncio is not None and isinstance(exc, asyncio.TimeoutError)
