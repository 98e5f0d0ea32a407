"""The OpenAI Agents SDK's own run loop on a recorder-wrapped client, token mode on and off.

`Runner.run` drives an `Agent` whose model is the SDK's
`OpenAIChatCompletionsModel` over our wrapped `AsyncOpenAI`; the agent calls a
function tool twice and answers, then a second user turn continues the same
conversation (`to_input_list()`), all in one recorded episode. What the agent
saw is the SDK's own `ModelResponse` per call (`RunResult.raw_responses`):
output text with its logprobs, function calls, usage.
"""

from __future__ import annotations

import json
from typing import Any

import openai
import pytest
from agents import (
    Agent,
    ModelSettings,
    OpenAIChatCompletionsModel,
    Runner,
    function_tool,
    set_tracing_disabled,
)

from tests.agents.differential import DifferentialTier, Run, bump, recorder

pytestmark = pytest.mark.agents

TASKS = [("What is 3 plus 1?", "And 5 plus 1?"), ("What is 7 plus 1?", "And 9 plus 1?")]


@function_tool
def bump_tool(arg: str) -> str:
    """Add one to a number.

    Args:
        arg: The number.
    """
    return bump(arg)


def seen(response: Any) -> dict[str, Any]:
    """One `ModelResponse` as the agent loop uses it (ids, which are random, left out)."""
    items = []
    for item in response.output:
        if item.type == "message":
            for part in item.content:
                logprobs = [
                    (lp.token, lp.logprob, [(t.token, t.logprob) for t in lp.top_logprobs])
                    for lp in getattr(part, "logprobs", None) or []
                ]
                items.append(("text", getattr(part, "text", None), logprobs))
        elif item.type == "function_call":
            items.append(("call", item.name, json.loads(item.arguments)))
        else:
            items.append((item.type,))
    usage = response.usage
    return {"output": items, "usage": (usage.input_tokens, usage.output_tokens, usage.requests)}


async def run_mode(base_url: str, mode: str) -> Run:
    set_tracing_disabled(True)  # the SDK would otherwise export traces to api.openai.com
    rec = recorder(mode)
    client = rec.wrap(openai.AsyncOpenAI(base_url=base_url, api_key="unused", max_retries=0))
    agent = Agent(
        name="counter",
        instructions="Use bump_tool on the number twice, then answer with the number only.",
        tools=[bump_tool],
        model=OpenAIChatCompletionsModel(model="tiny", openai_client=client),
        model_settings=ModelSettings(temperature=0.0, max_tokens=8, top_logprobs=2),
    )
    run = Run(mode)
    for i, (first, second) in enumerate(TASKS):
        async with rec.episode(task_id=f"task{i}", sample=0) as ep:
            one = await Runner.run(agent, first, max_turns=6)
            two = await Runner.run(
                agent, [*one.to_input_list(), {"role": "user", "content": second}], max_turns=6
            )
        run.episodes.append(ep)
        run.seen.append([seen(r) for r in (*one.raw_responses, *two.raw_responses)])
        # The agent used its tool and answered, in both turns.
        for result in (one, two):
            kinds = [item.type for item in result.new_items]
            assert kinds.count("tool_call_output_item") == 2, kinds
            assert isinstance(result.final_output, str) and result.final_output.isdigit()
    return run


class TestAgentsSDK(DifferentialTier):
    """The OpenAI Agents SDK: each of the tier's checks (tests/agents/differential.py)."""

    run_mode = staticmethod(run_mode)
