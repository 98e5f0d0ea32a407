"""`HFTemplate`: token mode's local template over a real Hugging Face tokenizer and chat template
(the offline Qwen2.5-Instruct one prepare.sh builds for this tier, where transformers is installed).

The property token mode needs of a template is that a later call's prompt, stitched as the
parent's prompt ids + its sampled ids + the bridge rendered here, is the same ids the template
gives the whole conversation; these tests check it with Qwen2.5's real template.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import areal  # noqa: F401  (the peer: a broken install fails this tier; tests/peers/conftest.py)
import pytest
from transformers import AutoTokenizer

from rollout.errors import ConfigError
from rollout.tokenmode.inprocess import InProcessHttp
from rollout.tokenmode.local_template import (
    HFTemplate,
    LocalTemplate,
    LocalTemplateDialect,
    load_template,
)
from rollout.tokenmode.plan import drive
from rollout.tokenmode.server import TokenServer
from rollout.tokenmode.stitch import Parent
from rollout.tokenmode.vllm import VllmDialect

pytestmark = pytest.mark.peers

TOOLS = [{"type": "function", "function": {"name": "add", "description": "a + b",
                                           "parameters": {"type": "object", "properties": {"a": {"type": "integer"}}}}}]  # fmt: skip


def stitched(template: HFTemplate, history: list[dict[str, Any]], reply: str, new: list[dict[str, Any]],
             tools: Any = None) -> tuple[list[int], list[int], list[int]]:  # fmt: skip
    """(the stitched prompt of the next call, the parent's prompt + sampled ids, and the
    template's render of the whole conversation)."""
    tok = template.tokenizer
    prompt = template.render(history, tools, None, generation_prompt=True)
    sampled = [*tok.encode(reply, add_special_tokens=False), tok.convert_tokens_to_ids("<|im_end|>")]
    server = TokenServer(InProcessHttp())  # any request would raise: the template answers everything
    dialect = LocalTemplateDialect(template, VllmDialect(), verify=0)
    bridge = drive(server.bridge(dialect, "qwen", Parent(prompt, sampled, tools, True), new, None), server.http)
    message = {"role": "assistant", **template.parse(reply, tools=tools)}
    whole = template.render([*history, message, *new], tools, None, generation_prompt=True)
    return [*prompt, *sampled, *bridge], [*prompt, *sampled], whole


def test_renders_are_the_tokenizers_chat_template(qwen: Any) -> None:
    template = HFTemplate(qwen)
    assert isinstance(template, LocalTemplate)
    messages = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "What is 2 + 3?"}]
    text = qwen.apply_chat_template(messages, tools=TOOLS, add_generation_prompt=True, tokenize=False)
    assert template.render(messages, TOOLS, None, generation_prompt=True) == qwen.encode(text, add_special_tokens=False)
    assert "<tools>" in text and text.endswith("<|im_start|>assistant\n")


@pytest.mark.parametrize("system", [True, False], ids=["system", "default_system"])
def test_a_later_calls_stitched_prompt_is_the_whole_render(qwen: Any, system: bool) -> None:
    """Qwen2.5 adds its own system prompt when there is none: the bridge must not carry it."""
    template = HFTemplate(qwen)
    history = [{"role": "system", "content": "Be brief."}] if system else []
    history.append({"role": "user", "content": "What is 2 + 3?"})
    ours, _, whole = stitched(template, history, "5", [{"role": "user", "content": "Again, with 4 + 4."}])
    assert ours == whole


def test_a_tool_result_bridge_after_a_tool_call(qwen: Any) -> None:
    template = HFTemplate(qwen)
    reply = '<tool_call>\n{"name": "add", "arguments": {"a": 2}}\n</tool_call>'
    history = [{"role": "user", "content": "Add 2."}]
    call = template.parse(reply, tools=TOOLS)
    assert call["tool_calls"][0]["function"] == {"name": "add", "arguments": '{"a": 2}'} and not call["content"]
    new = [{"role": "tool", "tool_call_id": call["tool_calls"][0]["id"], "content": "2"}]
    ours, parent, whole = stitched(template, history, reply, new, TOOLS)
    # The template re-renders the call's arguments its own way, so the whole render is not the
    # sampled ids (the drift token mode avoids); the new turn is rendered as after that turn.
    message = {"role": "assistant", **call}
    after = template.render([*history, message], TOOLS, None, generation_prompt=False)
    assert whole[: len(parent)] != parent
    assert after[-2:] == [qwen.convert_tokens_to_ids("<|im_end|>"), *qwen.encode("\n", add_special_tokens=False)]
    assert ours == [*parent, *whole[len(after) - 1 :]]


def test_decode_drops_special_tokens_only_when_asked(qwen: Any) -> None:
    template = HFTemplate(qwen)
    ids = [*qwen.encode("5", add_special_tokens=False), qwen.convert_tokens_to_ids("<|im_end|>")]
    assert template.decode(ids, skip_special_tokens=True) == "5"
    assert template.decode(ids, skip_special_tokens=False) == "5<|im_end|>"
    assert template.parse("<think>sum</think>5", tools=None) == {"role": "assistant", "reasoning_content": "sum", "content": "5"}
    assert HFTemplate(qwen, reasoning=False).parse("<think>sum</think>5", tools=None)["content"] == "<think>sum</think>5"


def test_a_config_name_loads_it_and_a_tokenizer_without_a_template_is_refused(qwen: Any, qwen_path: str) -> None:
    loaded = load_template(f"hf:{qwen_path}")
    assert isinstance(loaded, HFTemplate) and loaded.tokenizer.chat_template == qwen.chat_template
    bare = AutoTokenizer.from_pretrained(qwen_path)
    bare.chat_template = None
    with pytest.raises(ConfigError, match="no chat template"):
        HFTemplate(bare)
    with pytest.raises(ConfigError, match="cannot load"):
        load_template(f"hf:{Path(qwen_path).parent / 'no-such-tokenizer'}")
