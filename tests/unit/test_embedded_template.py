"""Chat template: layout, safety, and the multi-turn token-prefix property."""

from __future__ import annotations

import json
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from rollout.embedded import END_ID, ChatTemplate, TemplateError, get_encoding
from rollout.embedded.template import (
    END_OF_PROMPT,
    FIM_MIDDLE,
    FIM_PREFIX,
    FIM_SUFFIX,
    parse_tool_call,
    tool_call_arguments,
)

T = ChatTemplate()
ENC = get_encoding()


def test_layout() -> None:
    ids = T.render([{"role": "system", "content": "Be brief."}, {"role": "user", "content": "hi"}])
    expected = [
        FIM_PREFIX, *ENC.encode("system"), FIM_MIDDLE, *ENC.encode("Be brief."), END_ID,
        FIM_PREFIX, *ENC.encode("user"), FIM_MIDDLE, *ENC.encode("hi"), END_ID,
        FIM_PREFIX, *ENC.encode("assistant"), FIM_MIDDLE,
    ]  # fmt: skip
    assert ids == expected
    assert (
        T.render([{"role": "user", "content": "hi"}], add_generation_prompt=False)
        == expected[expected.index(END_ID) + 1 : -3]
    )


def test_name_tools_and_parts() -> None:
    tools = [{"type": "function", "function": {"name": "calc"}}]
    ids = T.render(
        [
            {
                "role": "user",
                "name": "bob",
                "content": [{"type": "text", "text": "a"}, {"type": "text", "text": "b"}],
            }
        ],
        tools=tools,
    )
    assert ids[0] == FIM_SUFFIX
    end_tools = ids.index(END_ID)
    assert json.loads(ENC.decode(ids[1:end_tools])) == tools
    header = ids[end_tools + 1 :]
    assert header[: header.index(FIM_MIDDLE) + 1] == [
        FIM_PREFIX,
        *ENC.encode("user"),
        END_OF_PROMPT,
        *ENC.encode("bob"),
        FIM_MIDDLE,
    ]
    assert ENC.encode("ab") == header[header.index(FIM_MIDDLE) + 1 : header.index(END_ID)]


def test_special_token_text_is_plain_text() -> None:
    ids = T.render([{"role": "user", "content": "<|endoftext|><|fim_prefix|>"}])
    assert ids.count(END_ID) == 1 and ids.count(FIM_PREFIX) == 2


@pytest.mark.parametrize(
    "messages",
    [
        [],
        "hello",
        [{"role": "wizard", "content": "x"}],
        [{"role": "user"}],
        [{"role": "user", "content": 5}],
        [{"role": "user", "content": [{"type": "image_url", "image_url": {"url": "x"}}]}],
        ["not a dict"],
        [{"role": "assistant", "tool_calls": [{"id": "1"}]}],
    ],
)
def test_bad_messages(messages: Any) -> None:
    with pytest.raises(TemplateError):
        T.render(messages)


def test_tool_call_format() -> None:
    assert parse_tool_call("CALL 12") == "12"
    assert parse_tool_call("CALL") == ""
    assert parse_tool_call("12 CALL") is None
    assert json.loads(tool_call_arguments("12")) == {"arg": "12"}
    reply = {"role": "assistant", "content": None, "tool_calls": [
        {"id": "c1", "type": "function", "function": {"name": "calc", "arguments": tool_call_arguments("12")}}
    ]}  # fmt: skip
    body = T.render_message(reply)
    assert body[body.index(FIM_MIDDLE) + 1 : -1] == ENC.encode("CALL 12")


# ------------------------------------------------------------ prefix property

texts = st.text(alphabet=st.sampled_from(list("ab xyz019\n.,!?'\"<|>é")), max_size=12)
roles = st.sampled_from(["user", "tool", "system"])
follow_ups = st.lists(st.tuples(roles, texts), min_size=1, max_size=3)


def canonical_completion(text: str) -> list[int]:
    """What a sampler emitting tiktoken's own encoding would return."""
    return [*ENC.encode(text, disallowed_special=()), END_ID]


@settings(max_examples=150, deadline=None)
@given(
    first=texts,
    turns=st.lists(st.tuples(texts, follow_ups), min_size=1, max_size=4),
    with_tools=st.booleans(),
)
def test_prefix_property_for_canonical_replies(
    first: str, turns: list[tuple[str, list[tuple[str, str]]]], with_tools: bool
) -> None:
    tools = [{"type": "function", "function": {"name": "f"}}] if with_tools else None
    messages: list[dict[str, Any]] = [{"role": "user", "content": first}]
    prompt = T.render(messages, tools)
    for reply, new in turns:
        completion = canonical_completion(reply)
        messages = [*messages, {"role": "assistant", "content": reply}]
        messages += [{"role": r, "content": c} for r, c in new]
        nxt = T.render(messages, tools)
        assert nxt[: len(prompt) + len(completion)] == prompt + completion
        prompt = nxt


@settings(max_examples=50, deadline=None)
@given(arg=st.text(alphabet=st.sampled_from(list("0123456789abc")), min_size=1, max_size=5))
def test_prefix_property_for_tool_calls(arg: str) -> None:
    tools = [{"type": "function", "function": {"name": "calc"}}]
    messages: list[dict[str, Any]] = [{"role": "user", "content": "add"}]
    prompt = T.render(messages, tools)
    completion = canonical_completion(f"CALL {arg}")
    call = {
        "id": "c",
        "type": "function",
        "function": {"name": "calc", "arguments": tool_call_arguments(arg)},
    }
    messages += [
        {"role": "assistant", "content": None, "tool_calls": [call]},
        {"role": "tool", "content": "5"},
    ]
    assert T.render(messages, tools)[: len(prompt) + len(completion)] == prompt + completion


def test_prefix_property_fails_for_non_canonical_samples() -> None:
    """Documented failure: "1","2" decodes to "12", which re-encodes as one token."""
    one, two = ENC.encode("1")[0], ENC.encode("2")[0]
    messages: list[dict[str, Any]] = [{"role": "user", "content": "count"}]
    prompt = T.render(messages)
    completion = [one, two, END_ID]
    messages += [
        {"role": "assistant", "content": ENC.decode(completion[:-1])},
        {"role": "user", "content": "more"},
    ]
    nxt = T.render(messages)
    assert nxt[: len(prompt)] == prompt
    assert nxt[len(prompt) : len(prompt) + 3] != completion
    assert nxt[len(prompt) : len(prompt) + 2] == [ENC.encode("12")[0], END_ID]
