"""Which calls go as token ids, and why the others go as messages.

A call whose messages extend an earlier call's messages + reply (its parent)
is sent as

    prompt = parent prompt ids + parent's sampled ids + join + new-turn ids

so the server never re-renders or re-tokenizes history, and the whole
episode is one exact training row. The pieces:

- *new-turn ids*: the server's own chat template renders the new messages
  after a placeholder assistant turn (`[dummy] + new` with the generation
  prompt, minus `[dummy]` alone), so no earlier turn is re-tokenized;
- *join*: the template's end-of-turn tokens after an assistant message
  (Qwen: `<|im_end|>` `\\n`), learnt once per server by rendering two
  placeholder turns and keeping their common ending. When the parent stopped
  on the end-of-turn token only the rest is added; a parent cut off by
  `max_tokens` (or a stop string) gets all of it, as context (mask 0).

The bridge is built by the server's `TokenServer` (`rollout.tokenmode.server`).
The call then goes to the dialect's token route, and the reply comes back to the agent as a normal `ChatCompletion`. Where
stitching is impossible (first call, edited history, multimodal content, a
parameter the token route cannot honour, a server without a token route)
the call goes as messages and the record says why (`CallRecord.fallback`).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from rollout.record import CallRecord, Choice
from rollout.tokenmode.plan import Plan

if TYPE_CHECKING:
    from rollout.tokenmode.server import TokenServer

# Why a call went as messages although token mode was on (`CallRecord.fallback`).
FIRST_CALL = "first call"
EDITED_HISTORY = "edited history"
MULTIMODAL = "multimodal content"
INEXACT_PARENT = "parent ids are not exact"
TOOLS_CHANGED = "tools changed since the parent call"
NO_NEW_MESSAGES = "no new messages after the parent's reply"
NO_SERVER = "client has no HTTP base URL"

# Chat parameters the token routes honour; anything else sends the call as messages.
_SAMPLING = ("n", "temperature", "top_p", "seed", "presence_penalty", "frequency_penalty")
_PASSED = frozenset({
    "model", "messages", "tools", "tool_choice", "parallel_tool_calls", "stream",
    "stream_options", "logprobs", "top_logprobs", "max_tokens", "max_completion_tokens",
    "stop", "user", "extra_body", "extra_headers", "extra_query", "timeout", *_SAMPLING,
})  # fmt: skip
_EXTRA_SAMPLING = ("top_k", "min_p", "ignore_eos", "stop_token_ids", "repetition_penalty",
                   "min_tokens", "skip_special_tokens", "include_stop_str_in_output")  # fmt: skip
_EXTRA_PASSED = frozenset({"return_token_ids", "return_tokens_as_token_ids",
                           "chat_template_kwargs", *_EXTRA_SAMPLING})  # fmt: skip


class Unavailable(Exception):
    """Token mode cannot serve this call; the message is the fallback reason."""


@dataclass(slots=True)
class Parent:
    """The recorded call (and choice) a new call extends."""

    prompt_ids: list[int]
    sampled_ids: list[int]
    tools: Any
    exact: bool


def fallback_reason(kwargs: Mapping[str, Any]) -> str | None:
    """Why these request parameters cannot go through a token route, if they cannot."""
    for key, value in kwargs.items():
        if key not in _PASSED and type(value).__name__ not in ("NotGiven", "Omit"):
            return f"parameter {key!r} is not supported in token mode"
    choice = kwargs.get("tool_choice")
    if choice not in (None, "auto", "none") and type(choice).__name__ not in ("NotGiven", "Omit"):
        return "tool_choice that forces a call is not supported in token mode"
    extra = kwargs.get("extra_body") or {}
    for key in extra:
        if key not in _EXTRA_PASSED:
            return f"extra_body[{key!r}] is not supported in token mode"
    for m in kwargs.get("messages") or []:
        content = m.get("content") if isinstance(m, Mapping) else None
        if isinstance(content, list) and any(
            not (isinstance(p, Mapping) and p.get("type", "text") == "text") for p in content
        ):
            return MULTIMODAL
    return None


def sampling_params(kwargs: Mapping[str, Any], max_tokens: int) -> dict[str, Any]:
    """Chat parameters in vLLM's engine names (the dialects translate from these)."""
    out: dict[str, Any] = {"max_tokens": max_tokens}
    for key in _SAMPLING:
        if kwargs.get(key) is not None:
            out[key] = kwargs[key]
    stop = kwargs.get("stop")
    if stop is not None:
        out["stop"] = [stop] if isinstance(stop, str) else list(stop)
    extra = kwargs.get("extra_body") or {}
    for key in _EXTRA_SAMPLING:
        if extra.get(key) is not None:
            out[key] = extra[key]
    out["logprobs"] = int(kwargs.get("top_logprobs") or 0) if kwargs.get("logprobs") else None
    return out


@dataclass(slots=True)
class StitchedTurn:
    """A call that will go to `server` as token ids: its parent, new messages and request."""

    server: TokenServer
    parent: Parent
    new_messages: list[Any]
    kwargs: dict[str, Any]

    def plan(self) -> Plan:
        return self.server.turn(self.parent, self.new_messages, self.kwargs)


def _given(value: Any) -> Any:
    """None for absent values and the SDK's NOT_GIVEN / Omit sentinels."""
    return None if value is None or type(value).__name__ in ("NotGiven", "Omit") else value


def plan_turn(
    kwargs: dict[str, Any],
    found: tuple[CallRecord, Choice, int] | None,
    *,
    earlier_calls: bool,
    server: Callable[[], TokenServer],
) -> StitchedTurn | str:
    """The stitched turn for a call, or the reason it goes as messages.

    `found` is the parent: the recorded call and choice whose messages + reply
    the call's messages extend, and how many messages that covers.
    """
    reason = fallback_reason(kwargs)
    if reason is not None:
        return reason
    if found is None:
        return EDITED_HISTORY if earlier_calls else FIRST_CALL
    call, choice, end = found
    if not (call.prompt_source.exact and choice.exact) or len(call.prompt_ids) == 0:
        return INEXACT_PARENT
    tools = _given(kwargs.get("tools"))
    if tools != _given(call.request.get("tools")):
        return TOOLS_CHANGED
    new = list(kwargs["messages"][end:])
    if not new:
        return NO_NEW_MESSAGES
    try:
        target = server()
    except Unavailable as exc:
        return str(exc)
    if target.unavailable is not None:
        return target.unavailable
    parent = Parent(call.prompt_ids.tolist(), choice.ids.tolist(), tools, exact=True)
    return StitchedTurn(target, parent, new, kwargs)
