"""Token-route replies as the dialects read them: malformed ones are a typed error, never a crash.

Issue 18 §2. The integration tier sends the vLLM-format cases through a real
proxy; SGLang's `/generate` reply is read here from its documented shape.
"""

from __future__ import annotations

from typing import Any

import pytest

from rollout.tokenmode import sglang, vllm
from rollout.tokenmode.dialect import MalformedReply

GOOD_SGLANG = {"output_ids": [5, 6], "meta_info": {"finish_reason": {"type": "stop", "matched": 6},
                                                   "output_token_logprobs": [[-0.5, 5, None], [-0.25, 6, None]]}}  # fmt: skip


def test_a_well_formed_sglang_reply_is_read() -> None:
    gen = sglang.parse_generate(GOOD_SGLANG, [1, 2])
    assert gen.choices[0].token_ids == [5, 6] and gen.choices[0].logprobs == [-0.5, -0.25]
    assert gen.choices[0].finish_reason == "stop"


@pytest.mark.parametrize(
    "reply",
    [[], [42], [None], {"output_ids": [1], "meta_info": [1]}, {**GOOD_SGLANG, "index": None},
     {**GOOD_SGLANG, "index": True}, {**GOOD_SGLANG, "output_ids": [True]}, {**GOOD_SGLANG, "output_ids": [1.0]}],
    ids=["empty", "int", "null", "meta-list", "null-index", "bool-index", "bool-ids", "float-ids"],
)
def test_a_malformed_sglang_reply_is_a_typed_error(reply: Any) -> None:
    with pytest.raises(MalformedReply):
        sglang.parse_generate(reply, [1, 2])


@pytest.mark.parametrize(
    "reply",
    [{"choices": [[]]}, {"choices": [{"token_ids": [1], "index": "0"}]}, {"choices": [{"token_ids": None}]},
     {"choices": [{"index": 0}]}],
    ids=["list-choice", "str-index", "null-ids", "no-ids"],
)
def test_a_malformed_completions_reply_is_a_typed_error(reply: Any) -> None:
    with pytest.raises(MalformedReply):
        vllm.parse_completions(reply, [1, 2])


def _fill(dialect: Any, gen: Any, texts: dict[tuple[int, ...], str]) -> list[tuple[int, ...]]:
    """Run `fill_messages` answering each detokenize request from `texts`; the ids it asked for."""
    asked = []
    plan = dialect.fill_messages("m", gen, {})
    reply = None
    try:
        while True:
            request = plan.send(reply)
            ids = tuple(request.body["tokens"])
            asked.append(ids)
            reply = {"prompt": texts[ids]}
    except StopIteration:
        return asked


@pytest.mark.parametrize(
    ("matched", "asked", "content"),
    [("</a>", (5, 6, 7), "hi"), (7, (5, 6), "hi</"), (9, (5, 6, 7), "hi</a>")],
    ids=["stop-string", "stop-token", "other-token"],
)
def test_sglang_text_keeps_a_stop_strings_ids_and_drops_a_stop_token(
    matched: Any, asked: tuple[int, ...], content: str
) -> None:
    reply = {"output_ids": [5, 6, 7], "meta_info": {"finish_reason": {"type": "stop", "matched": matched}}}
    gen = sglang.parse_generate(reply, [1])
    texts = {(5, 6, 7): "hi</a>", (5, 6): "hi</"}
    assert _fill(sglang.SglangDialect(), gen, texts) == [asked]
    assert gen.choices[0].message == {"role": "assistant", "content": content}


def test_sglang_logprobs_view_names_tokens_by_the_text_it_sent() -> None:
    """`return_text_in_logprobs` triples give the agent's view its token texts without detokenize."""
    reply = {"output_ids": [5, 6], "meta_info": {
        "finish_reason": {"type": "length"},
        "output_token_logprobs": [[-0.5, 5, "he"], [-0.25, 6, "llo"]],
        "output_top_logprobs": [[[-0.5, 5, "he"], [-1.5, 9, "hi"]], [[-0.25, 6, "llo"], [-2.0, 7, "y"]]]}}  # fmt: skip
    gen = sglang.parse_generate(reply, [1])
    dialect = sglang.SglangDialect()
    plan = dialect.logprob_views("m", gen, {"logprobs": True, "top_logprobs": 2})
    with pytest.raises(StopIteration) as done:
        plan.send(None)  # no request: every text was in the reply
    view = done.value.value[0]
    assert [(e["token"], e["logprob"], e["bytes"]) for e in view] == [("he", -0.5, list(b"he")),
                                                                     ("llo", -0.25, list(b"llo"))]  # fmt: skip
    # SGLang's rows are the top k themselves (vLLM's generate repeats the sampled token first).
    assert [[t["token"] for t in e["top_logprobs"]] for e in view] == [["he", "hi"], ["llo", "y"]]
    body = sglang.generate("m", [1], {"max_tokens": 2, "logprobs": 1}).body
    assert body["return_text_in_logprobs"] is True and body["top_logprobs_num"] == 1


def _replies() -> list[dict[str, Any]]:
    """Reply shapes token mode hands the agent (`chat_completion`'s output), odd ones included."""
    base = {"id": "chatcmpl-1", "object": "chat.completion", "created": 7, "model": "m",
            "usage": {"prompt_tokens": 3, "completion_tokens": 2, "total_tokens": 5},
            "prompt_token_ids": [1, 2, 3], "weight_version": 4}  # fmt: skip
    entry = {"token": "a", "logprob": -0.5, "bytes": [97], "top_logprobs": [{"token": "b", "logprob": -1.0, "bytes": [98]}]}
    call = {"id": "call_1", "type": "function", "function": {"name": "add", "arguments": '{"a": 1}'}}
    choices: list[dict[str, Any]] = [
        {"index": 0, "message": {"role": "assistant", "content": "hi"}, "finish_reason": "stop", "logprobs": None, "token_ids": [5, 6]},
        {"index": 0, "message": {"role": "assistant", "content": None, "tool_calls": [call]}, "finish_reason": "tool_calls",
         "logprobs": {"content": [entry, entry]}, "token_ids": [5, 6]},
        {"index": 0, "message": {"role": "assistant", "content": "x", "reasoning_content": "think"}, "finish_reason": "length",
         "logprobs": None, "token_ids": [5]},
        {"index": 0, "message": {"role": "assistant", "content": ""}, "finish_reason": "abort", "logprobs": None, "token_ids": []},
    ]  # fmt: skip
    return [{**base, "choices": [c]} for c in choices]


@pytest.mark.parametrize("data", _replies(), ids=["content", "tool_call", "reasoning", "abort"])
def test_the_agents_reply_object_is_the_one_the_sdk_builds(data: dict[str, Any]) -> None:
    """`sdk_object` validates where it can; the object must be the SDK's own `construct_type`'s."""
    from openai._models import construct_type
    from openai.types.chat import ChatCompletion

    from rollout.tokenmode.reply import sdk_object

    ours, sdks = sdk_object(ChatCompletion, data), construct_type(type_=ChatCompletion, value=data)
    assert ours.to_dict() == sdks.to_dict() and ours.to_json() == sdks.to_json()
    assert ours.model_dump(exclude_unset=True, warnings=False) == sdks.model_dump(exclude_unset=True, warnings=False)
    assert ours.choices[0].finish_reason == data["choices"][0]["finish_reason"]  # "abort" too, as the chat route sends
    pairs = [(ours, sdks), (ours.choices[0], sdks.choices[0]), (ours.choices[0].message, sdks.choices[0].message)]
    pairs += list(zip(ours.choices[0].message.tool_calls or [], sdks.choices[0].message.tool_calls or [], strict=True))
    for a, b in pairs:
        assert type(a) is type(b)
    assert ours.choices[0].token_ids == data["choices"][0]["token_ids"] and ours.prompt_token_ids == [1, 2, 3]
