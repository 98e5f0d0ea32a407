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

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from rollout.lineage import Found, call_signatures, message_text
from rollout.snapshot import plain
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
BRANCH = "branch"  # + which calls already continued the parent: the episode cannot stay one row
AMBIGUOUS_PARENT = "ambiguous parent"  # + the choices whose reply reads the same, with other ids

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


# Request fields the chat template renders (or the server renders for it): a call is
# stitched onto its parent only when they are the same, compared by value.
_RENDERED = ("tools", "tool_choice", "response_format", "reasoning_effort", "functions", "function_call",
             "prediction", "web_search_options", "modalities", "audio")  # fmt: skip
_EXTRA_RENDERED = ("chat_template", "chat_template_kwargs", "documents", "add_generation_prompt",
                   "continue_final_message", "add_special_tokens", "mm_processor_kwargs",
                   "reasoning_effort", "tool_choice")  # fmt: skip
# Fields of the parent's reply that a template may render (reasoning is left out on purpose:
# the parent's sampled ids carry it, whatever the agent sends back).
_REPLY_FIELDS = ("content", "name", "tool_calls", "function_call")


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
    """A call that will go to `server` as token ids: its parent, new messages and request
    (no parent: an episode's first call, all of its messages rendered by the server)."""

    server: TokenServer
    parent: Parent | None
    new_messages: list[Any]
    kwargs: dict[str, Any]

    def plan(self) -> Plan:
        return self.server.turn(self.parent, self.new_messages, self.kwargs)


def rendered_change(kwargs: Mapping[str, Any], parent_request: Mapping[str, Any]) -> str | None:
    """Why the call renders differently from its parent (tools, response format, template options)."""

    def effective(request: Mapping[str, Any], key: str) -> Any:
        value = plain(request.get(key))
        if key == "tool_choice" and value is None:  # the default, spelt out
            return "auto" if plain(request.get("tools")) else "none"
        return value or None  # [] and {} mean what absent means

    for key in _RENDERED:
        if effective(kwargs, key) != effective(parent_request, key):
            return TOOLS_CHANGED if key == "tools" else f"{key!r} changed since the parent call"
    mine = plain(kwargs.get("extra_body")) or {}
    theirs = plain(parent_request.get("extra_body")) or {}
    for key in _EXTRA_RENDERED:
        if (mine.get(key) or None) != (theirs.get(key) or None):
            return f"extra_body[{key!r}] changed since the parent call"
    return None


def _message_view(m: Any, fields: tuple[str, ...] | None = None) -> dict[str, Any]:
    """What of a message is compared with the parent's: every field, with the spellings a
    framework varies (text parts, JSON formatting of arguments, tool-call ids, None
    fields) normalised as the prefix table normalises them (`rollout.lineage`, which
    notes such re-shaping on the record)."""
    data = plain(m)
    if not isinstance(data, dict):
        return {"message": data}
    if fields is not None:
        data = {k: v for k, v in data.items() if k in fields}
    data.pop("tool_call_id", None)  # an opaque handle; renamed ids are noted, not edits
    content = message_text(data.pop("content", None))
    if content is not None:
        data["content"] = content  # "" and None render alike
    if data.get("tool_calls"):
        data["tool_calls"] = call_signatures(data)
    else:
        data.pop("tool_calls", None)
    return data


def edited_prefix(prefix: list[Any], parent_messages: Any, reply: Mapping[str, Any]) -> str | None:
    """Why the messages before the new turn are not exactly the parent's messages + reply.

    The prefix table matches on role, content, tool-call names and arguments;
    the template also renders a message's `name`, tool-call ids and any other
    field, so every field of the history is compared here (and the reply's
    rendered fields), and the stitched prompt is what messages mode renders.
    """
    if not isinstance(parent_messages, list) or len(prefix) != len(parent_messages) + 1:
        return f"{EDITED_HISTORY}: the history is not the parent call's messages + reply"
    for i, (m, recorded) in enumerate(zip(prefix, parent_messages, strict=False)):
        mine, theirs = _message_view(m), _message_view(recorded)
        if mine != theirs:
            keys = sorted(k for k in {*mine, *theirs} if mine.get(k) != theirs.get(k))
            return f"{EDITED_HISTORY}: message {i} differs from the parent call's ({', '.join(keys)})"
    mine, theirs = _message_view(prefix[-1], _REPLY_FIELDS), _message_view(reply, _REPLY_FIELDS)
    if "tool_calls" not in mine:  # a framework that drops the calls it sends back (noted by lineage)
        theirs.pop("tool_calls", None)
    if mine != theirs:
        keys = sorted(k for k in {*mine, *theirs} if mine.get(k) != theirs.get(k))
        return f"{EDITED_HISTORY}: the parent's reply differs from what it sampled ({', '.join(keys)})"
    return None


def plan_turn(
    kwargs: dict[str, Any],
    found: Found | None,
    *,
    earlier_calls: bool,
    server: Callable[[], TokenServer],
    continued: Sequence[int] = (),
    first_call: bool = False,
) -> StitchedTurn | str:
    """The stitched turn for a call, or the reason it goes as messages.

    `found` is the parent: the recorded call and choice whose messages + reply
    the call's messages extend, and how many messages that covers. `continued`
    lists the calls that already continued that parent: a retry, or an agent
    whose history went back to an earlier turn (CAMEL's memory reorders
    replies). Such a call starts a new row whichever way it goes, so it goes
    as messages and the record names the branch. With `first_call`, an
    episode's first call goes as token ids too: the server renders its
    messages, then generates from those ids.
    """
    reason = fallback_reason(kwargs)
    if reason is not None:
        return reason
    if found is None:
        if earlier_calls:
            return EDITED_HISTORY
        return _first_turn(kwargs, server) if first_call else FIRST_CALL
    call, choice, end, rivals = found
    if rivals:  # n > 1 or a retry gave the same message as other ids: whose ids to send is unknown
        others = ", ".join(f"call {c} choice {k}" for c, k in rivals)
        return (f"{AMBIGUOUS_PARENT}: the last reply in the history is call {call.index} choice {choice.index}'s "
                f"message and also {others}'s, sampled as other ids")  # fmt: skip
    if continued:
        return f"{BRANCH}: continues call {call.index}, which call(s) {list(continued)} had already continued"
    if not (call.prompt_source.exact and choice.exact) or len(call.prompt_ids) == 0:
        return INEXACT_PARENT
    changed = rendered_change(kwargs, call.request)
    if changed is not None:
        return changed
    edited = edited_prefix(kwargs["messages"][:end], call.request.get("messages"), choice.message)
    if edited is not None:
        return edited
    tools = plain(kwargs.get("tools"))  # JSON for the bridge render, however the agent built it
    new = plain(list(kwargs["messages"][end:]))  # a copy: what is rendered is what is recorded
    if not new:
        return NO_NEW_MESSAGES
    parent = Parent(call.prompt_ids.tolist(), choice.ids.tolist(), tools, exact=True)
    return _turn_on(server, parent, new, kwargs)


def _first_turn(kwargs: dict[str, Any], server: Callable[[], TokenServer]) -> StitchedTurn | str:
    """An episode's first call as token ids: the server renders all of its messages."""
    messages = plain(list(kwargs.get("messages") or []))
    if not messages:
        return NO_NEW_MESSAGES
    return _turn_on(server, None, messages, kwargs)


def _turn_on(
    server: Callable[[], TokenServer], parent: Parent | None, new: list[Any], kwargs: dict[str, Any]
) -> StitchedTurn | str:
    """The turn on the call's server, or why that server cannot take it."""
    try:
        target = server()
    except Unavailable as exc:
        return str(exc)
    if target.unavailable is not None:
        return target.unavailable
    return StitchedTurn(target, parent, new, kwargs)
