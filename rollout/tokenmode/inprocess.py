"""Token mode without HTTP: a dialect whose server is an object in this process.

A trainer's own rollout loop (verl's `AgentLoopBase`, rollout.loops.verl)
has no chat server: it holds a tokenizer with the model's chat template and
an engine that turns prompt ids into sampled ids (verl's
`server_manager.generate`). `InProcessDialect` puts those behind the same
`Dialect` interface the HTTP servers use, so the bridge, the stitch rules and
the reply the agent gets are token mode's own, unchanged: a later call is
the parent's prompt ids + its sampled ids + the bridge rendered by the
trainer's tokenizer.

The plans still yield `Request`s; a request for the engine is
`Request("CALL", name, thunk)`, and `InProcessHttp` (the driver's "http")
awaits `thunk()`. Rendering and decoding are plain function calls inside the
plan. Only the async driver can run an engine call (the trainer's engine is a
coroutine); the sync driver refuses it, so a sync client falls back to
messages with that reason.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Mapping
from typing import Any, ClassVar, Protocol

from rollout.call_record import TokenSource
from rollout.tokenmode.dialect import Dialect
from rollout.tokenmode.plan import Generation, Plan, Request
from rollout.tokenmode.server import ServerFacts, TokenServer
from rollout.tokenmode.transport import CallOptions, HttpError, JsonHttp

CALL = "CALL"
"""The method of a request that is an in-process awaitable (`body` is a zero-argument thunk)."""


class Engine(Protocol):
    """What a trainer's rollout side offers token mode: its template, its sampler, its parser."""

    def render(self, messages: list[Any], tools: Any, chat_template_kwargs: Any, *,
               generation_prompt: bool) -> list[int]: ...  # fmt: skip

    async def generate(self, prompt_ids: list[int], sampling: dict[str, Any]) -> Generation: ...

    def decode(self, ids: list[int]) -> str: ...

    async def parse(self, gen: Generation, kwargs: Mapping[str, Any]) -> bool:
        """Set each choice's `message` (tool calls included); False leaves it to the default parse."""
        ...


def call(name: str, thunk: Callable[[], Awaitable[Any]]) -> Request:
    """A request the in-process driver answers with `await thunk()`."""
    return Request(CALL, name, thunk)


class InProcessHttp(JsonHttp):
    """The "http" an in-process `TokenServer` is driven over: it awaits `CALL` requests."""

    def __init__(self, name: str = "in-process") -> None:
        super().__init__(f"http://{name}.invalid")  # nothing connects: every request is a CALL

    def request(self, method: str, path: str, body: Any = None, options: CallOptions | None = None) -> Any:
        raise HttpError(f"{path}: the in-process engine is async; call it from an async client", 501)

    async def arequest(self, method: str, path: str, body: Any = None, options: CallOptions | None = None) -> Any:
        if method != CALL or not callable(body):
            raise HttpError(f"{method} {path}: an in-process server answers only in-process calls", 501)
        return await body()

    def close(self) -> None:
        return None

    async def aclose(self) -> None:
        return None


class InProcessDialect(Dialect):
    """Token mode over an `Engine`: render, generate and parse in this process."""

    owners: ClassVar[tuple[str, ...]] = ()  # never chosen by a probe: built by its trainer
    source: ClassVar[TokenSource] = TokenSource.TOKEN_IN

    def __init__(self, engine: Engine, *, max_model_len: int | None = None, name: str = "in-process") -> None:
        super().__init__()
        self.engine = engine
        self.max_model_len = max_model_len
        self._name = name

    @property
    def name(self) -> str:
        return self._name

    def render(self, model: str, messages: list[Any], tools: Any, ctk: Any, *, generation_prompt: bool) -> Plan:
        return self.engine.render(messages, tools, ctk, generation_prompt=generation_prompt)
        yield  # a plan that asks for nothing

    def generate(self, model: str, prompt: list[int], sampling: dict[str, Any]) -> Plan:
        gen = yield call("generate", lambda: self.engine.generate(list(prompt), dict(sampling)))
        if not isinstance(gen, Generation):
            raise ValueError(f"the in-process engine returned {type(gen).__name__}, not a Generation")
        return gen

    def detokenize(self, model: str, ids: list[int]) -> Plan:
        return self.engine.decode(list(ids))
        yield

    def fill_messages(self, model: str, gen: Generation, kwargs: Mapping[str, Any]) -> Plan:
        """The engine's own parser (verl's tool parser), else the shared client-side parse."""
        parsed = yield call("parse", lambda: self.engine.parse(gen, kwargs))
        if parsed:
            return (yield from self.logprob_views(model, gen, kwargs))
        return (yield from super().fill_messages(model, gen, kwargs))  # decode, parse Hermes tool calls


def in_process_server(engine: Engine, *, max_model_len: int | None = None, name: str = "in-process") -> TokenServer:
    """A `TokenServer` (probe done: its dialect is set) over an in-process engine."""
    dialect = InProcessDialect(engine, max_model_len=max_model_len, name=name)
    return TokenServer(InProcessHttp(name), ServerFacts(dialect=dialect))
