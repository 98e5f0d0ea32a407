"""One server as token mode sees it: its dialect, its template's facts, and the bridge.

The `TokenServer` probes the server once (`GET /v1/models`: `owned_by` picks
the dialect), learns its template's end-of-turn tokens, and renders each
call's bridge: the new messages after a placeholder assistant turn, minus
that turn alone, so no earlier turn is re-tokenized. Renders are cached by
their exact request (bounded), so a new turn the episode has sent before,
such as a fixed "Try again.", costs no round trip.
"""

from __future__ import annotations

import json
import threading
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from rollout.tokenmode.dialect import Dialect
from rollout.tokenmode.plan import Generation, Plan, Request
from rollout.tokenmode.stitch import NO_SERVER, Parent, Unavailable, sampling_params
from rollout.tokenmode.transport import HttpError, JsonHttp

RENDER_CACHE_SIZE = 1024
"""Rendered bridges a `TokenServer` keeps (oldest out first)."""
RENDER_CACHE_KEY_CHARS = 4096
"""Renders whose request is longer than this are not cached."""


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
    dialect: Dialect | None = None  # None: not probed yet
    unavailable: str | None = None  # set when the server cannot do token mode
    _closing: dict[str, list[int]] = field(default_factory=dict)
    _placeholder: dict[str, list[int]] = field(default_factory=dict)
    _rendered: dict[str, list[int]] = field(default_factory=dict)  # request JSON -> ids (never mutated)
    _lock: threading.Lock = field(default_factory=threading.Lock)

    # --- what the server is --------------------------------------------------------

    def probe(self) -> Plan:
        """Learn the dialect from `GET /v1/models` (`owned_by`); returns it."""
        if self.unavailable is not None:
            raise Unavailable(self.unavailable)
        if self.dialect is not None:
            return self.dialect
        try:
            reply = yield Request("GET", "/v1/models")
        except HttpError as exc:
            self._give_up(f"server cannot be probed for token mode: {exc}")
        data = reply.get("data") if isinstance(reply, dict) else None
        owner = data[0].get("owned_by") if isinstance(data, list) and data and isinstance(data[0], dict) else None
        dialect = Dialect.for_owner(owner)
        if dialect is None:
            self._give_up(f"server has no known token route (owned_by {owner!r})")
        self.dialect = dialect
        return dialect

    def _give_up(self, reason: str) -> Any:
        self.unavailable = reason
        raise Unavailable(reason)

    # --- the bridge -------------------------------------------------------------------

    def _render(self, dialect: Dialect, model: str, messages: list[Any], tools: Any, ctk: Any, gen: bool) -> Plan:
        """The server template's ids for `messages`; repeats are answered from a small cache
        (a fixed reply such as a tool error or "Try again." is rendered by the server once)."""
        try:
            key: str | None = json.dumps([model, messages, tools, ctk, gen], sort_keys=True)
        except (TypeError, ValueError):
            key = None
        if key is not None and len(key) > RENDER_CACHE_KEY_CHARS:
            key = None  # long, unlikely to repeat: not worth the memory
        if key is not None:
            cached = self._rendered.get(key)
            if cached is not None:
                return cached
        try:
            tokens = yield from dialect.render(model, messages, tools, ctk, generation_prompt=gen)
        except HttpError as exc:
            if exc.unavailable:
                self._give_up(f"server cannot render messages to tokens: {exc}")
            raise Unavailable(f"bridge could not be rendered: {exc}") from exc
        if not isinstance(tokens, list) or not all(isinstance(t, int) for t in tokens):
            raise Unavailable("tokenize reply has no token list")
        if key is not None:
            with self._lock:
                while self._rendered and len(self._rendered) >= RENDER_CACHE_SIZE:
                    self._rendered.pop(next(iter(self._rendered)))
                self._rendered[key] = tokens
        return tokens

    def join(self, dialect: Dialect, model: str, tools: Any, ctk: Any) -> Plan:
        """The template's end-of-turn tokens after an assistant message (cached)."""
        key = json.dumps([model, tools, ctk], sort_keys=True, default=str)
        if key not in self._closing:
            x = yield from self._render(dialect, model, [{"role": "assistant", "content": "x"}], tools, ctk, False)
            y = yield from self._render(dialect, model, [{"role": "assistant", "content": "y"}], tools, ctk, False)
            self._placeholder[key] = x
            self._closing[key] = _common_suffix(x, y)
        return self._closing[key], key

    def bridge(self, dialect: Dialect, model: str, parent: Parent, new_messages: list[Any], ctk: Any) -> Plan:
        """The ids that follow the parent's sampled ids: join + the new turn, generation prompt included."""
        closing, key = yield from self.join(dialect, model, parent.tools, ctk)
        dummy = _dummy(new_messages)
        if dummy.get("content") == "x":
            before = self._placeholder[key]
        else:
            before = yield from self._render(dialect, model, [dummy], parent.tools, ctk, False)
        after = yield from self._render(dialect, model, [dummy, *new_messages], parent.tools, ctk, True)
        if after[: len(before)] != before:
            raise Unavailable("the template renders the new messages differently after a turn")
        if len(after) == len(before):  # the new messages (and the generation prompt) would be left out
            raise Unavailable("bridge rendered no tokens for the new messages")
        stopped = bool(closing) and parent.sampled_ids[-1:] == closing[:1]
        join = closing[1:] if stopped else closing
        return [*join, *after[len(before) :]]

    def max_model_len(self, dialect: Dialect, model: str) -> Plan:
        """The context length: from `/tokenize` replies, else the model card (`GET /v1/models`,
        vLLM's and SGLang's `max_model_len`). A server that reports neither cannot say how
        long a reply without `max_tokens` may be, so such calls go as messages."""
        if dialect.max_model_len is None:
            try:
                reply = yield Request("GET", "/v1/models")
            except HttpError as exc:
                raise Unavailable(f"context length unknown: {exc}") from exc
            data = reply.get("data") if isinstance(reply, dict) else None
            cards = [d for d in data if isinstance(d, dict)] if isinstance(data, list) else []
            card = next((d for d in cards if d.get("id") == model), cards[0] if cards else {})
            limit = card.get("max_model_len")
            if type(limit) is int and limit > 0:
                dialect.max_model_len = limit
        if dialect.max_model_len is None:
            raise Unavailable("the server reports no context length (max_model_len) for a call without max_tokens")
        return dialect.max_model_len

    # --- one turn -------------------------------------------------------------------

    def turn(self, parent: Parent, new_messages: list[Any], kwargs: Mapping[str, Any]) -> Plan:
        """Stitch, generate and parse one call; returns the `Generation` (messages filled)
        and each choice's logprobs view for the agent (`Dialect.logprob_views`)."""
        dialect = yield from self.probe()
        model = str(kwargs.get("model") or "")
        extra = kwargs.get("extra_body") or {}
        ctk = extra.get("chat_template_kwargs")
        bridge = yield from self.bridge(dialect, model, parent, new_messages, ctk)
        prompt = [*parent.prompt_ids, *parent.sampled_ids, *bridge]
        budget = kwargs.get("max_completion_tokens") or kwargs.get("max_tokens")
        if budget is None:  # chat semantics: the rest of the context (the server refuses a full one)
            limit = yield from self.max_model_len(dialect, model)
            budget = max(1, limit - len(prompt))
        sampling = sampling_params(kwargs, int(budget))
        try:
            gen: Generation = yield from dialect.generate(model, prompt, sampling)
        except HttpError as exc:
            if exc.unavailable:
                self._give_up(f"server has no token route: {exc}")
            raise
        views = yield from dialect.fill_messages(model, gen, kwargs)
        return gen, views


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
