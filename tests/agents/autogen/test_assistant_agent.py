"""AutoGen's `AssistantAgent` on autogen-ext's `OpenAIChatCompletionClient`, recorded.

The model client is configured as any AutoGen user would; its own
`AsyncOpenAI` (built from that configuration, `_openai_client.py:1484` in
autogen-ext 0.7.5, kept as `_client`, line 443, which has no public setter)
is then swapped for the recorder's wrap of it, so every call the agent makes
is recorded. The agent runs a tool loop (`max_tool_iterations`), two user turns
per episode on the same agent (its model context carries the first turn),
token mode on and off. What the agent saw is AutoGen's own `CreateResult` per
call: content or function calls, finish reason, usage and logprobs.
"""

from __future__ import annotations

import json
from typing import Any

import pytest
from autogen_agentchat.agents import AssistantAgent
from autogen_agentchat.messages import TextMessage, ToolCallExecutionEvent
from autogen_ext.models.openai import OpenAIChatCompletionClient

from tests.agents.differential import DifferentialTier, Run, bump, recorder

pytestmark = pytest.mark.agents

TASKS = [("What is 3 plus 1?", "And 5 plus 1?"), ("What is 7 plus 1?", "And 9 plus 1?")]
MODEL_INFO = {
    "vision": False, "function_calling": True, "json_output": False,
    "family": "unknown", "structured_output": False,
}  # fmt: skip


def bump_tool(arg: str) -> str:
    """Add one to a number."""
    return bump(arg)


def seen(result: Any) -> dict[str, Any]:
    """One `CreateResult` as the agent got it (function-call ids, which are random, left out)."""
    content = result.content
    if isinstance(content, list):
        content = [(c.name, json.loads(c.arguments)) for c in content]
    logprobs = [
        (t.logprob, t.token, [(u.logprob, u.bytes) for u in t.top_logprobs or []])
        for t in result.logprobs or []
    ]
    usage = (result.usage.prompt_tokens, result.usage.completion_tokens)
    return {"content": content, "finish_reason": result.finish_reason, "usage": usage, "logprobs": logprobs}


async def run_mode(base_url: str, mode: str) -> Run:
    rec = recorder(mode)
    run = Run(mode)
    for i, (first, second) in enumerate(TASKS):
        client = OpenAIChatCompletionClient(
            model="tiny", base_url=base_url, api_key="unused", max_retries=0, model_info=MODEL_INFO,
            temperature=0.0, max_tokens=8, logprobs=True, top_logprobs=2,
        )  # fmt: skip
        client._client = rec.wrap(client._client)
        results: list[Any] = []
        create = client.create

        async def tap(*args: Any, _create: Any = create, _out: list[Any] = results, **kwargs: Any) -> Any:
            result = await _create(*args, **kwargs)
            _out.append(result)
            return result

        client.create = tap  # type: ignore[method-assign]
        agent = AssistantAgent(
            "counter", model_client=client, tools=[bump_tool], max_tool_iterations=4,
            system_message="Use bump_tool on the number twice, then answer with the number only.",
        )  # fmt: skip
        async with rec.episode(task_id=f"task{i}", sample=0) as ep:
            outcomes = [await agent.run(task=first), await agent.run(task=second)]
        run.episodes.append(ep)
        run.seen.append([seen(r) for r in results])
        # The agent used its tool twice and answered, in both turns.
        for outcome in outcomes:
            executions = [m for m in outcome.messages if isinstance(m, ToolCallExecutionEvent)]
            assert len(executions) == 2, [type(m).__name__ for m in outcome.messages]
            last = outcome.messages[-1]
            assert isinstance(last, TextMessage) and last.content.isdigit(), last
        await client.close()
    return run


class TestAutoGenAssistantAgent(DifferentialTier):
    """AutoGen's AssistantAgent: each of the tier's checks (tests/agents/differential.py)."""

    run_mode = staticmethod(run_mode)
