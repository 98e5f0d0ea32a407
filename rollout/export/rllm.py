"""rLLM export: episodes as plain dicts with rLLM's Episode / Trajectory / Step fields.

Field names checked against rllm-org/rllm: `rllm/types.py` (commit 02f0663:
Episode id/task/termination_reason/is_correct/trajectories/metrics/metadata;
Trajectory uid/name/task/steps/reward/signals/metadata; Step
id/input/output/action/reward/done/metadata) and `rllm/agents/agent.py`
(commit 1da0085: Step prompt_ids/response_ids/logprobs/chat_completions/
model_response/weight_version/advantage/mc_return); termination reasons from
`rllm/workflows/workflow.py` (TerminationReason values).

Every string in the output goes through the one redactor (`rollout.redact`):
requests and metadata by key name and value, everything else by value.

Each episode becomes one rLLM Episode with one trajectory (name "agent")
holding one step per (call, choice), in call order; rLLM's verl transform
re-merges steps whose prompt ids extend the previous row, so branches (n > 1)
simply become separate rows there. Dicts (not rLLM objects) keep rLLM an
optional dependency. `rllm.types.Episode.model_validate(d)` accepts them
(pydantic ignores the token fields its lightweight Step lacks); the training
dataclasses in `rllm/agents/agent.py` call metadata `info` and take a Step
without id/input/output, so building those needs a small adapter.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from rollout.episode import Episode, EpisodeStatus
from rollout.export.rows import jsonable
from rollout.record import NO_VERSION, CallRecord, Choice
from rollout.redact import redact

EPISODE_FIELDS = (
    "id",
    "task",
    "termination_reason",
    "is_correct",
    "trajectories",
    "metrics",
    "metadata",
)
TRAJECTORY_FIELDS = ("uid", "name", "task", "steps", "reward", "signals", "metadata")
STEP_FIELDS = (
    "id",
    "input",
    "output",
    "action",
    "reward",
    "done",
    "metadata",
    "prompt_ids",
    "response_ids",
    "logprobs",
    "chat_completions",
    "model_response",
    "weight_version",
    "advantage",
    "mc_return",
)


def termination_reason(episode: Episode) -> str:
    """rLLM TerminationReason value for an episode.

    `metadata["termination_reason"]` wins when set. A truncated episode whose
    last reply stopped on length maps to max_response_length_exceeded, any
    other truncation to max_turns_exceeded.
    """
    explicit = episode.metadata.get("termination_reason")
    if isinstance(explicit, str):
        return explicit
    if episode.status is EpisodeStatus.COMPLETED:
        return "env_done"
    if episode.status is EpisodeStatus.TIMEOUT:
        return "timeout"
    if episode.status is EpisodeStatus.ERROR:
        return "error"
    last = episode.calls[-1].choices if episode.calls else []
    if any(c.finish_reason == "length" for c in last):
        return "max_response_length_exceeded"
    return "max_turns_exceeded"


def _content(message: dict[str, Any]) -> str:
    content = message.get("content")
    if isinstance(content, str):
        return content
    if isinstance(content, list):  # content parts
        return "".join(p.get("text", "") for p in content if isinstance(p, dict))
    return ""


def _step(
    episode: Episode, pos: int, call: CallRecord, choice: Choice, done: bool
) -> dict[str, Any]:
    messages = redact(jsonable(call.request, "request")).get("messages", [])
    reply = jsonable(choice.message, "message")
    versions = choice.versions.to_array()
    known = versions[versions != NO_VERSION]
    reward = 0.0 if call.reward is None else float(call.reward)
    step = {
        "id": f"{episode.id}:{pos}:{choice.index}",
        "input": messages,
        "output": reply,
        "action": reply.get("tool_calls") or _content(reply),
        "reward": reward,
        "done": done,
        "metadata": {
            "call_id": call.id,
            "call_index": pos,
            "choice_index": choice.index,
            "finish_reason": choice.finish_reason,
            "token_source": choice.source.value,
            "prompt_source": call.prompt_source.value,
            "exact": call.prompt_source.exact and choice.exact,
            "has_logprobs": choice.logprobs is not None,
            "parent": call.parent,
            "usage": jsonable(call.usage, "usage"),
            "latency_s": call.latency_s,
            "notes": list(call.notes),
            "sent_as": call.sent_as,
            "fallback": call.fallback,
        },
        "prompt_ids": None,  # token lists: set after redaction, which need not walk them
        "response_ids": None,
        "logprobs": None,
        "chat_completions": [*messages, reply] if reply else list(messages),
        "model_response": _content(reply),
        "weight_version": int(known.max()) if known.size else None,
        "advantage": None,
        "mc_return": reward if episode.discounted else 0.0,
    }
    out: dict[str, Any] = redact(step, names=False)
    out["prompt_ids"] = call.prompt_ids.tolist()
    out["response_ids"] = choice.ids.tolist()
    # rLLM treats an empty list as "no logprobs"; zeros would be read as p=1.
    out["logprobs"] = [] if choice.logprobs is None else choice.logprobs.tolist()
    return out


def episode_to_rllm(episode: Episode) -> dict[str, Any]:
    pairs = [(pos, call, ch) for pos, call in enumerate(episode.calls) for ch in call.choices]
    steps = [
        _step(episode, pos, call, ch, i == len(pairs) - 1)
        for i, (pos, call, ch) in enumerate(pairs)
    ]
    reward = episode.reward
    if reward is None and episode.calls and episode.calls[-1].reward is not None:
        reward = episode.calls[-1].reward
    task = jsonable(episode.task, "task")
    metadata = redact(jsonable(episode.metadata, "metadata"))
    is_correct = metadata.get("is_correct")
    trajectory = {
        "uid": episode.id,
        "name": "agent",
        "task": task,
        "steps": [],
        "reward": reward,
        "signals": {},
        "metadata": {"episode_id": episode.id, "exact": episode.exact},
    }
    out = {
        "id": episode.uid,
        "task": task,
        "termination_reason": termination_reason(episode),
        # rLLM's default: correct iff the total reward is strictly positive.
        "is_correct": bool(is_correct) if is_correct is not None else (reward or 0.0) > 0,
        "trajectories": [trajectory],
        "metrics": {
            "num_calls": len(episode.calls),
            "num_tokens": episode.num_tokens,
            "exact": float(episode.exact),
        },
        "metadata": {
            **metadata,
            "episode_id": episode.id,
            "task_id": episode.task_id,
            "sample": episode.sample,
            "status": episode.status.value,
            "error": episode.error,
        },
    }
    out = redact(out, names=False)
    out["trajectories"][0]["steps"] = steps  # already redacted, token lists unwalked
    return out


def to_rllm(episodes: Episode | Iterable[Episode]) -> list[dict[str, Any]]:
    """rLLM Episode dicts (JSON-ready), one per episode, failed ones included.

    rLLM keeps failed rollouts and marks them via `termination_reason`; its
    trainer decides what to drop, so nothing is filtered here.
    """
    eps = [episodes] if isinstance(episodes, Episode) else episodes
    return [episode_to_rllm(ep) for ep in eps]
