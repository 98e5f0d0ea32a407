"""Requests as data, one result shape, two drivers: what token mode's logic runs on.

Token mode's logic is a generator that yields `Request`s and receives each
reply (or has the request's `HttpError` thrown in), so the sync and the async
paths run the same code: `drive` executes a plan with blocking calls,
`adrive` with awaits. Nothing here knows a server's field names; those live
in one small module per wire dialect (`vllm`, `sglang`).

A request carries its call's `CallOptions` (the agent's `timeout=`,
`extra_headers`, `extra_query`), set by `with_options` around a turn's plan.
A timeout is not thrown into the plan: it ends the call (see `transport`).
"""

from __future__ import annotations

from collections.abc import Generator
from dataclasses import dataclass, field
from typing import Any

from rollout.tokenmode.transport import CallOptions, HttpError, JsonHttp


@dataclass(frozen=True, slots=True)
class Request:
    """One HTTP call a plan asks for."""

    method: str
    path: str
    body: Any = None
    options: CallOptions | None = None


Plan = Generator[Request, Any, Any]
"""Yields requests, receives their JSON replies, returns its result."""


@dataclass(slots=True)
class Sampled:
    """One generated choice, as the server reported it."""

    index: int
    token_ids: list[int]
    logprobs: list[float] | None
    finish_reason: str
    versions: list[int] | None = None  # per token, when the server reports spans
    message: dict[str, Any] | None = None  # the parsed assistant message, once known
    text: str | None = None  # the decoded completion, when the server sent it


@dataclass(slots=True)
class Generation:
    """A token-in generation: what was sent and what came back."""

    id: str
    prompt_ids: list[int]
    choices: list[Sampled]
    usage: dict[str, Any] = field(default_factory=dict)
    weight_version: int | None = None
    raw: Any = None  # the server's generate reply, for a derender call


def advance(plan: Plan, reply: Any, error: HttpError | None) -> Request:
    """Hand a plan the outcome of its last request (the reply, or its error thrown in);
    returns its next request (StopIteration carries its result)."""
    return plan.throw(error) if error is not None else plan.send(reply)


def with_options(plan: Plan, options: CallOptions) -> Plan:
    """`plan`, its every request carrying `options`."""
    reply: Any = None
    error: HttpError | None = None
    while True:
        try:
            request = advance(plan, reply, error)
        except StopIteration as done:
            return done.value
        try:
            reply, error = (yield Request(request.method, request.path, request.body, options)), None
        except HttpError as exc:
            reply, error = None, exc


def drive(plan: Plan, http: JsonHttp) -> Any:
    """Run a plan with blocking requests. An `HttpError` is thrown into the plan
    (which may fall back); anything else, a timeout included, ends it."""
    reply: Any = None
    error: HttpError | None = None
    try:
        while True:
            try:
                request = advance(plan, reply, error)
            except StopIteration as done:
                return done.value
            try:
                reply, error = http.request(request.method, request.path, request.body, request.options), None
            except HttpError as exc:
                reply, error = None, exc
    finally:
        plan.close()


async def adrive(plan: Plan, http: JsonHttp) -> Any:
    """The async twin of `drive`."""
    reply: Any = None
    error: HttpError | None = None
    try:
        while True:
            try:
                request = advance(plan, reply, error)
            except StopIteration as done:
                return done.value
            try:
                reply, error = await http.arequest(request.method, request.path, request.body, request.options), None
            except HttpError as exc:
                reply, error = None, exc
    finally:
        plan.close()


def version_of(value: Any) -> int | None:
    """A policy version as an int: servers send ints, or strings such as "7" (or "step-7")."""
    if isinstance(value, bool):
        return None
    if isinstance(value, int):
        return value
    if isinstance(value, str):
        digits = value.rsplit("-", 1)[-1]
        if digits.isdigit():
            return int(digits)
    return None


def versions_from_spans(spans: Any, n: int) -> list[int] | None:
    """Per-token versions from `[{version, start, end}]` spans covering `n` tokens."""
    if not isinstance(spans, list) or not spans:
        return None
    out = [-1] * n
    for span in spans:
        if not isinstance(span, dict):
            return None
        v = version_of(span.get("version"))
        start, end = span.get("start"), span.get("end")
        if v is None or not isinstance(start, int) or not isinstance(end, int):
            return None
        for i in range(max(0, start), min(n, end)):
            out[i] = v
    return out
