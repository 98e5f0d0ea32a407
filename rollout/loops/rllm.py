"""rLLM's current shape for an unchanged `async def episode(task, model) -> reward`.

Checked against rllm-org/rllm @ 9beb6e0f676a46d38858991fd79ac5f8e0b16d4c, the
newest commit of its main branch in the stored snapshot (rLLM is not on the
package registries; tests/unit/test_rllm_traces.py restates what is used here):

- an agent is an `@rllm.rollout` function of `(task, config)`
  (rllm/eval/rollout_decorator.py:139-190) where `config` is an `AgentConfig`
  with `base_url`, `model`, `session_uid`, `metadata`, `sampling_params`
  (rllm/types.py:418-428); it returns an `Episode`, a `Trajectory` or None
  (`_coerce_to_episode`, types.py:458-489), never a bare reward;
- the gateway records one `TraceRecord` per model call
  (rllm-model-gateway/src/rllm_model_gateway/models.py:9-31), and
  `trace_record_to_step` (rllm/engine/trace_converter.py:31-73) turns each
  into a training `Step`; `AgentFlowEngine` matches them to the flow's
  trajectories by position and keeps the trajectory's `reward`
  (`enrich_episode_with_traces`, rllm/engine/agentflow_engine.py:102-248).

`rllm_flow(episode)` makes such a function: the episode gets a
`compat.OpenAICompatibleModel` on `config.base_url` (the gateway's session
URL) and `config.model`, and the flow returns one `Trajectory` carrying the
episode's reward (and its metadata), which enrichment keeps while the
gateway's traces fill in the steps. `to_rllm_traces` writes recorded episodes
as `TraceRecord`s, so episodes recorded anywhere (`rollout collect`, token
mode) go through rLLM's own trace-to-step conversion.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Iterable, Mapping
from typing import Any

from compat import OpenAICompatibleModel
from rollout.collection.backend import import_object
from rollout.collection.runner import _call_agent, apply_result
from rollout.episode import Episode
from rollout.errors import RewardError

RLLM_COMMIT = "9beb6e0f676a46d38858991fd79ac5f8e0b16d4c"


def _task_data(task: Any) -> Any:
    """What the episode function gets: an rLLM `Task`'s source row (`metadata`, types.py:65),
    else the task itself (a dict from a dataset)."""
    metadata = getattr(task, "metadata", None)
    if isinstance(metadata, Mapping) and hasattr(task, "instruction"):
        return dict(metadata)
    return task


def rllm_flow(
    episode: Callable[[Any, Any], Any] | str,
    *,
    name: str = "solver",
    sampling: Mapping[str, Any] | None = None,
    wrap: Callable[[Any], Any] | None = None,
    trajectory: type | None = None,
) -> Callable[[Any, Any], Awaitable[Any]]:
    """An rLLM flow: `await flow(task, config)` -> an rLLM `Trajectory` holding the episode's reward.

    Decorate it as rLLM does: ``solver = rllm.rollout(name="solver")(rllm_flow(episode))``.
    It is a plain `async def` function, because rLLM's `AgentFlowFn` awaits only what
    `inspect.iscoroutinefunction` accepts and runs anything else in a thread
    (rollout_decorator.py:72 and :82-90), where a callable object's coroutine would never run.

    Args:
        episode: the function, or its import path ``"module:name"``.
        name: the trajectory name (rLLM's default is ``"solver"``).
        sampling: the model's request config; `config.sampling_params` is rLLM's informational
            copy of what its gateway enforces anyway (types.py:426-428), so it is not sent.
        wrap: e.g. ``recorder.wrap``: applied to the client, to record the calls here too.
        trajectory: the `Trajectory` class (default: `rllm.types.Trajectory`, imported on use).
    """
    settings = dict(sampling or {})

    async def flow(task: Any, config: Any) -> Any:
        from openai import AsyncOpenAI

        fn = import_object(episode) if isinstance(episode, str) else episode
        client: Any = AsyncOpenAI(base_url=config.base_url, api_key="EMPTY", max_retries=0)
        if wrap is not None:
            client = wrap(client)
        model = OpenAICompatibleModel(config.model, dict(settings), async_client=client)
        data = _task_data(task)
        ep = Episode(task_id=str(getattr(task, "id", "") or ""), task=data)
        try:
            apply_result(ep, await _call_agent(fn, data, model))
        finally:
            await client.close()
        if ep.reward is None:
            raise RewardError("the episode returned no reward; the rLLM trajectory needs one")
        cls = trajectory
        if cls is None:
            from rllm.types import Trajectory

            cls = Trajectory
        return cls(name=name, steps=[], reward=float(ep.reward),
                   metadata={**ep.metadata, "session_uid": config.session_uid})  # fmt: skip

    flow.__name__ = flow.__qualname__ = name
    return flow


def _message(choice: Any) -> dict[str, Any]:
    message = dict(choice.message or {})
    message.setdefault("role", "assistant")
    return message


def to_rllm_traces(episodes: Episode | Iterable[Episode], *, model: str | None = None) -> list[dict[str, Any]]:
    """Each recorded call (and choice) as the dict of an rLLM gateway `TraceRecord`.

    `session_id` is the episode's `task_id:sample` (one gateway session per episode),
    `trace_id` the call's id (``:<choice>`` added when a call has several), `messages` the
    request's messages, `response_message` the reply, the ids and logprobs the recorded
    ones (`logprobs` None where the server sent none), `weight_version` the version the
    sampled tokens carry when it is one, else None; `metadata` says where the ids came from.
    """
    eps = [episodes] if isinstance(episodes, Episode) else list(episodes)
    out: list[dict[str, Any]] = []
    for ep in eps:
        for index, call in enumerate(ep.calls):
            request = call.request if isinstance(call.request, Mapping) else {}
            messages = [dict(m) for m in request.get("messages") or [] if isinstance(m, Mapping)]
            for choice in call.choices:
                versions = sorted({int(v) for v in choice.versions.to_array().tolist()})
                trace_id = call.id or f"{ep.id}-{index}"
                if len(call.choices) > 1:
                    trace_id = f"{trace_id}:{choice.index}"
                out.append({
                    "trace_id": trace_id,
                    "session_id": ep.uid,
                    "model": model if model is not None else str(request.get("model") or ""),
                    "messages": messages,
                    "prompt_token_ids": call.prompt_ids.tolist(),
                    "response_message": _message(choice),
                    "completion_token_ids": choice.ids.tolist(),
                    "logprobs": None if choice.logprobs is None else choice.logprobs.astype(float).tolist(),
                    "routing_matrices": None,
                    "finish_reason": choice.finish_reason,
                    "weight_version": versions[0] if len(versions) == 1 and versions[0] >= 0 else None,
                    "latency_ms": float(call.latency_s or 0.0) * 1000.0,
                    "token_counts": {"prompt": len(call.prompt_ids), "completion": len(choice.ids)},
                    "timestamp": float(call.started_at or 0.0),
                    "metadata": {
                        "episode_id": ep.id, "task_id": ep.task_id, "sample": ep.sample, "call": index,
                        "sent_as": call.sent_as, "exact": bool(call.prompt_source.exact and choice.exact),
                        "prompt_source": call.prompt_source.value, "source": choice.source.value,
                    },
                    "raw_request": None,
                    "raw_response": None,
                })  # fmt: skip
    return out
