"""vLLM's token routes (and the embedded server's, which speaks the same wire format).

Checked against vLLM 0.33.0 (`vllm/entrypoints/scale_out/token_in_token_out/`
protocol.py and serving.py, `scale_out/derender/`, `serve/tokenize/`); see
docs/wire.md for the fields and the versions that introduced them.

- `POST /tokenize` with `messages`: the server's own chat template, used for
  the bridge tokens (`tokens`, `max_model_len`).
- `POST /inference/v1/generate`: `token_ids` + `sampling_params` (engine
  names), answering per choice `token_ids` (the stop token included),
  `logprobs` and `weight_versions` spans. Logprob entries come as
  `{"token_id": N, ...}` (0.33) or `{"token": "token_id:N", ...}` (0.11-0.29).
- `POST /v1/chat/completions/derender`: the generate reply + the chat request
  -> a ChatCompletion whose message the server's own tool and reasoning
  parsers built.
- Where generate is off (0.33 needs `--enable-scale-out`; it answers 403),
  `POST /v1/completions` with a token-id `prompt` and `return_token_ids`
  (vLLM >= 0.10.2) does the same job, without derender.
"""

from __future__ import annotations

import uuid
from collections.abc import Mapping
from typing import Any, ClassVar

from rollout.call_record import TokenSource
from rollout.snapshot import plain
from rollout.tokenmode.dialect import (
    Dialect,
    MalformedReply,
    choice_index,
    choice_object,
    logprob_value,
    shown,
    token_list,
)
from rollout.tokenmode.plan import (
    Generation,
    Plan,
    Request,
    Sampled,
    version_of,
    versions_from_spans,
)
from rollout.tokenmode.reply import raw_finish
from rollout.tokenmode.transport import HttpError

GENERATE = "/inference/v1/generate"
_DERENDER_KEYS = ("model", "messages", "tools", "tool_choice", "logprobs", "top_logprobs")
"""What of the chat request the derender reads: its parsers' inputs and the logprobs layout."""
DERENDER = "/v1/chat/completions/derender"
COMPLETIONS = "/v1/completions"


def tokenize(model: str, messages: list[Any], tools: Any, *, add_generation_prompt: bool,
             chat_template_kwargs: Any = None) -> Request:  # fmt: skip
    body: dict[str, Any] = {
        "model": model,
        "messages": messages,
        "add_generation_prompt": add_generation_prompt,
        "add_special_tokens": False,
    }
    if tools:
        body["tools"] = tools
    if chat_template_kwargs:
        body["chat_template_kwargs"] = chat_template_kwargs
    return Request("POST", "/tokenize", body)


def detokenize(model: str, ids: list[int]) -> Request:
    return Request("POST", "/detokenize", {"model": model, "tokens": ids})


def generate(model: str, prompt_ids: list[int], sampling: dict[str, Any]) -> Request:
    """The generate request; `sampling` uses vLLM's engine names (see `rollout.tokenmode.stitch`)."""
    return Request(
        "POST",
        GENERATE,
        {
            "model": model,
            "token_ids": prompt_ids,
            "sampling_params": sampling,
            "request_id": uuid.uuid4().hex,
            "stream": False,
        },
    )


def _entry_id(entry: Any) -> int | None:
    if not isinstance(entry, dict):
        return None
    tid = entry.get("token_id")
    if isinstance(tid, int):
        return tid
    tok = entry.get("token")
    if isinstance(tok, str) and tok.startswith("token_id:"):
        return int(tok[len("token_id:") :])
    return None


def _logprobs(block: Any, ids: list[int]) -> list[float] | None:
    """Per-token logprobs of the sampled ids, or None when absent or inconsistent."""
    entries = block.get("content") if isinstance(block, dict) else None
    if not isinstance(entries, list) or len(entries) != len(ids):
        return None
    out: list[float] = []
    for entry, tid in zip(entries, ids, strict=True):
        if not isinstance(entry, dict) or (_entry_id(entry) not in (None, tid)):
            return None
        out.append(logprob_value(entry.get("logprob")))  # null: NaN, flagged in the record
    return out


def parse_generate(reply: Any, prompt_ids: list[int]) -> Generation:
    if not isinstance(reply, dict) or not isinstance(reply.get("choices"), list) or not reply["choices"]:
        raise MalformedReply(f"generate reply has no choices: {shown(reply)}")
    choices = []
    for i, raw in enumerate(reply["choices"]):
        c = choice_object(raw, i, "generate")
        ids = token_list(c.get("token_ids"), i, "generate", "token_ids")
        choices.append(
            Sampled(
                index=choice_index(c, i, "generate"),
                token_ids=ids,
                logprobs=_logprobs(c.get("logprobs"), ids),
                finish_reason=raw_finish(c.get("finish_reason")),
                versions=versions_from_spans(c.get("weight_versions"), len(ids)),
                text=c.get("text") if isinstance(c.get("text"), str) else None,
            )
        )
    echoed = reply.get("prompt_token_ids")
    if isinstance(echoed, list) and echoed != prompt_ids:
        raise MalformedReply("the server generated from other prompt ids than were sent")
    return Generation(
        id=str(reply.get("request_id") or uuid.uuid4().hex),
        prompt_ids=prompt_ids,
        choices=choices,
        usage=reply.get("usage") or {},
        weight_version=version_of(reply.get("weight_version")),
        raw=reply,
    )


def derender(model: str, gen: Generation, chat_request: dict[str, Any]) -> Request:
    return Request(
        "POST",
        DERENDER,
        {
            "model": model,
            "generate_response": gen.raw,
            "prompt_token_ids": gen.prompt_ids,
            "prompt_tokens": len(gen.prompt_ids),
            "chat_request": chat_request,
        },
    )


def apply_derender(gen: Generation, reply: Any) -> dict[int, list[Any]]:
    """Set each choice's message (and finish reason) from a derendered ChatCompletion;
    returns its logprobs views (`logprobs.content` per choice index), the chat endpoint's own."""
    views: dict[int, list[Any]] = {}
    choices = reply.get("choices") if isinstance(reply, dict) else None
    if not isinstance(choices, list) or len(choices) != len(gen.choices):
        raise MalformedReply("derender reply does not match the generation's choices")
    by_index = {c.index: c for c in gen.choices}
    for i, raw in enumerate(choices):
        c = choice_object(raw, i, "derender")
        target = by_index.pop(choice_index(c, i, "derender"), None)
        message = c.get("message")
        if target is None or not isinstance(message, dict):
            raise MalformedReply(f"derender choice {i} has no message for a generated choice")
        if not (message.get("content") is None or isinstance(message.get("content"), str)):
            raise MalformedReply(f"derender choice {i} has content that is not text")
        calls = message.get("tool_calls")
        if calls is not None and not (isinstance(calls, list) and all(
            isinstance(t, dict) and isinstance(t.get("function"), dict) for t in calls
        )):
            raise MalformedReply(f"derender choice {i} has malformed tool_calls")
        target.message = {k: v for k, v in message.items() if v is not None}
        block = c.get("logprobs")
        content = block.get("content") if isinstance(block, dict) else None
        if isinstance(content, list) and len(content) == len(target.token_ids) and all(
            isinstance(e, dict) for e in content
        ):
            views[target.index] = content
        if c.get("finish_reason"):
            target.finish_reason = raw_finish(c["finish_reason"])
    return views


def completions(model: str, prompt_ids: list[int], sampling: dict[str, Any]) -> Request:
    """The fallback route: `/v1/completions` with a token-id prompt."""
    body: dict[str, Any] = {"model": model, "prompt": prompt_ids, "return_token_ids": True}
    for key, value in sampling.items():
        if key == "logprobs":
            body["logprobs"] = value if value is not None else None
        else:
            body[key] = value
    body.pop("detokenize", None)
    return Request("POST", COMPLETIONS, body)


def parse_completions(reply: Any, prompt_ids: list[int]) -> Generation:
    if not isinstance(reply, dict) or not isinstance(reply.get("choices"), list) or not reply["choices"]:
        raise MalformedReply(f"completions reply has no choices: {shown(reply)}")
    choices = []
    for i, raw in enumerate(reply["choices"]):
        c = choice_object(raw, i, "completions")
        if "token_ids" not in c:
            raise MalformedReply("completions reply has no token_ids (vLLM >= 0.10.2 sends them)")
        ids = token_list(c.get("token_ids"), i, "completions", "token_ids")
        lp = c.get("logprobs")
        values = lp.get("token_logprobs") if isinstance(lp, dict) else None
        ok = isinstance(values, list) and len(values) == len(ids)
        choices.append(
            Sampled(
                index=choice_index(c, i, "completions"),
                token_ids=ids,
                logprobs=[logprob_value(v) for v in values] if ok and values is not None else None,
                finish_reason=raw_finish(c.get("finish_reason")),
                versions=versions_from_spans(c.get("weight_versions"), len(ids)),
                text=c.get("text") if isinstance(c.get("text"), str) else None,
            )
        )
    return Generation(
        id=str(reply.get("id") or uuid.uuid4().hex),
        prompt_ids=prompt_ids,
        choices=choices,
        usage=reply.get("usage") or {},
        weight_version=version_of(reply.get("weight_version")),
        raw=reply,
    )


class VllmDialect(Dialect):
    """vLLM, and the embedded server (which speaks vLLM's routes)."""

    owners: ClassVar[tuple[str, ...]] = ("vllm", "rollout")
    source: ClassVar[TokenSource] = TokenSource.VLLM

    def __init__(self) -> None:
        super().__init__()
        self.route = "generate"  # or "completions" where generate is off
        self.derender = True  # the server parses its own replies (tool calls, reasoning)

    def render(self, model: str, messages: list[Any], tools: Any, ctk: Any, *, generation_prompt: bool) -> Plan:
        reply = yield tokenize(model, messages, tools, add_generation_prompt=generation_prompt,
                               chat_template_kwargs=ctk)  # fmt: skip
        tokens = reply.get("tokens") if isinstance(reply, dict) else None
        if isinstance(reply, dict) and type(reply.get("max_model_len")) is int and reply["max_model_len"] > 0:
            self.max_model_len = reply["max_model_len"]
        return tokens

    def generate(self, model: str, prompt: list[int], sampling: dict[str, Any]) -> Plan:
        if self.route == "generate":
            try:
                reply = yield generate(model, prompt, sampling)
                return parse_generate(reply, prompt)
            except HttpError as exc:
                if not exc.unavailable:
                    raise
                self.route, self.derender = "completions", False  # e.g. 0.33 without --enable-scale-out
        reply = yield completions(model, prompt, sampling)
        return parse_completions(reply, prompt)

    def detokenize(self, model: str, ids: list[int]) -> Plan:
        reply = yield detokenize(model, ids)
        return str(reply.get("prompt", "")) if isinstance(reply, dict) else ""

    def fill_messages(self, model: str, gen: Generation, kwargs: Mapping[str, Any]) -> Plan:
        """The server's derender (its own tool and reasoning parsers), else a client-side parse."""
        if self.derender:
            chat = {k: plain(v) for k, v in kwargs.items() if k in _DERENDER_KEYS}
            extra = kwargs.get("extra_body") or {}
            if extra.get("return_tokens_as_token_ids") is not None:
                chat["return_tokens_as_token_ids"] = extra["return_tokens_as_token_ids"]
            try:
                reply = yield derender(model, gen, chat)
                views = apply_derender(gen, reply)
            except HttpError as exc:
                if not exc.unavailable:
                    raise
                self.derender = False
            else:
                if len(views) < sum(c.logprobs is not None for c in gen.choices) and kwargs.get("logprobs"):
                    views = {**(yield from self.logprob_views(model, gen, kwargs)), **views}
                return views
        return (yield from super().fill_messages(model, gen, kwargs))
