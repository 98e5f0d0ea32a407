"""Token mode accepts what messages mode accepts, sends what the agent asked, and replies alike.

Issue 18 §1-§2. Most tests are differential: the same episode with token
mode on and off, through the real openai SDK against the embedded server,
and the agent must see the same thing where the prompt ids match. Servers
that misbehave (malformed replies, `abort`) are small aiohttp proxies in
front of the embedded server.
"""

from __future__ import annotations

import asyncio
import copy
import json
import math
import threading
from collections.abc import Awaitable, Callable, Iterator
from typing import Any

import numpy as np
import openai
import pytest
from aiohttp import web

from rollout import Episode, Recorder
from rollout.embedded import EmbeddedServer
from rollout.tokenmode import EDITED_HISTORY, TOOLS_CHANGED

SYSTEM = {"role": "system", "content": "Answer with the number only."}
TOOLS = [{"type": "function", "function": {"name": "add", "description": "a + b",
                                           "parameters": {"type": "object", "properties": {}}}}]  # fmt: skip


def user(text: str) -> dict[str, Any]:
    return {"role": "user", "content": text}


def recording(url: str, **options: Any) -> tuple[Recorder, openai.OpenAI, openai.AsyncOpenAI]:
    recorder = Recorder(request_token_ids=True, request_logprobs=True, **options)
    sync = recorder.wrap(openai.OpenAI(base_url=url, api_key="unused", max_retries=0))
    async_ = recorder.wrap(openai.AsyncOpenAI(base_url=url, api_key="unused", max_retries=0))
    return recorder, sync, async_


def as_message(reply: Any) -> dict[str, Any]:
    return reply.choices[0].message.model_dump(exclude_none=True)


def episode(
    url: str, mode: str, turns: int = 3, *, is_async: bool = False, **kw: Any
) -> tuple[Episode, list[Any]]:
    """`turns` calls, each answering the last reply with "Again."; (episode, replies)."""
    recorder, client, aclient = recording(url, token_mode=mode)

    def args(k: int) -> dict[str, Any]:
        return {"model": "tiny", "seed": k, **({"max_tokens": 4} if "max_tokens" not in kw else {}), **kw}

    if not is_async:
        with recorder.episode("t") as ep:
            messages: list[Any] = [SYSTEM, user("What is 2 + 3?")]
            replies = []
            for k in range(turns):
                replies.append(client.chat.completions.create(messages=messages, **args(k)))
                messages = [*messages, as_message(replies[-1]), user("Again.")]
        recorder.close()
        return ep, replies

    async def run() -> tuple[Episode, list[Any]]:
        async with recorder.episode("t") as ep:
            messages: list[Any] = [SYSTEM, user("What is 2 + 3?")]
            replies = []
            for k in range(turns):
                replies.append(await aclient.chat.completions.create(messages=messages, **args(k)))
                messages = [*messages, as_message(replies[-1]), user("Again.")]
        await recorder.aclose()
        return ep, replies

    return asyncio.run(run())


def seen(reply: Any, *, logprobs: bool = True) -> list[Any]:
    """What the agent sees of a reply: per choice content, tool calls, finish reason, logprobs."""
    out = []
    for c in reply.choices:
        lp = c.logprobs.model_dump() if logprobs and c.logprobs is not None else None
        calls = [(t.function.name, t.function.arguments) for t in c.message.tool_calls or []]
        out.append((type(reply).__name__, c.message.content, calls, c.finish_reason, lp))
    return [out, reply.usage.model_dump() if reply.usage else None]


def assert_same_where_prompts_match(
    on: tuple[Episode, list[Any]], off: tuple[Episode, list[Any]], *, logprobs: bool = True
) -> int:
    """The agent saw the same replies in both modes wherever the server saw the same prompt ids;
    returns how many calls that covered (the first call always)."""
    matched = 0
    for a, b, ra, rb in zip(on[0].calls, off[0].calls, on[1], off[1], strict=True):
        if a.prompt_ids.tolist() == b.prompt_ids.tolist():
            assert seen(ra, logprobs=logprobs) == seen(rb, logprobs=logprobs)
            assert [c.ids.tolist() for c in a.choices] == [c.ids.tolist() for c in b.choices]
            matched += 1
    assert matched >= 1
    return matched


# --- §1 what the agent sends ---------------------------------------------------------------


@pytest.mark.parametrize("is_async", [False, True])
def test_sdk_sentinels_are_absent_parameters_in_both_modes(server: EmbeddedServer, is_async: bool) -> None:
    """Wrappers (the OpenAI Agents SDK) pass NOT_GIVEN / omit for every unset parameter."""
    sentinels = {"temperature": openai.NOT_GIVEN, "max_tokens": openai.NOT_GIVEN, "top_p": openai.omit,
                 "tools": openai.NOT_GIVEN, "tool_choice": openai.omit, "stop": openai.NOT_GIVEN,
                 "response_format": openai.NOT_GIVEN, "stream_options": openai.omit,
                 "reasoning_effort": openai.NOT_GIVEN, "logprobs": openai.NOT_GIVEN}  # fmt: skip
    runs = {m: episode(server.base_url, m, is_async=is_async, max_completion_tokens=4, **sentinels)
            for m in ("off", "auto")}  # fmt: skip
    on, off = runs["auto"][0], runs["off"][0]
    assert [c.sent_as for c in on.calls] == ["messages", "tokens", "tokens"], [c.fallback for c in on.calls]
    assert_same_where_prompts_match(runs["auto"], runs["off"], logprobs=False)
    for call in (*on.calls, *off.calls):
        assert not any(type(v).__name__ in ("NotGiven", "Omit") for v in call.request.values())


@pytest.mark.parametrize("mode", ["off", "auto"])
def test_a_record_is_a_snapshot_of_the_call_in_both_modes(server: EmbeddedServer, mode: str) -> None:
    """Later in-place edits by the agent (nested ones too) never rewrite an earlier record."""
    recorder, client, _ = recording(server.base_url, token_mode=mode)
    tools = copy.deepcopy(TOOLS)
    question = {"role": "user", "content": [{"type": "text", "text": "What is 2 + 3?"}]}
    messages: list[Any] = [SYSTEM, question]
    with recorder.episode("t") as ep:
        first = client.chat.completions.create(model="tiny", messages=messages, tools=tools, max_tokens=3, seed=1)
        before = json.dumps(ep.calls[0].request, sort_keys=True)
        messages += [as_message(first), user("Again.")]
        client.chat.completions.create(model="tiny", messages=messages, tools=tools, max_tokens=3, seed=2)
        second = json.dumps(ep.calls[1].request, sort_keys=True)
        # The agent edits its own objects in place: a content part, a tool's schema, the tools list.
        question["content"][0]["text"] = "What is 9 + 9?"
        tools[0]["function"]["parameters"]["properties"]["a"] = {"type": "number"}
        tools.append({"type": "function", "function": {"name": "mul", "parameters": {"type": "object"}}})
    assert json.dumps(ep.calls[0].request, sort_keys=True) == before
    assert json.dumps(ep.calls[1].request, sort_keys=True) == second
    assert ep.calls[0].request["messages"][1]["content"][0]["text"] == "What is 2 + 3?"
    assert [t["function"]["name"] for t in ep.calls[0].request["tools"]] == ["add"]
    assert "a" not in ep.calls[0].request["tools"][0]["function"]["parameters"]["properties"]


def test_a_tool_appended_to_the_same_list_is_a_changed_tools_list(server: EmbeddedServer) -> None:
    """The stitched prompt must list every tool the agent sends: an in-place append is a change."""
    recorder, client, _ = recording(server.base_url)
    tools = copy.deepcopy(TOOLS)
    messages: list[Any] = [SYSTEM, user("What is 2 + 3?")]
    with recorder.episode("t") as ep:
        first = client.chat.completions.create(model="tiny", messages=messages, tools=tools, max_tokens=3, seed=1)
        messages += [as_message(first), user("Again.")]
        tools.append({"type": "function", "function": {"name": "mul", "parameters": {"type": "object"}}})
        second = client.chat.completions.create(model="tiny", messages=messages, tools=tools, max_tokens=3, seed=2)
        tools[1]["function"]["description"] = "a * b"  # a nested edit is a change too
        messages += [as_message(second), user("Again.")]
        client.chat.completions.create(model="tiny", messages=messages, tools=tools, max_tokens=3, seed=3)
        messages += [as_message(second), user("Again.")]
    assert [c.parent for c in ep.calls] == [None, 0, 1]
    assert [c.fallback for c in ep.calls[1:]] == [TOOLS_CHANGED, TOOLS_CHANGED]
    assert [c.sent_as for c in ep.calls] == ["messages"] * 3
