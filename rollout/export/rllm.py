"""rLLM export: episodes as the dicts rLLM's own `Episode.to_dict()` writes.

Pinned: rllm-org/rllm @ 9beb6e0f676a46d38858991fd79ac5f8e0b16d4c (rLLM is not on
the package registries). tests/unit/test_rllm_contract.py restates, field by
field, the types and the verl transform this relies on, and checks
`Episode.from_dict(d).to_dict() == d` for what `to_rllm` writes:

- Episode (rllm/types.py:317-381): `id` "{task_id}:{rollout_idx}" (rLLM splits
  on the first ":", so ":" and "%" in our task id are percent-encoded),
  `task`, `termination_reason` (a `TerminationReason` value,
  rllm/workflows/workflow.py:18-25; never null, which from_dict rejects),
  `is_correct`, `session_id`, `trajectories`, `metrics`, `info`.
- Trajectory (types.py:241-299): `uid`, `name`, `task`, `steps`, `reward`, `info`.
- Step (types.py:100-223), built the way rLLM's own gateway converter builds
  one from a recorded call (rllm/engine/trace_converter.py:13-73):
  `chat_completions` = request messages + reply, `model_response` = content,
  `thought` = reasoning, and `model_output` (rllm/engine/rollout/
  rollout_engine.py:15-72) holding `prompt_ids` / `completion_ids` /
  `logprobs`, which is all rLLM's verl transform reads
  (rllm/trainer/verl/transform.py:289-296 drops a step without it); tool calls
  as `{name, arguments}` (rllm/tools/tool_base.py:9-15). `advantage` is null,
  not absent (a missing key loads as 0.0, a stale "precomputed" advantage).

One trajectory ("agent") per episode holds one step per (call, choice) in
call order, so rLLM's prefix merge (transform.py:316-402) rebuilds the rows
`to_verl` packs. Every string goes through `rollout.redact`: requests and
metadata by key name and value, the rest by value.
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from typing import Any

from rollout.call_record import NO_VERSION, CallRecord, ChoiceRecord
from rollout.episode import Episode, EpisodeStatus
from rollout.errors import RolloutError
from rollout.export.rows import jsonable
from rollout.redact import redact

TERMINATION_REASONS = (
    "max_prompt_length_exceeded",
    "max_response_length_exceeded",
    "env_done",
    "max_turns_exceeded",
    "timeout",
    "unknown",
    "error",
)
"""rLLM's `TerminationReason` values (rllm/workflows/workflow.py:18-25)."""

TRAJECTORY_NAME = "agent"


class TerminationReasonError(RolloutError, ValueError):
    """`metadata["termination_reason"]` is not one of rLLM's TerminationReason values."""


def termination_reason(episode: Episode) -> str:
    """rLLM TerminationReason value for an episode.

    `metadata["termination_reason"]` wins when set (it must be one of
    `TERMINATION_REASONS`). A truncated episode whose last reply stopped on
    length maps to max_response_length_exceeded, any other truncation to
    max_turns_exceeded.
    """
    explicit = episode.metadata.get("termination_reason")
    if explicit is not None:
        if explicit not in TERMINATION_REASONS:
            raise TerminationReasonError(
                f"episode {episode.id}: termination_reason {explicit!r} is not one of rLLM's "
                f"values {TERMINATION_REASONS}"
            )
        return str(explicit)
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


def episode_key(episode: Episode) -> str:
    """rLLM's `Episode.id`: "{task_id}:{sample}", with ":" and "%" in the task id encoded.

    rLLM reads the task back as `id.split(":")[0]` (types.py:332) and groups
    GRPO rollouts on it, so a raw ":" would split one task into several groups.
    """
    task = episode.task_id.replace("%", "%25").replace(":", "%3A")
    return f"{task}:{episode.sample}"


def _content(message: dict[str, Any]) -> str:
    content = message.get("content")
    if isinstance(content, str):
        return content
    if isinstance(content, list):  # content parts
        return "".join(p.get("text", "") for p in content if isinstance(p, dict))
    return ""


def _tool_calls(message: dict[str, Any]) -> list[dict[str, Any]]:
    """OpenAI tool calls as rLLM `ToolCall`s, `{name, arguments: dict}`.

    Arguments that are not a JSON object are kept as `{"raw": text}`, as
    rLLM's own converter does (trace_converter.py:13-28).
    """
    out = []
    for call in message.get("tool_calls") or []:
        function = call.get("function") or {}
        raw = function.get("arguments", "{}")
        try:
            arguments = json.loads(raw) if isinstance(raw, str) else raw
        except ValueError:
            arguments = {"raw": raw}
        if not isinstance(arguments, dict):
            arguments = {"raw": raw}
        out.append({"name": function.get("name", ""), "arguments": arguments})
    return out


def _step(
    episode: Episode, pos: int, call: CallRecord, choice: ChoiceRecord, done: bool
) -> dict[str, Any]:
    messages = redact(jsonable(call.request)).get("messages", [])
    reply = jsonable(choice.message)
    versions = choice.versions.to_array()
    known = versions[versions != NO_VERSION]
    weight_version = int(known.max()) if known.size else None
    reward = 0.0 if call.reward is None else float(call.reward)
    content = _content(reply)
    reasoning = reply.get("reasoning") or reply.get("reasoning_content") or ""
    reasoning = reasoning if isinstance(reasoning, str) else ""  # rLLM's Step.thought is a str
    model_output: dict[str, Any] = {
        "text": None,
        "content": content,
        "reasoning": reasoning,
        "tool_calls": _tool_calls(reply),
        "prompt_ids": None,  # token lists: set after redaction, which need not walk them
        "completion_ids": None,
        "multi_modal_inputs": None,
        "logprobs": None,
        "prompt_logprobs": None,
        "routing_matrices": None,
        "prompt_length": len(call.prompt_ids),
        "completion_length": len(choice.ids),
        "finish_reason": choice.finish_reason,
        "weight_version": weight_version,
        "metrics": None,
    }
    step: dict[str, Any] = {
        "prompt_ids": None,
        "response_ids": None,
        "logprobs": None,
        "routing_matrices": None,
        "chat_completions": [*messages, reply] if reply else list(messages),
        "observation": None,
        "thought": reasoning,
        "action": None,
        "model_response": content,
        "model_output": model_output,
        "info": {
            "call_id": call.id,
            "call_index": pos,
            "choice_index": choice.index,
            "token_source": choice.source.value,
            "prompt_source": call.prompt_source.value,
            "exact": call.prompt_source.exact and choice.exact,
            "has_logprobs": choice.logprobs is not None,
            "parent": call.parent,
            "usage": jsonable(call.usage),
            "latency_s": call.latency_s,
            "notes": list(call.notes),
        },
        "reward": reward,
        "done": done,
        "mc_return": reward if episode.discounted else 0.0,
        "advantage": None,
        "weight_version": weight_version,
    }
    out: dict[str, Any] = redact(step, names=False)
    prompt_ids = call.prompt_ids.tolist()
    response_ids = choice.ids.tolist()
    # rLLM reads an empty list as "no logprobs" (transform.py:321, dataclass.py:101); zeros
    # would read as p = 1. Its own converter writes [] there too (trace_converter.py:53).
    logprobs = [] if choice.logprobs is None else choice.logprobs.tolist()
    out["prompt_ids"], out["response_ids"], out["logprobs"] = prompt_ids, response_ids, logprobs
    mo = out["model_output"]
    mo["prompt_ids"], mo["completion_ids"], mo["logprobs"] = prompt_ids, response_ids, logprobs
    return out


def episode_to_rllm(episode: Episode) -> dict[str, Any]:
    """One rLLM `Episode.to_dict()`-shaped dict."""
    pairs = [(pos, call, ch) for pos, call in enumerate(episode.calls) for ch in call.choices]
    steps = [
        _step(episode, pos, call, ch, i == len(pairs) - 1)
        for i, (pos, call, ch) in enumerate(pairs)
    ]
    reward = episode.reward
    if reward is None and episode.calls and episode.calls[-1].reward is not None:
        reward = episode.calls[-1].reward
    reward = 0.0 if reward is None else float(reward)  # rLLM asserts all-or-none per group
    task = jsonable(episode.task)
    metadata = redact(jsonable(episode.metadata))
    is_correct = metadata.get("is_correct")
    trajectory = {
        "uid": episode.id,
        "name": TRAJECTORY_NAME,
        "task": task,
        "steps": [],
        "reward": reward,
        "info": {"episode_id": episode.id, "exact": episode.exact},
    }
    out: dict[str, Any] = {
        "id": episode_key(episode),
        "task": task,
        "termination_reason": termination_reason(episode),
        # rLLM's default: correct iff the total reward is strictly positive (workflow.py:202).
        "is_correct": bool(is_correct) if is_correct is not None else reward > 0,
        "session_id": None,
        "trajectories": [trajectory],
        "metrics": {
            "num_calls": len(episode.calls),
            "num_tokens": episode.num_tokens,
            "exact": float(episode.exact),
        },
        "info": {
            **metadata,
            "episode_id": episode.id,
            "task_id": episode.task_id,
            "sample": episode.sample,
            "status": episode.status.value,
            "error": episode.error,
        },
    }
    out = redact(out, names=False)
    out["trajectories"][0]["steps"] = steps  # already redacted; token lists left unwalked
    return out


def to_rllm(episodes: Episode | Iterable[Episode]) -> list[dict[str, Any]]:
    """rLLM Episode dicts (JSON-ready), one per episode, failed ones included.

    rLLM keeps failed rollouts and marks them via `termination_reason`; its
    trainer decides what to drop (compact filtering), so nothing is filtered
    here. In rLLM: `rllm.types.Episode.from_dict(d)` for each dict.
    """
    eps = [episodes] if isinstance(episodes, Episode) else episodes
    return [episode_to_rllm(ep) for ep in eps]
