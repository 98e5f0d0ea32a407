"""LangChain's `ChatOpenAI` on recorder-wrapped clients inside LangGraph's prebuilt ReAct agent.

`create_react_agent` loops model -> tools -> model until the model stops
calling tools; `ChatOpenAI` is given the wrapped clients (`root_client`,
`root_async_client` and their `chat.completions`), so every model call goes
through the recorder. Two user turns per episode (the second resends the
first's messages), token mode on and off. What the agent saw is LangChain's
own `AIMessage` per call: content, tool calls, `finish_reason` and logprobs
(`response_metadata`), token usage (`usage_metadata`).
"""

from __future__ import annotations

from typing import Any

import openai
import pytest
from langchain_core.messages import AIMessage, HumanMessage
from langchain_core.tools import tool
from langchain_openai import ChatOpenAI
from langgraph.prebuilt import create_react_agent

from tests.agents.differential import DifferentialTier, Run, bump, recorder

pytestmark = [
    pytest.mark.agents,
    # The prebuilt ReAct agent is what this tier tests; LangGraph 1.x deprecates it for
    # langchain.agents.create_agent, but langgraph-prebuilt 1.1.3 still ships it.
    pytest.mark.filterwarnings("ignore:create_react_agent has been moved"),
]

TASKS = [("What is 3 plus 1?", "And 5 plus 1?"), ("What is 7 plus 1?", "And 9 plus 1?")]


@tool
def bump_tool(arg: str) -> str:
    """Add one to a number."""
    return bump(arg)


def seen(message: AIMessage) -> dict[str, Any]:
    """One model reply as the ReAct loop got it (tool-call ids, which are random, left out)."""
    meta = message.response_metadata
    logprobs = [
        (t["token"], t["logprob"], [(u["token"], u["logprob"]) for u in t.get("top_logprobs", [])])
        for t in (meta.get("logprobs") or {}).get("content") or []
    ]
    usage = message.usage_metadata or {}
    return {
        "content": message.content,
        "tool_calls": [(c["name"], c["args"]) for c in message.tool_calls],
        "finish_reason": meta.get("finish_reason"),
        "logprobs": logprobs,
        "usage": (usage.get("input_tokens"), usage.get("output_tokens")),
    }


async def run_mode(base_url: str, mode: str) -> Run:
    rec = recorder(mode)
    sync = rec.wrap(openai.OpenAI(base_url=base_url, api_key="unused", max_retries=0))
    async_ = rec.wrap(openai.AsyncOpenAI(base_url=base_url, api_key="unused", max_retries=0))
    model = ChatOpenAI(
        model="tiny", api_key="unused", base_url=base_url, max_retries=0,
        root_client=sync, client=sync.chat.completions,
        root_async_client=async_, async_client=async_.chat.completions,
        temperature=0.0, max_tokens=8, logprobs=True, top_logprobs=2,
    )  # fmt: skip
    agent = create_react_agent(
        model, [bump_tool],
        prompt="Use bump_tool on the number twice, then answer with the number only.",
    )  # fmt: skip
    run = Run(mode)
    for i, (first, second) in enumerate(TASKS):
        async with rec.episode(task_id=f"task{i}", sample=0) as ep:
            one = await agent.ainvoke({"messages": [HumanMessage(first)]}, {"recursion_limit": 12})
            two = await agent.ainvoke(
                {"messages": [*one["messages"], HumanMessage(second)]}, {"recursion_limit": 12}
            )
        replies = [m for m in two["messages"] if isinstance(m, AIMessage)]
        run.episodes.append(ep)
        run.seen.append([seen(m) for m in replies])
        # The agent used its tool twice and answered, in both turns.
        assert [bool(m.tool_calls) for m in replies] == [True, True, False] * 2
        assert [m.type for m in two["messages"]].count("tool") == 4
        assert str(replies[-1].content).isdigit()
    return run


class TestLangGraphReactAgent(DifferentialTier):
    """LangGraph's ReAct agent on LangChain's ChatOpenAI: each of the tier's checks (tests/agents/differential.py)."""

    run_mode = staticmethod(run_mode)
