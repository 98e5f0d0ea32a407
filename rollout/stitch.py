"""Token mode: an episode's later calls go to the server as token ids.

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

The call then goes to the dialect's token route (`rollout.dialects`), and
the reply comes back to the agent as a normal `ChatCompletion`. Where
stitching is impossible (first call, edited history, multimodal content, a
parameter the token route cannot honour, a server without a token route)
the call goes as messages and the record says why (`CallRecord.fallback`).
"""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

from rollout.dialects import hermes, sglang, vllm
from rollout.dialects.base import Generation, Plan, Request
from rollout.dialects.http import HttpError, JsonHttp
from rollout.record import CallRecord, Choice

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


def _dummy(new_messages: list[Any]) -> dict[str, Any]:
    """The placeholder assistant turn the new messages are rendered after.

    Tool results need an assistant turn with matching tool calls before them
    (templates look the calls up), so those ids get stub calls.
    """
    ids = []
    for m in new_messages:
        if not (isinstance(m, Mapping) and m.get("role") == "tool"):
            break
        ids.append(str(m.get("tool_call_id", "")))
    if not ids:
        return {"role": "assistant", "content": "x"}
    return {
        "role": "assistant",
        "content": None,
        "tool_calls": [
            {"id": i, "type": "function", "function": {"name": "f", "arguments": "{}"}} for i in ids
        ],
    }


def _common_suffix(a: list[int], b: list[int]) -> list[int]:
    n = 0
    while n < min(len(a), len(b)) and a[-1 - n] == b[-1 - n]:
        n += 1
    return a[len(a) - n :] if n else []


@dataclass
class TokenServer:
    """One server's token-mode dialect and template facts, learnt once, shared by episodes."""

    http: JsonHttp
    dialect: str | None = None  # "vllm" (also the embedded server) or "sglang"; None: unprobed
    unavailable: str | None = None  # set when the server cannot do token mode
    route: str = "generate"  # vllm: "generate", or "completions" where generate is off
    derender: bool = True
    max_model_len: int | None = None
    _closing: dict[str, list[int]] = field(default_factory=dict)
    _placeholder: dict[str, list[int]] = field(default_factory=dict)
    _lock: threading.Lock = field(default_factory=threading.Lock)

    # --- what the server is --------------------------------------------------------

    def probe(self) -> Plan:
        """Learn the dialect from `/v1/models` (`owned_by`: vllm, sglang, or rollout)."""
        if self.unavailable is not None:
            raise Unavailable(self.unavailable)
        if self.dialect is not None:
            return
        try:
            reply = yield Request("GET", "/v1/models")
        except HttpError as exc:
            self._give_up(f"server cannot be probed for token mode: {exc}")
        data = reply.get("data") if isinstance(reply, dict) else None
        owner = data[0].get("owned_by") if isinstance(data, list) and data and isinstance(data[0], dict) else None
        if owner in ("vllm", "rollout"):
            self.dialect = "vllm"
        elif owner == "sglang":
            self.dialect, self.derender = "sglang", False
        else:
            self._give_up(f"server has no known token route (owned_by {owner!r})")

    def _give_up(self, reason: str) -> None:
        self.unavailable = reason
        raise Unavailable(reason)

    # --- the bridge -------------------------------------------------------------------

    def _render(self, model: str, messages: list[Any], tools: Any, ctk: Any, gen: bool) -> Plan:
        try:
            reply = yield vllm.tokenize(model, messages, tools, add_generation_prompt=gen,
                                        chat_template_kwargs=ctk)  # fmt: skip
        except HttpError as exc:
            if exc.unavailable:
                self._give_up(f"server cannot render messages to tokens: {exc}")
            raise Unavailable(f"bridge could not be rendered: {exc}") from exc
        tokens = reply.get("tokens") if isinstance(reply, dict) else None
        if not isinstance(tokens, list) or not all(isinstance(t, int) for t in tokens):
            raise Unavailable("tokenize reply has no token list")
        if isinstance(reply.get("max_model_len"), int):
            self.max_model_len = reply["max_model_len"]
        return tokens

    def join(self, model: str, tools: Any, ctk: Any) -> Plan:
        """The template's end-of-turn tokens after an assistant message (cached)."""
        key = json.dumps([model, tools, ctk], sort_keys=True, default=str)
        if key not in self._closing:
            x = yield from self._render(model, [{"role": "assistant", "content": "x"}], tools, ctk, False)
            y = yield from self._render(model, [{"role": "assistant", "content": "y"}], tools, ctk, False)
            self._placeholder[key] = x
            self._closing[key] = _common_suffix(x, y)
        return self._closing[key], key

    def bridge(self, model: str, parent: Parent, new_messages: list[Any], ctk: Any) -> Plan:
        """The ids that follow the parent's sampled ids: join + the new turn, generation prompt included."""
        closing, key = yield from self.join(model, parent.tools, ctk)
        dummy = _dummy(new_messages)
        if dummy.get("content") == "x":
            before = self._placeholder[key]
        else:
            before = yield from self._render(model, [dummy], parent.tools, ctk, False)
        after = yield from self._render(model, [dummy, *new_messages], parent.tools, ctk, True)
        if after[: len(before)] != before:
            raise Unavailable("the template renders the new messages differently after a turn")
        stopped = bool(closing) and parent.sampled_ids[-1:] == closing[:1]
        join = closing[1:] if stopped else closing
        return [*join, *after[len(before) :]]

    # --- one turn -------------------------------------------------------------------

    def turn(self, parent: Parent, new_messages: list[Any], kwargs: Mapping[str, Any]) -> Plan:
        """Stitch, generate and parse one call; returns the `Generation` (messages filled)."""
        yield from self.probe()
        model = str(kwargs.get("model") or "")
        extra = kwargs.get("extra_body") or {}
        ctk = extra.get("chat_template_kwargs")
        bridge = yield from self.bridge(model, parent, new_messages, ctk)
        prompt = [*parent.prompt_ids, *parent.sampled_ids, *bridge]
        budget = kwargs.get("max_completion_tokens") or kwargs.get("max_tokens")
        if budget is None:  # chat semantics: the rest of the context
            budget = (self.max_model_len or len(prompt) + 16) - len(prompt)
        sampling = sampling_params(kwargs, int(budget))
        gen = yield from self._generate(model, prompt, sampling)
        yield from self._messages(model, gen, kwargs)
        return gen

    def _generate(self, model: str, prompt: list[int], sampling: dict[str, Any]) -> Plan:
        if self.dialect == "sglang":
            reply = yield sglang.generate(model, prompt, sampling)
            return sglang.parse_generate(reply, prompt)
        if self.route == "generate":
            try:
                reply = yield vllm.generate(model, prompt, sampling)
                return vllm.parse_generate(reply, prompt)
            except HttpError as exc:
                if not exc.unavailable:
                    raise
                self.route, self.derender = "completions", False  # e.g. 0.33 without --enable-scale-out
        try:
            reply = yield vllm.completions(model, prompt, sampling)
        except HttpError as exc:
            if exc.unavailable:
                self._give_up(f"server has no token route: {exc}")
            raise
        return vllm.parse_completions(reply, prompt)

    def _messages(self, model: str, gen: Generation, kwargs: Mapping[str, Any]) -> Plan:
        """Fill each choice's assistant message: the server's derender, else a client-side parse."""
        chat = {k: v for k, v in kwargs.items() if k in ("model", "messages", "tools", "tool_choice")}
        if self.derender:
            try:
                reply = yield vllm.derender(model, gen, chat)
                vllm.apply_derender(gen, reply)
                return
            except HttpError as exc:
                if not exc.unavailable:
                    raise
                self.derender = False
        parse_tools = bool(kwargs.get("tools")) and kwargs.get("tool_choice") != "none"
        for choice in gen.choices:
            if choice.text is None:
                ids = choice.token_ids
                if choice.finish_reason == "stop" and ids:
                    ids = ids[:-1]  # the stop token is not text
                reply = yield vllm.detokenize(model, ids)
                choice.text = str(reply.get("prompt", "")) if isinstance(reply, dict) else ""
            choice.message = hermes.parse_message(choice.text, tools=parse_tools)
            if choice.message.get("tool_calls"):
                choice.finish_reason = "tool_calls"


def chat_completion(gen: Generation, model: str, *, logprobs: bool) -> dict[str, Any]:
    """The reply the agent gets: a ChatCompletion, with vLLM's id fields like `return_token_ids`."""
    choices = []
    for c in gen.choices:
        block: dict[str, Any] | None = None
        if logprobs and c.logprobs is not None:
            block = {
                "content": [
                    {"token": f"token_id:{t}", "logprob": lp, "bytes": None, "top_logprobs": []}
                    for t, lp in zip(c.token_ids, c.logprobs, strict=True)
                ]
            }
        choices.append({
            "index": c.index,
            "message": {"role": "assistant", **(c.message or {"content": c.text or ""})},
            "finish_reason": c.finish_reason,
            "logprobs": block,
            "token_ids": c.token_ids,
        })  # fmt: skip
    n_out = sum(len(c.token_ids) for c in gen.choices)
    return {
        "id": gen.id if gen.id.startswith("chatcmpl-") else f"chatcmpl-{gen.id}",
        "object": "chat.completion",
        "created": int(time.time()),
        "model": model,
        "choices": choices,
        "usage": {
            "prompt_tokens": len(gen.prompt_ids),
            "completion_tokens": n_out,
            "total_tokens": len(gen.prompt_ids) + n_out,
        },
        "prompt_token_ids": gen.prompt_ids,
        **({"weight_version": gen.weight_version} if gen.weight_version is not None else {}),
    }


def server_for(client: Any, cache: dict[str, TokenServer], lock: threading.Lock) -> TokenServer:
    """The `TokenServer` for an openai-style client (its base URL and auth), one per URL."""
    base = getattr(client, "base_url", None)
    if base is None:
        raise Unavailable(NO_SERVER)
    root = str(base).rstrip("/")
    if root.endswith("/v1"):
        root = root[: -len("/v1")]
    with lock:
        server = cache.get(root)
        if server is None:
            headers = {}
            auth = getattr(client, "auth_headers", None)
            if isinstance(auth, Mapping):
                headers.update({str(k): str(v) for k, v in auth.items() if isinstance(v, str)})
            timeout = getattr(client, "timeout", None)
            seconds = float(timeout) if isinstance(timeout, (int, float)) else 60.0
            try:
                http = JsonHttp(root, headers, timeout=seconds)
            except ValueError as exc:
                raise Unavailable(f"{NO_SERVER}: {exc}") from None
            server = cache[root] = TokenServer(http)
        return server


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
