"""What a token-mode wire dialect is: one object per server, chosen by the probe.

A dialect knows one server protocol's routes and field names: how the
server renders messages to ids with its own chat template (for the
bridge), how it generates from a token-id prompt, and how its reply becomes
an assistant message. Everything else in token mode (matching a call to its
parent, stitching, the reply the agent gets) is shared.

Each method is a `Plan`: a generator of `Request`s (see `plan`), so one
implementation serves the sync and the async driver. A dialect subclass
names the `owned_by` values of `GET /v1/models` it speaks for and is
registered by being defined; adding a server type means adding one module
and importing it in `rollout.tokenmode`.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, ClassVar

from rollout.call_record import TokenSource
from rollout.tokenmode import hermes
from rollout.tokenmode.plan import Generation, Plan, Sampled

_BY_OWNER: dict[str, type[Dialect]] = {}

TOKEN_TEXT_CACHE = 1 << 18
"""Token texts a dialect keeps (a vocabulary's worth)."""


class MalformedReply(ValueError):
    """A token route answered 200 with JSON that is not the reply its protocol defines.

    The call then goes as messages, with this text as its fallback reason."""


def shown(value: Any, limit: int = 200) -> str:
    """A short text of a reply for an error message (safe on any JSON, however deep)."""
    try:
        return repr(value)[:limit]
    except RecursionError:
        return f"<{type(value).__name__} nested too deeply>"


def choice_object(c: Any, i: int, what: str) -> dict[str, Any]:
    """ChoiceRecord `i` of a reply, which must be a JSON object."""
    if not isinstance(c, dict):
        raise MalformedReply(f"{what} choice {i} is not an object: {shown(c)}")
    return c


def choice_index(c: dict[str, Any], i: int, what: str, key: str = "index") -> int:
    """A choice's `index`: its position when absent, an int otherwise (not null, not a bool)."""
    if key not in c:
        return i
    index = c[key]
    if type(index) is not int or index < 0:
        raise MalformedReply(f"{what} choice {i} has index {shown(index, 50)}, not a non-negative integer")
    return index


def logprob_value(value: Any) -> float:
    """A logprob as a float; null or anything not a number reads as NaN, which the record
    flags and keeps out of training (as `rollout.reply_ids` does for messages-mode replies)."""
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        return float(value)
    return float("nan")


def token_list(ids: Any, i: int, what: str, key: str) -> list[int]:
    """A choice's token ids: a list of non-negative ints (no bools, no floats)."""
    if not isinstance(ids, list) or not all(type(t) is int and t >= 0 for t in ids):
        raise MalformedReply(f"{what} choice {i} has no {key} list")
    return ids


def _named(t: int, lp: float, texts: dict[int, str] | None) -> dict[str, Any]:
    """A logprobs entry's token as the chat endpoint names it (`token_id:N` without texts)."""
    text = f"token_id:{t}" if texts is None else texts.get(t, "")
    return {"token": text, "logprob": lp, "bytes": list(text.encode("utf-8", errors="replace"))}


class Dialect:
    """One server's token protocol, plus what was learnt about that server."""

    owners: ClassVar[tuple[str, ...]] = ()
    """`owned_by` values of `GET /v1/models` that select this dialect."""
    source: ClassVar[TokenSource] = TokenSource.TOKEN_IN
    """How the sampled ids of its replies are labelled in records."""

    def __init__(self) -> None:
        self.max_model_len: int | None = None  # the context length, once the server said it
        # why this dialect is not used again (its client-side rendering differed from the server's)
        self.mismatch: str | None = None
        self._texts: dict[int, str] = {}  # token id -> its text (`token_texts`)

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        for owner in cls.owners:
            _BY_OWNER[owner] = cls

    @staticmethod
    def for_owner(owner: Any) -> Dialect | None:
        """A fresh dialect for a server whose models are `owned_by` this, if one is known."""
        cls = _BY_OWNER.get(owner) if isinstance(owner, str) else None
        return None if cls is None else cls()

    @property
    def name(self) -> str:
        return self.owners[0] if self.owners else type(self).__name__

    # --- what each dialect implements -------------------------------------------------

    def render(self, model: str, messages: list[Any], tools: Any, ctk: Any, *, generation_prompt: bool) -> Plan:
        """The ids of `messages` under the server's own chat template (no BOS added)."""
        raise NotImplementedError

    def generate(self, model: str, prompt: list[int], sampling: dict[str, Any]) -> Plan:
        """Generate from token ids; returns a `Generation`. `sampling` uses vLLM's
        engine names (`rollout.tokenmode.stitch.sampling_params`)."""
        raise NotImplementedError

    def detokenize(self, model: str, ids: list[int]) -> Plan:
        """The text of `ids` (special tokens kept as text)."""
        raise NotImplementedError

    def stop_reason(self, gen: Generation, choice: Sampled) -> tuple[bool, Any]:
        """(whether the server said, what stopped `choice`): a stop token id, a stop string,
        or None for EOS, as vLLM's `stop_reason` (the reply's choice of the same index)."""
        raw = gen.raw.get("choices") if isinstance(gen.raw, dict) else None
        for c in raw if isinstance(raw, list) else []:
            if isinstance(c, dict) and c.get("index", choice.index) == choice.index and "stop_reason" in c:
                return True, c["stop_reason"]
        return False, None

    def top_candidates(self, gen: Generation, choice: Sampled) -> list[list[tuple[int, float]]] | None:
        """Per sampled token, the top candidates (id, logprob) the reply carried, if any.
        vLLM's generate entries list the sampled token first, then the top k."""
        raw = gen.raw.get("choices") if isinstance(gen.raw, dict) else None
        for c in raw if isinstance(raw, list) else []:
            if not (isinstance(c, dict) and c.get("index", choice.index) == choice.index):
                continue
            block = c.get("logprobs")
            entries = block.get("content") if isinstance(block, dict) else None
            if not isinstance(entries, list) or len(entries) != len(choice.token_ids):
                return None
            out = []
            for e in entries:
                tops = e.get("top_logprobs") if isinstance(e, dict) else None
                if not isinstance(tops, list):
                    return None
                out.append([(t["token_id"], logprob_value(t.get("logprob"))) for t in tops[1:]
                            if isinstance(t, dict) and type(t.get("token_id")) is int])  # fmt: skip
            return out
        return None

    # --- shared ------------------------------------------------------------------------

    def token_texts(self, model: str, ids: set[int]) -> Plan:
        """Each id's text, as the chat endpoint names tokens in logprobs: one detokenize per id
        not seen before (a server's token texts never change, so they are kept)."""
        out: dict[int, str] = {}
        for t in sorted(ids):
            text = self._texts.get(t)
            if text is None:
                text = yield from self.detokenize(model, [t])
                if len(self._texts) < TOKEN_TEXT_CACHE:
                    self._texts[t] = text
            out[t] = text
        return out

    def logprob_views(self, model: str, gen: Generation, kwargs: Mapping[str, Any]) -> Plan:
        """Each choice's `logprobs.content` as the chat endpoint would send it (token text,
        bytes, `top_logprobs`), for a server that did not build it (no derender)."""
        if not kwargs.get("logprobs"):
            return {}
        extra = kwargs.get("extra_body") or {}
        as_ids = extra.get("return_tokens_as_token_ids") is True
        k = int(kwargs.get("top_logprobs") or 0)
        views: dict[int, list[dict[str, Any]]] = {}
        for choice in gen.choices:
            if choice.logprobs is None:
                continue
            tops = self.top_candidates(gen, choice) if k else None
            wanted = {*choice.token_ids, *(t for row in tops or [] for t, _ in row[:k])}
            texts = None if as_ids else (yield from self.token_texts(model, wanted))
            views[choice.index] = [
                {**_named(t, lp, texts), "top_logprobs": [_named(u, v, texts) for u, v in (tops[j][:k] if tops else [])]}
                for j, (t, lp) in enumerate(zip(choice.token_ids, choice.logprobs, strict=True))
            ]
        return views

    def fill_messages(self, model: str, gen: Generation, kwargs: Mapping[str, Any]) -> Plan:
        """Set each choice's assistant message: parsed on the client (Hermes / Qwen
        `<tool_call>` and `<think>`), from the server's text or a detokenize call.
        Dialects whose server can parse its own replies override this. Returns the
        logprobs views the agent gets (`logprob_views`)."""
        extra = kwargs.get("extra_body") or {}
        keep_stop = bool(extra.get("include_stop_str_in_output"))
        for choice in gen.choices:
            if choice.text is None:
                ids, cut = choice.token_ids, None
                if choice.finish_reason == "stop" and ids:
                    said, stop = self.stop_reason(gen, choice)
                    if isinstance(stop, str):  # a stop string: its ids are text, cut where it starts
                        cut = None if keep_stop else stop
                    elif not said or stop is None or stop == ids[-1]:
                        ids = ids[:-1]  # the stop token (EOS, or a stop_token_ids match) is not text
                text = yield from self.completion_text(model, ids, kwargs)
                if cut and (at := text.find(cut)) >= 0:
                    text = text[:at]
                choice.text = text
            choice.message = self.parse_message(choice.text or "", kwargs)
            if choice.message.get("tool_calls"):
                choice.finish_reason = "tool_calls"
        return (yield from self.logprob_views(model, gen, kwargs))

    def completion_text(self, model: str, ids: list[int], kwargs: Mapping[str, Any]) -> Plan:
        """The text of a choice's sampled ids (its stop token cut): the server's detokenize."""
        return (yield from self.detokenize(model, ids))

    def parse_message(self, text: str, kwargs: Mapping[str, Any]) -> dict[str, Any]:
        """The assistant message a completion's text stands for: Hermes / Qwen tool calls
        (when the call has tools and tool_choice is not "none") and `<think>` blocks."""
        parse_tools = bool(kwargs.get("tools")) and kwargs.get("tool_choice") != "none"
        return hermes.parse_message(text, tools=parse_tools)
