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
