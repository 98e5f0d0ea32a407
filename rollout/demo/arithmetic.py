"""A multi-turn arithmetic agent: answer, get feedback, try again (at most 3 turns).

The episode function is what `rollout collect` runs for every task:
`model` is a `compat.OpenAICompatibleModel` whose client the recorder has
already wrapped and scoped to this episode, so every call is recorded with
its exact token ids. The reward is an exact match of the final answer.

Bring your own agent the same way. Any code that calls `model.run` /
`model.arun` works unchanged. Plain openai code can use `model.async_client`
(or `model.client`): an `AsyncOpenAI` that already records into this episode.
A CAMEL agent takes the same clients:
`ChatAgent(model=camel.models.OpenAICompatibleModel(name, client=model.client,
async_client=model.async_client))` (see examples/camel_agent.py).
"""

from __future__ import annotations

from typing import Any

MAX_TURNS = 3
SYSTEM = "Answer with the number only."


def question(task: dict[str, Any]) -> str:
    return f"What is {task['a']} + {task['b']}?"


def check(reply: str | None, task: dict[str, Any]) -> bool:
    return (reply or "").strip() == str(task["answer"])


async def episode(task: dict[str, Any], model: Any) -> dict[str, Any]:
    messages: list[dict[str, Any]] = [
        {"role": "system", "content": SYSTEM},
        {"role": "user", "content": question(task)},
    ]
    for turn in range(1, MAX_TURNS + 1):
        response = await model.arun(messages)
        reply = response.choices[0].message.content
        if check(reply, task):
            return {"reward": 1.0, "turns": turn}
        messages += [
            {"role": "assistant", "content": reply or ""},
            {"role": "user", "content": f"Wrong. {question(task)}"},
        ]
    return {"reward": 0.0, "turns": MAX_TURNS}


def sync_episode(task: dict[str, Any], model: Any) -> float:
    """The same agent written synchronously: `collect` runs it in a thread."""
    messages = [{"role": "system", "content": SYSTEM}, {"role": "user", "content": question(task)}]
    reply = model.run(messages).choices[0].message.content
    return 1.0 if check(reply, task) else 0.0
