"""Token mode with the chat template on the client: one request per call.

Over HTTP, token mode asks the server to render each call's new messages
(`/tokenize`) and to parse each reply (derender): three requests per call.
A trainer that holds the model's tokenizer and chat template can do both
here, as verl's agent loop and AReaL's `ArealOpenAI` do, and the server only
generates: one request per call, an episode's first call included
(`Recorder(local_template=..., token_mode="all")`).

Rows stay exact whoever renders: the prompt ids are the ones sent and the
sampled ids the ones the server returned. What a template can change is the
prompt: one that is not the server's gives the model another conversation
than the chat route would. So the first `VERIFY_RENDERS` renders of each kind
(the roles, tool calls, tools and options involved: `render_kind`) are also
asked of the server, where it can render, and compared. A parser that is not
the server's would give the agent another message: where the server parses
its own replies (vLLM's derender), the first replies of each kind
(`reply_kind`) are parsed by both and compared, and on a difference the
agent gets the server's. After that, renders and replies are still checked
at random gaps averaging `RECHECK_EVERY` (never more than twice that), so a
template that differs only on some content is caught within a bounded number
of calls, even where that content comes at a fixed period. On any difference the template is not used
for that server again: its calls go as messages, with the reason in each record.
"""

from __future__ import annotations

import json
import random
import threading
from collections.abc import Mapping
from dataclasses import replace
from typing import Any, Protocol, runtime_checkable

from rollout.errors import ConfigError
from rollout.tokenizers import load_hf_tokenizer
from rollout.tokenmode import hermes
from rollout.tokenmode.dialect import Dialect, MalformedReply
from rollout.tokenmode.plan import Generation, Plan, Sampled
from rollout.tokenmode.stitch import Unavailable
from rollout.tokenmode.transport import HttpError

VERIFY_RENDERS = 2
"""Renders of each kind (`render_kind`) checked against the server's own before the template is
trusted with that kind on that server."""
MAX_KINDS = 4096
"""Kinds remembered per server; renders of kinds past this many are always checked."""
RECHECK_EVERY = 256
"""Once a kind is trusted, renders (and parsed replies) are still checked, at random gaps of 1 to
`2 * RECHECK_EVERY - 1` trusted ones: a template that differs only on some content is caught within
a bounded number of calls. The gaps are random so that content which comes at a fixed period (every
other turn, say) cannot always fall between two checks."""
_RNG = random.Random()  # the re-check gaps (a test may seed it)


def render_kind(messages: list[Any], tools: Any, ctk: Any, generation_prompt: bool) -> tuple[Any, ...]:
    """What a template may render differently: the roles present, tool calls, list contents,
    tools, the generation prompt and the template options. Each kind is checked on its own, so a
    template that differs only on, say, tool results is caught at the first one."""
    roles, calls, parts = set(), False, False
    for m in messages:
        if isinstance(m, Mapping):
            roles.add(str(m.get("role")))
            calls = calls or bool(m.get("tool_calls"))
            parts = parts or isinstance(m.get("content"), list)
    options = json.dumps(ctk, sort_keys=True, default=str) if ctk else ""
    return (tuple(sorted(roles)), calls, parts, bool(tools), generation_prompt, options)


@runtime_checkable
class LocalTemplate(Protocol):
    """The model's chat template, tokenizer and reply parser, on the client."""

    def render(self, messages: list[Any], tools: Any, chat_template_kwargs: Any, *,
               generation_prompt: bool) -> list[int]:  # fmt: skip
        """The ids of `messages` (no BOS added beyond what the template writes)."""
        ...

    def decode(self, ids: list[int], *, skip_special_tokens: bool) -> str:
        """The text of `ids`; special tokens dropped when asked (a chat route's default)."""
        ...

    def parse(self, text: str, *, tools: list[Any] | None) -> dict[str, Any]:
        """The assistant message a completion's text stands for (`content`, `tool_calls`,
        `reasoning_content`); `tools` is None when the call may not call tools."""
        ...


class LocalTemplateDialect(Dialect):
    """A server's generate route, with rendering and parsing done by a `LocalTemplate`."""

    def __init__(
        self, template: LocalTemplate, server: Dialect, *, verify: int = VERIFY_RENDERS
    ) -> None:
        super().__init__()
        self.template = template
        self.server = server  # the probed dialect: its generate route and reply fields
        self.source = server.source  # type: ignore[misc]  # the ids are the server's, as through it
        self.verify = verify
        self.checking = True  # False once the server turned out unable to render
        self._checked: dict[tuple[Any, ...], int] = {}  # render kind -> renders found equal
        self._parsed: dict[tuple[Any, ...], int] = {}  # reply kind -> replies parsed alike
        self._left: dict[str, int] = {}  # trusted renders / replies until the next re-check
        self._lock = threading.Lock()

    @property
    def name(self) -> str:
        return f"{self.server.name} (local template)"

    def _unchecked(self, messages: list[Any], tools: Any, ctk: Any, generation_prompt: bool) -> Any:
        """The kind of this render if it is to be checked (fewer than `verify` renders of its kind
        were, or a re-check is due: `RECHECK_EVERY`), else None."""
        if not self.checking or self.verify <= 0:
            return None
        kind = render_kind(messages, tools, ctk, generation_prompt)
        return kind if self._checked.get(kind, 0) < self.verify or self._due("renders") else None

    def _due(self, what: str) -> bool:
        """Whether this trusted render or reply is re-checked (`RECHECK_EVERY`)."""
        with self._lock:
            left = self._left.get(what) or _RNG.randint(1, 2 * RECHECK_EVERY - 1)
            self._left[what] = left - 1
            return left == 1

    def render(
        self, model: str, messages: list[Any], tools: Any, ctk: Any, *, generation_prompt: bool
    ) -> Plan:
        if self.mismatch is not None:
            raise Unavailable(self.mismatch)
        try:
            rendered = self.template.render(messages, tools, ctk, generation_prompt=generation_prompt)
            ids = [int(t) for t in rendered]
        except Exception as exc:  # the user's template refused these messages
            raise Unavailable(
                f"the local template cannot render the messages: {type(exc).__name__}: {exc}"
            ) from exc
        kind = self._unchecked(messages, tools, ctk, generation_prompt)
        if kind is None:
            return ids
        try:
            theirs = yield from self.server.render(
                model, messages, tools, ctk, generation_prompt=generation_prompt
            )
        except HttpError as exc:
            if not exc.unavailable:
                raise Unavailable(f"the local template could not be checked: {exc}") from exc
            self.checking = False  # the server cannot render: there is nothing to check against
            return ids
        if self.max_model_len is None:
            self.max_model_len = self.server.max_model_len
        if theirs != ids:
            self.mismatch = (
                f"the local template's render differs from the server's ({_difference(ids, theirs)}); not used"
            )
            raise Unavailable(self.mismatch)
        with self._lock:
            if kind in self._checked or len(self._checked) < MAX_KINDS:
                self._checked[kind] = self._checked.get(kind, 0) + 1
        return ids

    def generate(self, model: str, prompt: list[int], sampling: dict[str, Any]) -> Plan:
        return (yield from self.server.generate(model, prompt, sampling))

    def _decode(self, ids: list[int], skip_special_tokens: bool) -> str:
        try:
            text = self.template.decode(list(ids), skip_special_tokens=skip_special_tokens)
        except Exception as exc:  # the user's template: the call goes as messages, with the reason
            raise MalformedReply(f"the local template could not decode the reply: {type(exc).__name__}: {exc}") from exc
        if not isinstance(text, str):
            raise MalformedReply(f"the local template decoded ids to {type(text).__name__}, not text")
        return text

    def detokenize(self, model: str, ids: list[int]) -> Plan:
        return self._decode(ids, False)
        yield  # a plan that asks for nothing

    def stop_reason(self, gen: Generation, choice: Sampled) -> tuple[bool, Any]:
        return self.server.stop_reason(gen, choice)

    def top_candidates(
        self, gen: Generation, choice: Sampled
    ) -> list[list[tuple[int, float]]] | None:
        return self.server.top_candidates(gen, choice)

    def completion_text(self, model: str, ids: list[int], kwargs: Mapping[str, Any]) -> Plan:
        extra = kwargs.get("extra_body") or {}
        skip = extra.get("skip_special_tokens") is not False  # vLLM's SamplingParams default: True
        return self._decode(ids, skip)
        yield

    def fill_messages(self, model: str, gen: Generation, kwargs: Mapping[str, Any]) -> Plan:
        """Decoded and parsed here. Where the server parses its own replies (vLLM's derender),
        the first `verify` replies of each kind (`reply_kind`) are parsed by it as well and
        compared: on a difference the agent gets the server's message, and the template is not
        used for that server again."""
        as_sampled = [replace(c) for c in gen.choices] if getattr(self.server, "derender", False) else None
        views = yield from super().fill_messages(model, gen, kwargs)
        if as_sampled is None or self.verify <= 0:
            return views
        kind = reply_kind(gen, kwargs)
        if self._parsed.get(kind, 0) >= self.verify and not self._due("replies"):
            return views
        theirs = Generation(gen.id, gen.prompt_ids, as_sampled, gen.usage, gen.weight_version, gen.raw)
        server_views = yield from self.server.fill_messages(model, theirs, kwargs)
        if not getattr(self.server, "derender", False):  # it had none after all: nothing to compare
            return views
        apart = [f"choice {a.index}: {_said(a)!r} here, {_said(b)!r} by the server"
                 for a, b in zip(gen.choices, theirs.choices, strict=True) if _said(a) != _said(b)]  # fmt: skip
        if apart:
            self.mismatch = f"the local template's parse differs from the server's ({'; '.join(apart)[:300]}); not used"
            for mine, server in zip(gen.choices, theirs.choices, strict=True):
                mine.message, mine.finish_reason = server.message, server.finish_reason
            return server_views
        with self._lock:
            if kind in self._parsed or len(self._parsed) < MAX_KINDS:
                self._parsed[kind] = self._parsed.get(kind, 0) + 1
        return views

    def parse_message(self, text: str, kwargs: Mapping[str, Any]) -> dict[str, Any]:
        tools = (
            kwargs.get("tools")
            if kwargs.get("tools") and kwargs.get("tool_choice") != "none"
            else None
        )
        try:
            message = self.template.parse(text, tools=list(tools) if tools else None)
        except Exception as exc:
            raise MalformedReply(
                f"the local template could not parse the reply: {type(exc).__name__}: {exc}"
            ) from exc
        if not isinstance(message, dict):
            raise MalformedReply(
                f"the local template parsed the reply to {type(message).__name__}, not a message"
            )
        return {"role": "assistant", **message}


def reply_kind(gen: Generation, kwargs: Mapping[str, Any]) -> tuple[Any, ...]:
    """What a parser may treat differently: whether the call may call tools, and what this
    template found in the replies (tool calls, reasoning)."""
    tools_on = bool(kwargs.get("tools")) and kwargs.get("tool_choice") != "none"
    found = tuple(sorted({k for c in gen.choices for k in ("tool_calls", "reasoning_content")
                          if (c.message or {}).get(k)}))  # fmt: skip
    return (tools_on, found)


def _said(choice: Sampled) -> tuple[Any, ...]:
    """What the agent reads of a parsed choice (tool-call ids aside: each parser makes its own)."""
    m = choice.message or {}
    calls = [(t.get("function", {}).get("name"), t.get("function", {}).get("arguments"))
             for t in m.get("tool_calls") or [] if isinstance(t, dict)]  # fmt: skip
    return (m.get("content") or None, m.get("reasoning_content") or None, calls, choice.finish_reason)


def _difference(ours: list[int], theirs: Any) -> str:
    """Where two renders part, for the record's fallback reason."""
    if not isinstance(theirs, list):
        return f"the server answered {type(theirs).__name__}"
    at = next(
        (i for i, (a, b) in enumerate(zip(ours, theirs, strict=False)) if a != b),
        min(len(ours), len(theirs)),
    )
    return f"{len(ours)} ids against {len(theirs)}, first apart at {at}"


class HFTemplate:
    """A Hugging Face tokenizer as the local template, for a vLLM or SGLang server serving its
    model: the tokenizer's chat template and decode, and Hermes / Qwen parsing of replies
    (`<tool_call>` blocks, and `<think>` blocks as `reasoning_content` when `reasoning`), as
    vLLM's `hermes` tool parser and a think-block reasoning parser give them."""

    def __init__(self, tokenizer: Any, *, reasoning: bool = True) -> None:
        if isinstance(tokenizer, str):
            tokenizer = load_hf_tokenizer(tokenizer, "backend.local_template")
        if not getattr(tokenizer, "chat_template", None):
            raise ConfigError(f"{type(tokenizer).__name__} has no chat template to render with")
        self.tokenizer = tokenizer
        self.reasoning = reasoning
        self._lock = threading.Lock()  # a fast tokenizer refuses concurrent use ("Already borrowed")

    def render(self, messages: list[Any], tools: Any, chat_template_kwargs: Any, *,
               generation_prompt: bool) -> list[int]:  # fmt: skip
        with self._lock:
            ids = self.tokenizer.apply_chat_template(
                messages, tools=tools or None, add_generation_prompt=generation_prompt, tokenize=True,
                **(chat_template_kwargs or {}),
            )  # fmt: skip
        if hasattr(ids, "keys"):  # transformers 5 returns a BatchEncoding (4.x: the ids)
            ids = ids["input_ids"]
        return [int(t) for t in ids]

    def decode(self, ids: list[int], *, skip_special_tokens: bool) -> str:
        with self._lock:
            return str(self.tokenizer.decode(ids, skip_special_tokens=skip_special_tokens))

    def parse(self, text: str, *, tools: list[Any] | None) -> dict[str, Any]:
        return hermes.parse_message(text, tools=tools is not None, reasoning=self.reasoning)


def check_template_spec(spec: str) -> str:
    """`spec` if it names a local template ("embedded", "hf:<name or path>"), else a `ConfigError`."""
    kind, sep, name = spec.partition(":")
    if spec == "embedded" or (kind == "hf" and sep and name.strip()):
        return spec
    raise ConfigError(f"backend.local_template {spec!r} must be 'embedded' or 'hf:<name or path>'")


def load_template(spec: str) -> LocalTemplate:
    """The local template a config names: "embedded" (the embedded model's) or "hf:<name or path>"."""
    name = check_template_spec(spec).partition(":")[2]
    if spec == "embedded":
        from rollout.embedded import ClientTemplate

        return ClientTemplate()
    return HFTemplate(name.strip())
