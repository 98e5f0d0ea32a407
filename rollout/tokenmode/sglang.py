"""SGLang's token route: `POST /generate` with `input_ids`.

Checked against SGLang 0.5.23 (`sglang/api/v1/api_types.py` GenerateRequest /
GenerateResponse, `srt/managers/tokenizer_manager.py`); see docs/wire.md.
`sampling_params` rejects unknown keys there, so only SGLang's names are
sent (`max_new_tokens`, not `max_tokens`). The reply's `output_ids` keep
the matched stop token (only `text` is trimmed); logprobs arrive as
`[logprob, token_id, text|null]` triples; `meta_info.weight_version` is
always present. SGLang has no derender route: replies are parsed client-side
(`rollout.tokenmode.hermes`). `/tokenize` takes `messages` as vLLM's does.
"""

from __future__ import annotations

import uuid
from collections.abc import Mapping
from typing import Any, ClassVar

from rollout.call_record import TokenSource
from rollout.tokenmode.dialect import (
    MalformedReply,
    choice_index,
    choice_object,
    logprob_value,
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
from rollout.tokenmode.vllm import VllmDialect

GENERATE = "/generate"

# vLLM engine name -> SGLang sampling_params name; absent keys are not sent.
_NAMES = {
    "max_tokens": "max_new_tokens",
    "temperature": "temperature",
    "top_p": "top_p",
    "top_k": "top_k",
    "min_p": "min_p",
    "stop": "stop",
    "stop_token_ids": "stop_token_ids",
    "ignore_eos": "ignore_eos",
    "presence_penalty": "presence_penalty",
    "frequency_penalty": "frequency_penalty",
    "repetition_penalty": "repetition_penalty",
    "min_tokens": "min_new_tokens",
    "skip_special_tokens": "skip_special_tokens",
    "n": "n",
    "seed": "sampling_seed",
}


def generate(model: str, prompt_ids: list[int], sampling: dict[str, Any]) -> Request:
    params = {_NAMES[k]: v for k, v in sampling.items() if k in _NAMES and v is not None}
    top = sampling.get("logprobs")
    body: dict[str, Any] = {
        "input_ids": prompt_ids,
        "sampling_params": params,
        "return_logprob": True,
        "logprob_start_len": -1,  # output tokens only
        "rid": uuid.uuid4().hex,
        "stream": False,
    }
    if isinstance(top, int) and top > 0:
        body["top_logprobs_num"] = top
    if top is not None:  # the agent's logprobs view names each token by its text
        body["return_text_in_logprobs"] = True
    return Request("POST", GENERATE, body)


def parse_generate(reply: Any, prompt_ids: list[int]) -> Generation:
    items = reply if isinstance(reply, list) else [reply]
    if not items:
        raise MalformedReply("generate reply has no choices")
    choices = []
    meta: dict[str, Any] = {}
    for i, raw in enumerate(items):
        item = choice_object(raw, i, "generate")
        meta = item.get("meta_info") or {}
        if not isinstance(meta, dict):
            raise MalformedReply(f"generate choice {i} has meta_info that is not an object")
        ids = token_list(item.get("output_ids"), i, "generate", "output_ids")
        triples = meta.get("output_token_logprobs")
        logprobs = None
        if isinstance(triples, list) and len(triples) == len(ids):
            pairs = [(t[0], t[1]) for t in triples if isinstance(t, list) and len(t) >= 2]
            if len(pairs) == len(ids) and all(tid == want for (_, tid), want in zip(pairs, ids, strict=True)):
                logprobs = [logprob_value(lp) for lp, _ in pairs]  # null: NaN, flagged in the record
        finish = meta.get("finish_reason")
        kind = finish.get("type") if isinstance(finish, dict) else finish
        choices.append(
            Sampled(
                index=choice_index(item, i, "generate"),
                token_ids=ids,
                logprobs=logprobs,
                finish_reason=raw_finish(kind),
                versions=versions_from_spans(meta.get("weight_versions"), len(ids)),
                text=item.get("text") if isinstance(item.get("text"), str) else None,
            )
        )
    prompt_tokens = meta.get("prompt_tokens")
    completion = sum(len(c.token_ids) for c in choices)
    return Generation(
        id=str(meta.get("id") or uuid.uuid4().hex),
        prompt_ids=prompt_ids,
        choices=choices,
        usage={
            "prompt_tokens": prompt_tokens if isinstance(prompt_tokens, int) else len(prompt_ids),
            "completion_tokens": completion,
            "total_tokens": len(prompt_ids) + completion,
        },
        weight_version=version_of(meta.get("weight_version")),
        raw=reply,
    )


class SglangDialect(VllmDialect):
    """SGLang: vLLM's `/tokenize` with messages for the bridge, its own `/generate`,
    replies parsed on the client (no derender route)."""

    owners: ClassVar[tuple[str, ...]] = ("sglang",)
    source: ClassVar[TokenSource] = TokenSource.SGLANG

    def __init__(self) -> None:
        super().__init__()
        self.derender = False

    def generate(self, model: str, prompt: list[int], sampling: dict[str, Any]) -> Plan:
        reply = yield generate(model, prompt, sampling)
        return parse_generate(reply, prompt)

    def _meta(self, gen: Generation, choice: Sampled) -> dict[str, Any]:
        items = gen.raw if isinstance(gen.raw, list) else [gen.raw]
        item = items[choice.index] if 0 <= choice.index < len(items) else None
        meta = item.get("meta_info") if isinstance(item, dict) else None
        return meta if isinstance(meta, dict) else {}

    def top_candidates(self, gen: Generation, choice: Sampled) -> list[list[tuple[int, float]]] | None:
        """`meta_info.output_top_logprobs`: per token, `[logprob, token_id, text]` triples."""
        rows = self._meta(gen, choice).get("output_top_logprobs")
        if not isinstance(rows, list) or len(rows) != len(choice.token_ids):
            return None
        out = []
        for row in rows:
            triples = [t for t in row if isinstance(t, list) and len(t) >= 2] if isinstance(row, list) else []
            out.append([(t[1], logprob_value(t[0])) for t in triples if type(t[1]) is int])
        return out

    def logprob_views(self, model: str, gen: Generation, kwargs: Mapping[str, Any]) -> Plan:
        """As the base class builds them, with the token texts SGLang sent in its triples
        (`return_text_in_logprobs`), so no detokenize call is needed for those."""
        for choice in gen.choices:
            meta = self._meta(gen, choice)
            tops = meta.get("output_top_logprobs")
            rows: list[Any] = [meta.get("output_token_logprobs"), *(tops if isinstance(tops, list) else [])]
            for row in rows:
                for t in row if isinstance(row, list) else []:
                    if isinstance(t, list) and len(t) >= 3 and type(t[1]) is int and isinstance(t[2], str):
                        self._texts.setdefault(t[1], t[2])
        return (yield from super().logprob_views(model, gen, kwargs))

    def stop_reason(self, gen: Generation, choice: Sampled) -> tuple[bool, Any]:
        """SGLang's `meta_info.finish_reason.matched`: the stop token id (EOS included) or string."""
        finish = self._meta(gen, choice).get("finish_reason")
        if isinstance(finish, dict) and "matched" in finish:
            return True, finish["matched"]
        return False, None
