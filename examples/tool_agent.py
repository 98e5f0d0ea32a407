"""A tool-using, multi-turn agent collected in token mode: one exact row per episode.

The agent is plain `openai` code: it offers the model a `calculator` tool,
runs the calls it makes, sends the results back as `tool` messages and stops
at a final answer (at most `MAX_TURNS` calls). Nothing in it knows about
recording. `rollout.collect` hands it an `AsyncOpenAI` that already records
into its episode, and, with token mode on (the default), sends every call
after the first as token ids: the previous call's prompt and sampled ids,
then the server-rendered tokens of the new messages (the tool result). The
server never re-renders an earlier turn, so the whole episode is one exact
training row, with 0 drift.

    python -m examples.tool_agent            # collect, assemble, print the figures (one JSON line)
    python -m examples.tool_agent --off      # the same agent with token mode off, for comparison

Measured (16 tasks x 4 samples): token mode, 64 episodes (42 using the tool,
152 calls, 88 sent as tokens) give 64 rows and 0 drift; with token mode off
the same agent gives 153 rows and 89 drifts, because the server re-renders
each earlier turn.

The embedded server's tiny random policy rarely starts a reply with its
tool-call prefix (`CALL <arg>`), so this example serves a copy nudged towards
it (`tool_policy`), letting most episodes use the tool at least once. Against
a real model, point `backend` at your vLLM or SGLang server instead.
"""

from __future__ import annotations

import argparse
import json
import tempfile
from pathlib import Path
from typing import Any

from rollout.collection import collect
from rollout.demo import TASKS
from rollout.embedded import TOOL_CALL_PREFIX, Policy, get_encoding
from rollout.sample import assemble

MAX_TURNS = 4
MAX_TOKENS = 8  # per reply: the raw client sends its own sampling options
TOOLS = [
    {
        "type": "function",
        "function": {
            "name": "calculator",
            "description": "Evaluate a sum such as '2 + 3'.",
            "parameters": {
                "type": "object",
                "properties": {"arg": {"type": "string"}},
                "required": ["arg"],
            },
        },
    }
]


def calculator(expression: str) -> str:
    """The tool: adds the integers in `expression`; says so when it cannot."""
    try:
        return str(sum(int(part) for part in expression.replace("+", " ").split()))
    except ValueError:
        return f"cannot evaluate {expression!r}"


async def episode(task: dict[str, Any], model: Any) -> dict[str, Any]:
    """Ask, run tool calls until the model answers, reward an exact answer."""
    client = model.async_client  # an AsyncOpenAI that records into this episode
    messages: list[dict[str, Any]] = [
        {"role": "system", "content": "Use the calculator, then answer with the number only."},
        {"role": "user", "content": f"What is {task['a']} + {task['b']}?"},
    ]
    tool_calls = 0
    for turn in range(1, MAX_TURNS + 1):
        response = await client.chat.completions.create(
            model="tiny", messages=messages, tools=TOOLS, max_tokens=MAX_TOKENS
        )
        message = response.choices[0].message
        if not message.tool_calls:
            correct = (message.content or "").strip() == str(task["answer"])
            return {"reward": float(correct), "turns": turn, "tool_calls": tool_calls}
        messages.append(message.model_dump(exclude_none=True))
        for call in message.tool_calls:
            arg = json.loads(call.function.arguments).get("arg", "")
            messages.append({"role": "tool", "tool_call_id": call.id, "content": calculator(arg)})
            tool_calls += 1
    return {"reward": 0.0, "turns": MAX_TURNS, "tool_calls": tool_calls}


def tool_policy(path: Path, bias: float = 6.0, seed: int = 0) -> Path:
    """The embedded random policy, nudged to start replies with its tool-call prefix."""
    policy = Policy(seed=seed)
    weights = policy.get_weights()
    prefix = policy.vocab_index(get_encoding().encode_ordinary(TOOL_CALL_PREFIX)[0])
    if prefix is None:
        raise RuntimeError("the embedded vocabulary has no tool-call prefix token")
    weights["b"][prefix] += bias
    policy.set_weights(weights)
    policy.save(path)
    return path


def run(token_mode: str = "auto", limit: int = 16, samples_per_task: int = 4) -> dict[str, Any]:
    """Collect the agent on the embedded server and report what assembly made of it."""
    with tempfile.TemporaryDirectory() as tmp:
        summary = collect(
            agent=episode,
            tasks=str(TASKS),
            limit=limit,
            samples_per_task=samples_per_task,
            output={"path": None},
            progress=False,
            backend={
                "kind": "embedded",
                "token_mode": token_mode,
                "embedded": {"weights": str(tool_policy(Path(tmp) / "tool_policy.npz"))},
                "sampling": {"temperature": 1.0},
            },
        )
    episodes = summary.episodes or []
    result = assemble(episodes)
    calls = [c for e in episodes for c in e.calls]
    return {
        "token_mode": token_mode,
        "episodes": len(episodes),
        "with_tool_calls": sum(1 for e in episodes if e.metadata.get("tool_calls")),
        "calls": len(calls),
        "sent_as_tokens": sum(1 for c in calls if c.sent_as == "tokens"),
        "samples": len(result),
        "drift": result.num_drift,
        "exact_episodes": sum(1 for e in episodes if e.exact),
        "mean_reward": round(sum(e.reward or 0.0 for e in episodes) / max(1, len(episodes)), 4),
    }


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--off", action="store_true", help="token mode off: every call as messages")
    args = parser.parse_args()
    print(json.dumps(run("off" if args.off else "auto")))
