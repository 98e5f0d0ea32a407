"""CAMEL's `ChatAgent` in the agent-framework differential (tests/agents/differential.py).

The same checks as the other frameworks' (tests/agents/<framework>): camel's
own `ChatAgent` runs a tool loop on `compat.OpenAICompatibleModel` over
recorder-wrapped clients against the embedded server, two user turns per
episode, token mode on and off. It lives in the CAMEL peer tier, whose venv
already holds camel. What the agent saw is the `ChatCompletion` camel's
`ModelManager` got from the model per call (`model.arun`, tapped).

CAMEL 0.2.90's memory re-sends a finished tool loop out of order on the next
user turn: the final answer comes back before the last tool-call pair
(`[.., call, result, answer, call, result, user]`). That history is not a
continuation of any one recorded reply, so token mode sends that call as
messages with a `branch` fallback, and the episode is two rows. The second
task is a single user turn, so one episode per run checks the one-row rule.
"""

from __future__ import annotations

import json
from typing import Any

import pytest
from camel.agents import ChatAgent
from camel.toolkits import FunctionTool
from openai import AsyncOpenAI, OpenAI

from compat import OpenAICompatibleModel
from compat.camel import CamelTokenCounter
from tests.agents.differential import DifferentialTier, Run, bump, recorder

pytestmark = [pytest.mark.peers, pytest.mark.usefixtures("clean_env")]

TASKS: list[tuple[str, ...]] = [("What is 3 plus 1?", "And 5 plus 1?"), ("What is 7 plus 1?",)]


def bump_tool(arg: str) -> str:
    r"""Add one to a number.

    Args:
        arg (str): The number.

    Returns:
        str: The number plus one.
    """
    return bump(arg)


def seen(completion: Any) -> dict[str, Any]:
    """One ChatCompletion as camel's agent got it (tool-call ids, which are random, left out)."""
    choice = completion.choices[0]
    message = choice.message
    logprobs = [
        (t.token, t.logprob, [(u.token, u.logprob) for u in t.top_logprobs or []])
        for t in (choice.logprobs.content if choice.logprobs else None) or []
    ]
    usage = completion.usage
    return {
        "content": message.content,
        "tool_calls": [(c.function.name, json.loads(c.function.arguments)) for c in message.tool_calls or []],
        "finish_reason": choice.finish_reason,
        "logprobs": logprobs,
        "usage": (usage.prompt_tokens, usage.completion_tokens),
    }


async def run_mode(base_url: str, mode: str) -> Run:
    rec = recorder(mode)
    run = Run(mode)
    for i, turns in enumerate(TASKS):
        model = OpenAICompatibleModel(
            "tiny", {"temperature": 0.0, "max_tokens": 8, "logprobs": True, "top_logprobs": 2},
            api_key="unused", token_counter=CamelTokenCounter(encoding="cl100k_base"),
            client=rec.wrap(OpenAI(base_url=base_url, api_key="unused", max_retries=0)),
            async_client=rec.wrap(AsyncOpenAI(base_url=base_url, api_key="unused", max_retries=0)),
        )  # fmt: skip
        completions: list[Any] = []
        arun = model.arun

        async def tap(*args: Any, _arun: Any = arun, _out: list[Any] = completions, **kwargs: Any) -> Any:
            completion = await _arun(*args, **kwargs)
            _out.append(completion)
            return completion

        model.arun = tap  # type: ignore[method-assign]
        chat = ChatAgent(
            system_message="Use bump_tool on the number twice, then answer with the number only.",
            model=model, tools=[FunctionTool(bump_tool)], max_iteration=6, retry_delay=0.0,
        )  # fmt: skip
        async with rec.episode(task_id=f"task{i}", sample=0) as ep:
            responses = [await chat.astep(turn) for turn in turns]
        run.episodes.append(ep)
        run.seen.append([seen(c) for c in completions])
        # The agent used its tool twice and answered, in both turns.
        for response in responses:
            assert [r.tool_name for r in response.info["tool_calls"]] == ["bump_tool"] * 2
            assert response.msgs[0].content.isdigit(), response.msgs[0].content
    return run


class TestCamelChatAgent(DifferentialTier):
    """CAMEL's ChatAgent: each of the tier's checks (tests/agents/differential.py)."""

    run_mode = staticmethod(run_mode)
    calls_per_mode = 9
    """A two-turn episode and a one-turn episode, each turn 2 tool calls + an answer."""

    def test_the_reordered_history_is_a_named_branch(self, on: Run) -> None:
        """The two-turn episode's second turn goes as messages, naming the branch (see above)."""
        from rollout.tokenmode import BRANCH

        episode = on.episodes[0]
        branches = [c for c in episode.calls if (c.fallback or "").startswith(BRANCH)]
        assert branches and all(c.sent_as == "messages" for c in branches), [c.fallback for c in episode.calls]
