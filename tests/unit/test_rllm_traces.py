"""rLLM's current shape, restated, and `rollout.loops.rllm` held to it.

Pinned to rllm-org/rllm @ 9beb6e0f676a46d38858991fd79ac5f8e0b16d4c, the newest commit
of rLLM's main branch in the stored snapshot (2026-08-15; its `rllm.sdk` subsystem had
been removed before it, e099feb8, PR #562, 2026-05-06). rLLM is not on the package
registries, so what is used is restated here from the cited lines (the types shared
with the episode export come from tests/unit/test_rllm_contract.py, same commit):

- `TraceRecord` (rllm-model-gateway/src/rllm_model_gateway/models.py:9-31);
- `AgentConfig` (rllm/types.py:418-428) and `_coerce_to_episode` (types.py:458-489),
  what `AgentFlowFn.arun` does with a `@rollout` function's result
  (rllm/eval/rollout_decorator.py:82-90);
- `trace_record_to_step` and `_parse_openai_tool_calls` (rllm/engine/trace_converter.py:13-73);
- `enrich_episode_with_traces` (rllm/engine/agentflow_engine.py:102-248), the positional
  match of traces to the flow's trajectories.

The chain checked end to end: the unchanged arithmetic episode runs as an rLLM flow on the
embedded server, its calls (recorded here, as the gateway records them) go out as
`TraceRecord`s, rLLM's conversion and enrichment make the steps, and rLLM's verl
transform (restated in test_rllm_contract) builds exactly the rows `to_verl` packs.
"""

from __future__ import annotations

import asyncio
import inspect
import json
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pytest
from pydantic import BaseModel, Field

from examples import arithmetic
from rollout import Recorder
from rollout.call_record import CallRecord, ChoiceRecord, TokenSource
from rollout.embedded import EmbeddedServer
from rollout.episode import Episode as OurEpisode
from rollout.errors import RewardError
from rollout.export import to_verl
from rollout.loops.rllm import RLLM_COMMIT, rllm_flow, to_rllm_traces
from tests.unit.test_rllm_contract import RLLM_COMMIT as EXPORT_PIN
from tests.unit.test_rllm_contract import (
    Episode,
    ModelOutput,
    Step,
    ToolCall,
    Trajectory,
    batch_rows,
    transform_rows,
)

# --------------------------------------------------------------------------------------------
# The restated types and functions
# --------------------------------------------------------------------------------------------


class TraceRecord(BaseModel):
    """models.py:9-31: a BaseModel with these fields and defaults (extra keys ignored)."""

    trace_id: str
    session_id: str
    model: str = ""
    messages: list[dict[str, Any]] = Field(default_factory=list)
    prompt_token_ids: list[int] = Field(default_factory=list)
    response_message: dict[str, Any] = Field(default_factory=dict)
    completion_token_ids: list[int] = Field(default_factory=list)
    logprobs: list[float] | None = None
    routing_matrices: list[str] | None = None
    finish_reason: str | None = None
    weight_version: int | None = None
    latency_ms: float = 0.0
    token_counts: dict[str, int] = Field(default_factory=dict)
    timestamp: float = 0.0
    metadata: dict[str, Any] = Field(default_factory=dict)
    raw_request: dict[str, Any] | None = None
    raw_response: dict[str, Any] | None = None


@dataclass
class AgentConfig:
    """types.py:418-428."""

    base_url: str
    model: str
    session_uid: str
    metadata: dict = field(default_factory=dict)
    is_validation: bool = False
    sampling_params: dict = field(default_factory=dict)


@dataclass
class Task:
    """types.py:37-73, the fields a flow reads (id, instruction, metadata = the source row)."""

    id: str
    instruction: str | list[dict]
    metadata: dict[str, Any] = field(default_factory=dict)


def coerce_to_episode(result: Any, task: Any, traj_name: str) -> Episode:
    """types.py:458-489."""
    task_metadata = getattr(task, "metadata", task)
    if isinstance(result, Episode):
        if result.task is None:
            result.task = task_metadata
        return result
    if isinstance(result, Trajectory):
        if result.name == "default_traj_name":  # _DEFAULT_TRAJ_NAME, types.py:91
            result.name = traj_name
        return Episode(task=task_metadata, trajectories=[result])
    if result is None:
        return Episode(task=task_metadata, trajectories=[Trajectory(name=traj_name, steps=[])])
    raise TypeError(f"AgentFlow returned unsupported type {type(result).__name__}; expected Episode, Trajectory, or None")


def parse_openai_tool_calls(raw: list[dict[str, Any]]) -> list[ToolCall]:
    """trace_converter.py:13-28: JSON arguments parsed, unparseable ones as {"raw": ...}."""
    out = []
    for tc in raw:
        func = tc.get("function", {})
        args = func.get("arguments", "{}")
        if isinstance(args, str):
            try:
                args = json.loads(args)
            except ValueError:
                args = {"raw": args}
        out.append(ToolCall(name=func.get("name", ""), arguments=args))
    return out


def trace_record_to_step(trace: TraceRecord) -> Step:
    """trace_converter.py:31-73."""
    content = trace.response_message.get("content", "") or ""
    reasoning = trace.response_message.get("reasoning") or trace.response_message.get("reasoning_content") or ""
    raw_calls = trace.response_message.get("tool_calls")
    model_output = ModelOutput(
        content=content, reasoning=reasoning,
        tool_calls=parse_openai_tool_calls(raw_calls) if raw_calls else None,
        prompt_ids=trace.prompt_token_ids, completion_ids=trace.completion_token_ids,
        logprobs=trace.logprobs or [], routing_matrices=trace.routing_matrices,
        prompt_length=len(trace.prompt_token_ids), completion_length=len(trace.completion_token_ids),
        finish_reason=trace.finish_reason, weight_version=trace.weight_version,
    )  # fmt: skip
    return Step(
        id=trace.trace_id, chat_completions=[*trace.messages, trace.response_message],
        model_output=model_output, model_response=content, output=content, thought=reasoning,
        metadata=trace.metadata, weight_version=trace.weight_version,
    )  # fmt: skip


class EnrichMismatchError(Exception):
    """agentflow_engine.py:54-60."""


def enrich_episode_with_traces(episode: Episode, traces: list[TraceRecord], uid: str, task: Any) -> Episode:
    """agentflow_engine.py:102-248, strict mode (training): steps from traces by position,
    the agent's rewards kept; empty token ids or too few traces raise."""
    if not traces:
        return episode
    steps = [trace_record_to_step(t) for t in traces]
    n_agent = sum(len(t.steps) for t in episode.trajectories)
    populates = any(t.steps for t in episode.trajectories)
    empty = sum(1 for s in steps if not s.model_output.prompt_ids or not s.model_output.completion_ids)
    if (populates and len(steps) < n_agent) or empty:
        raise EnrichMismatchError(f"[{uid}] enrich mismatch")
    out, i = [], 0
    for traj in episode.trajectories:
        if traj.steps:
            mine = []
            for agent_step in traj.steps:
                step = steps[i]
                step.action, step.reward, step.done = agent_step.action, agent_step.reward, agent_step.done
                mine.append(step)
                i += 1
        else:
            mine, i = steps[i:], len(steps)
        out.append(Trajectory(uid=traj.uid, name=traj.name, task=traj.task or task, steps=mine,
                              reward=traj.reward, metadata=traj.metadata))  # fmt: skip
    return Episode(id=uid, task=task, is_correct=episode.is_correct, trajectories=out,
                   metadata=episode.metadata, termination_reason=episode.termination_reason)  # fmt: skip


# --------------------------------------------------------------------------------------------
# The tests
# --------------------------------------------------------------------------------------------


def test_one_pin_for_both_rllm_restatements() -> None:
    assert RLLM_COMMIT == EXPORT_PIN == "9beb6e0f676a46d38858991fd79ac5f8e0b16d4c"


def test_restated_conversion_reads_a_gateway_record_as_rllm_does() -> None:
    # A record as the gateway writes it for a tool call: arguments parsed, reasoning kept.
    trace = TraceRecord(
        trace_id="t1", session_id="s", messages=[{"role": "user", "content": "2+3?"}],
        prompt_token_ids=[1, 2], completion_token_ids=[7, 8], logprobs=[-0.5, -0.25],
        response_message={"role": "assistant", "content": None, "reasoning_content": "add",
                          "tool_calls": [{"id": "c", "type": "function",
                                          "function": {"name": "add", "arguments": '{"a": 2}'}}]},
        finish_reason="tool_calls", weight_version=3,
    )  # fmt: skip
    step = trace_record_to_step(trace)
    assert step.prompt_ids == [1, 2] and step.response_ids == [7, 8] and step.logprobs == [-0.5, -0.25]
    assert step.thought == "add" and step.model_response == "" and step.weight_version == 3
    assert [(c.name, c.arguments) for c in step.model_output.tool_calls] == [("add", {"a": 2})]
    with pytest.raises(EnrichMismatchError):  # no ids: the training path refuses the trace
        enrich_episode_with_traces(coerce_to_episode(None, {}, "solver"), [TraceRecord(trace_id="x", session_id="s")], "u", {})


def _choice(ids: list[int], logprobs: list[float] | None, message: dict[str, Any], version: int = 2) -> ChoiceRecord:
    return ChoiceRecord(ids=ids, logprobs=logprobs, versions=[version] * len(ids), source=TokenSource.VLLM,
                  finish_reason="stop", message=message)  # fmt: skip


def test_to_rllm_traces_are_gateway_records_with_the_recorded_tokens() -> None:
    call = CallRecord(
        id="chatcmpl-1", prompt_ids=[1, 2, 3], prompt_source=TokenSource.VLLM,
        choices=[_choice([9, 10], [-0.5, -0.25], {"role": "assistant", "content": "12"})],
        request={"model": "tiny", "messages": [{"role": "user", "content": "q"}]},
    )  # fmt: skip
    no_lp = CallRecord(id="chatcmpl-2", prompt_ids=[1, 2, 3, 9, 10, 4], prompt_source=TokenSource.TOKEN_IN,
                       choices=[_choice([11], None, {"role": "assistant", "content": "x"})], sent_as="tokens")  # fmt: skip
    ep = OurEpisode(task_id="t", sample=1, calls=[call, no_lp], reward=1.0)
    records = [TraceRecord.model_validate(d) for d in to_rllm_traces(ep)]
    assert all(set(d) <= set(TraceRecord.model_fields) for d in to_rllm_traces(ep))  # only rLLM's fields
    first, second = records
    assert first.session_id == second.session_id == "t:1"
    assert (first.trace_id, first.model, first.prompt_token_ids, first.completion_token_ids) == ("chatcmpl-1", "tiny", [1, 2, 3], [9, 10])
    assert first.logprobs == [-0.5, -0.25] and first.weight_version == 2 and first.finish_reason == "stop"
    assert first.messages == [{"role": "user", "content": "q"}] and first.response_message["content"] == "12"
    assert second.logprobs is None and second.metadata["sent_as"] == "tokens" and second.metadata["exact"]
    steps = [trace_record_to_step(r) for r in records]
    assert steps[1].logprobs == [] and steps[1].response_ids == [11]  # rLLM's own reading of "none"


async def numbers(task: dict, model: Any) -> float:
    """Two turns on the embedded server; reward 1 if the second reply is a number."""
    messages = [{"role": "user", "content": f"Say a number for {task['id']}."}]
    reply = (await model.arun(messages)).choices[0].message.content or ""
    messages += [{"role": "assistant", "content": reply}, {"role": "user", "content": "Again."}]
    last = (await model.arun(messages)).choices[0].message.content or ""
    return float(last.strip().isdigit())


@pytest.fixture(scope="module")
def server() -> Any:
    with EmbeddedServer() as srv:
        yield srv


def test_an_episode_function_runs_as_an_rllm_flow_and_its_traces_become_verls_rows(server: EmbeddedServer) -> None:
    recorder = Recorder(request_token_ids=True, request_logprobs=True)  # here: the gateway's recording
    flow = rllm_flow(arithmetic.episode, sampling={"max_tokens": 2}, wrap=recorder.wrap, trajectory=Trajectory)
    tasks = [Task(id=f"add-{a}-{b}", instruction="", metadata={"id": f"add-{a}-{b}", "a": a, "b": b, "answer": a + b})
             for a, b in ((1, 2), (30, 40), (5, 5))]  # fmt: skip
    episodes, ours = [], []
    for k, task in enumerate(tasks):
        config = AgentConfig(base_url=server.base_url, model="tiny", session_uid=f"sess-{k}")
        assert inspect.iscoroutinefunction(flow)  # AgentFlowFn awaits only these (rollout_decorator.py:72, :82-84)
        with recorder.episode(task_id=task.id, sample=0) as ep:
            result = asyncio.run(flow(task, config))  # what AgentFlowFn.arun awaits
        assert isinstance(result, Trajectory) and result.reward in (0.0, 1.0)
        assert result.metadata["session_uid"] == f"sess-{k}" and "turns" in result.metadata
        flow_episode = coerce_to_episode(result, task, "solver")
        ep.reward = result.reward
        traces = [TraceRecord.model_validate(d) for d in to_rllm_traces(ep)]
        enriched = enrich_episode_with_traces(flow_episode, traces, uid=ep.uid, task=task.metadata)
        (traj,) = enriched.trajectories
        assert traj.name == "solver" and traj.reward == ep.reward == result.reward  # enrichment keeps it
        assert [s.response_ids for s in traj.steps] == [c.choices[0].ids.tolist() for c in ep.calls]
        assert [c.sent_as for c in ep.calls][1:] == ["tokens"] * (len(ep.calls) - 1)  # token mode
        episodes.append(enriched)
        ours.append(ep)
    assert sum(len(e.calls) for e in ours) > len(ours)  # some episodes took several turns

    rows = transform_rows(episodes)  # rLLM's own transform of the enriched episodes
    want = to_verl(ours, pad_id=0)
    t = want["tensors"]
    theirs = batch_rows(rows, pad_id=0, max_prompt=t["prompts"].shape[1], max_response=t["responses"].shape[1])
    assert len(rows.prompts) == len(ours)  # token mode: one row per episode in rLLM too
    for key in ("prompts", "responses", "input_ids", "response_mask", "rollout_log_probs"):
        np.testing.assert_array_equal(theirs[key], t[key], err_msg=key)
    np.testing.assert_array_equal(theirs["traj_rewards"], t["rm_scores"])


def test_a_flow_whose_episode_returns_no_reward_is_a_typed_error(server: EmbeddedServer) -> None:
    async def silent(task: dict, model: Any) -> None:
        await model.arun([{"role": "user", "content": "hi"}])

    flow = rllm_flow(silent, sampling={"max_tokens": 1}, trajectory=Trajectory)
    with pytest.raises(RewardError, match="no reward"):
        asyncio.run(flow({"id": "x"}, AgentConfig(base_url=server.base_url, model="tiny", session_uid="s")))


def test_the_one_agent_example_runs_as_rllm_flows(server: EmbeddedServer) -> None:
    from examples.one_agent_three_trainers import TASKS as EXAMPLE_TASKS
    from examples.one_agent_three_trainers import run_rllm

    out = run_rllm(server.url)
    assert out["flows"] == len(EXAMPLE_TASKS) and all(r in (0.0, 1.0) for r in out["rewards"])
