"""One server as token mode sees it: its dialect, its template's facts, and the bridge.

The `TokenServer` probes the server once (`GET /v1/models`: `owned_by` picks
the dialect), learns its template's end-of-turn tokens, and renders each
call's bridge: the new messages after a placeholder assistant turn, minus
that turn alone, so no earlier turn is re-tokenized. Renders are cached by
their exact request (bounded), so a new turn the episode has sent before,
such as a fixed "Try again.", costs no round trip.
"""

from __future__ import annotations

import hashlib
import json
import threading
import weakref
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, NoReturn

from rollout.snapshot import plain
from rollout.tokenmode.dialect import Dialect
from rollout.tokenmode.local_template import LocalTemplate, LocalTemplateDialect
from rollout.tokenmode.plan import Generation, Plan, Request, with_options
from rollout.tokenmode.stitch import NO_SERVER, Parent, Unavailable, sampling_params
from rollout.tokenmode.transport import CallOptions, HttpError, JsonHttp, merge_headers

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
class ServerFacts:
    """What token mode learnt about one server, as one set of credentials sees it.

    Kept per base URL *and* the headers and query a client sends: a gateway
    may route on a header (a tenant, a deployment), so another client on the
    same URL may be talking to another server, and a probe answered for one
    key (or refused: 401) says nothing about another's.
    """

    dialect: Dialect | None = None  # None: not probed yet
    unavailable: str | None = None  # set when the server cannot do token mode
    closing: dict[str, list[int]] = field(default_factory=dict)
    placeholder: dict[str, list[int]] = field(default_factory=dict)
    rendered: dict[str, list[int]] = field(default_factory=dict)  # request JSON -> ids (never mutated)
    template: LocalTemplate | None = None  # render and parse on the client (`local_template`)
    lock: threading.Lock = field(default_factory=threading.Lock)


class TokenServer:
    """One client's view of a server: its transport (the client's own settings) and the
    server's facts, learnt once and shared by the clients that send the same credentials."""

    __slots__ = ("facts", "http", "identity", "settings", "state")

    def __init__(self, http: JsonHttp, facts: ServerFacts | None = None, identity: str = "") -> None:
        self.http = http
        self.facts = facts if facts is not None else ServerFacts()
        self.identity = identity
        self.settings: tuple[Any, ...] | None = None  # what `TokenServers.get` built it from
        self.state: tuple[Any, ...] | None = None  # the client's attributes then (`sdk_state`)

    @property
    def dialect(self) -> Dialect | None:
        return self.facts.dialect

    @dialect.setter
    def dialect(self, value: Dialect | None) -> None:
        self.facts.dialect = value

    @property
    def unavailable(self) -> str | None:
        return self.facts.unavailable

    @unavailable.setter
    def unavailable(self, value: str | None) -> None:
        self.facts.unavailable = value

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
        if self.facts.template is not None:
            dialect = LocalTemplateDialect(self.facts.template, dialect)
        with self.facts.lock:  # concurrent first calls each probe: the first answer is kept
            if self.dialect is None:
                self.dialect = dialect
            return self.dialect

    def _give_up(self, reason: str) -> NoReturn:
        self.unavailable = reason
        raise Unavailable(reason)

    # --- the bridge -------------------------------------------------------------------

    def _render(self, dialect: Dialect, model: str, messages: list[Any], tools: Any, ctk: Any, gen: bool) -> Plan:
        """The server template's ids for `messages`; repeats are answered from a small cache
        (a fixed reply such as a tool error or "Try again." is rendered by the server once).
        Nothing is answered for a dialect found to render unlike the server: its cached renders
        were its own."""
        if dialect.mismatch is not None:
            raise Unavailable(dialect.mismatch)
        try:
            key: str | None = json.dumps([model, messages, tools, ctk, gen], sort_keys=True)
        except (TypeError, ValueError):
            key = None
        if key is not None and len(key) > RENDER_CACHE_KEY_CHARS:
            key = None  # long, unlikely to repeat: not worth the memory
        if key is not None:
            cached = self.facts.rendered.get(key)
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
            facts = self.facts
            with facts.lock:
                while facts.rendered and len(facts.rendered) >= RENDER_CACHE_SIZE:
                    facts.rendered.pop(next(iter(facts.rendered)))
                facts.rendered[key] = tokens
        return tokens

    def join(self, dialect: Dialect, model: str, tools: Any, ctk: Any) -> Plan:
        """The template's end-of-turn tokens after an assistant message (cached)."""
        key = json.dumps([model, tools, ctk], sort_keys=True, default=str)
        facts = self.facts
        if key not in facts.closing:
            x = yield from self._render(dialect, model, [{"role": "assistant", "content": "x"}], tools, ctk, False)
            y = yield from self._render(dialect, model, [{"role": "assistant", "content": "y"}], tools, ctk, False)
            facts.placeholder[key] = x
            facts.closing[key] = _common_suffix(x, y)
        return facts.closing[key], key

    def bridge(self, dialect: Dialect, model: str, parent: Parent, new_messages: list[Any], ctk: Any) -> Plan:
        """The ids that follow the parent's sampled ids: join + the new turn, generation prompt included."""
        closing, key = yield from self.join(dialect, model, parent.tools, ctk)
        dummy = _dummy(new_messages)
        if dummy.get("content") == "x":
            before = self.facts.placeholder[key]
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

    def prompt(self, dialect: Dialect, model: str, messages: list[Any], tools: Any, ctk: Any) -> Plan:
        """A first call's prompt ids: its messages rendered by the server, generation prompt included."""
        prompt = yield from self._render(dialect, model, messages, tools, ctk, True)
        if not prompt:
            raise Unavailable("the server rendered the messages to no tokens")
        return prompt

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

    def turn(self, parent: Parent | None, new_messages: list[Any], kwargs: Mapping[str, Any]) -> Plan:
        """Stitch, generate and parse one call; returns the `Generation` (messages filled)
        and each choice's logprobs view for the agent (`Dialect.logprob_views`).

        Its requests carry the call's own `timeout=`, `extra_headers` and `extra_query`."""
        plan = self._turn(parent, new_messages, kwargs)
        options = CallOptions.of(kwargs)
        return (yield from plan if options is None else with_options(plan, options))

    def _turn(self, parent: Parent | None, new_messages: list[Any], kwargs: Mapping[str, Any]) -> Plan:
        dialect = yield from self.probe()
        model = str(kwargs.get("model") or "")
        extra = kwargs.get("extra_body") or {}
        ctk = extra.get("chat_template_kwargs")
        if parent is None:  # a first call: the whole conversation, as the chat route renders it
            prompt = yield from self.prompt(dialect, model, new_messages, plain(kwargs.get("tools")), ctk)
        else:
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


def client_settings(client: Any) -> tuple[str, dict[str, str], dict[str, str], Any, Any]:
    """(server root, headers, query, timeout, http client) an openai-style client sends with.

    The headers are what the SDK puts on every request: its auth headers and
    default headers (user agent, organization, a gateway's own header), an
    `Omit` removing one; the root is the base URL without its `/v1`.
    """
    base = getattr(client, "base_url", None)
    if base is None:
        raise Unavailable(NO_SERVER)
    root = str(base).split("?", 1)[0].rstrip("/")
    if root.endswith("/v1"):
        root = root[: -len("/v1")]
    auth = getattr(client, "auth_headers", None)
    defaults = getattr(client, "default_headers", None)
    headers = merge_headers(
        auth if isinstance(auth, Mapping) else None, defaults if isinstance(defaults, Mapping) else None
    )
    query = getattr(client, "default_query", None)
    query = {str(k): str(v) for k, v in query.items() if v is not None} if isinstance(query, Mapping) else {}
    timeout = getattr(client, "timeout", None)
    return root, headers, query, timeout, getattr(client, "_client", None)


def sdk_state(client: Any) -> tuple[Any, ...] | None:
    """A genuine openai client's own attributes, or None for any other client.

    An SDK client's URL, headers, query, timeout and http client (`client_settings`)
    are computed from its instance attributes alone (`api_key`, `_custom_headers`,
    `base_url`, ...), so while these compare equal the settings are the same, and a
    call need not recompute them (about 30 us). The tuple holds the values themselves:
    a replaced key compares unequal, and no freed object's id can be mistaken for it.
    """
    module = type(client).__module__
    if module != "openai" and not module.startswith("openai."):
        return None
    attrs = getattr(client, "__dict__", None)
    return None if attrs is None else tuple(attrs.values())


def _identity(root: str, headers: Mapping[str, str], query: Mapping[str, str]) -> str:
    """Who a request speaks as: the URL, headers and query, hashed (no secret kept in the key)."""
    text = json.dumps([root, sorted((k.lower(), v) for k, v in headers.items()), sorted(query.items())])
    return hashlib.sha256(text.encode()).hexdigest()


class TokenServers:
    """The `TokenServer` for each wrapped client: its own transport, facts shared by identity.

    A client's requests never carry another client's headers: each SDK
    client object gets its own `JsonHttp`, built from its own settings (and
    rebuilt when they change, e.g. a rotated key).
    """

    def __init__(self, template: LocalTemplate | None = None) -> None:
        self.template = template  # every server's calls rendered and parsed by it
        self._facts: dict[str, ServerFacts] = {}
        self._views: weakref.WeakKeyDictionary[Any, TokenServer] = weakref.WeakKeyDictionary()
        self._unhashable: dict[str, TokenServer] = {}  # clients that cannot be weakly keyed
        self._retired: list[JsonHttp] = []  # transports replaced by new settings, closed at close()
        self._lock = threading.Lock()

    def get(self, client: Any) -> TokenServer:
        try:
            known = self._views.get(client)
        except TypeError:  # not weakly keyable: looked up by its settings below
            known = None
        state = sdk_state(client)
        if known is not None and state is not None and known.state == state:  # the common case
            return known
        root, headers, query, timeout, http_client = client_settings(client)
        settings = (root, tuple(headers.items()), tuple(query.items()), timeout, id(http_client))
        if known is not None and known.settings == settings:  # nothing that is sent changed
            known.state = state
            return known
        identity = _identity(root, headers, query)
        view_key = f"{identity} {timeout!r} {id(http_client)}"
        with self._lock:
            try:
                server = self._views.get(client)
                weak = True
            except TypeError:
                server, weak = self._unhashable.get(view_key), False
            if server is not None and server.identity == view_key:
                return server
            facts = self._facts.get(identity)
            if facts is None:
                facts = self._facts[identity] = ServerFacts(template=self.template)
            try:
                http = JsonHttp(root, headers, timeout, query=query, client=http_client)
            except ValueError as exc:
                raise Unavailable(f"{NO_SERVER}: {exc}") from None
            if server is not None:
                self._retired.append(server.http)
            server = TokenServer(http, facts, view_key)
            server.settings, server.state = settings, state
            if weak:
                self._views[client] = server
            else:
                self._unhashable[view_key] = server
            return server

    def transports(self) -> list[JsonHttp]:
        with self._lock:
            return [s.http for s in [*self._views.values(), *self._unhashable.values()]] + list(self._retired)

    def close(self) -> None:
        for http in self.transports():
            http.close()

    async def aclose(self) -> None:
        for http in self.transports():
            await http.aclose()


def server_for(client: Any, servers: TokenServers) -> TokenServer:
    """The `TokenServer` for an openai-style client: its base URL, headers, query and timeout."""
    return servers.get(client)
