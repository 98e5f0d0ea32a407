"""rLLM's episode types and its episode-to-verl transform, restated, and `to_rllm` held to them.

rLLM is not on the package registries, so its code cannot be installed in CI.
This file restates, as a test fixture, what `to_rllm`'s output must satisfy in
rLLM, pinned to rllm-org/rllm @ 9beb6e0f676a46d38858991fd79ac5f8e0b16d4c.
Every field and rule cites `file:line` at that commit; the code is ours,
written from those lines (none of rLLM's code is copied). What is restated:

- the types: `TerminationReason`, `ToolCall`, `ModelOutput`, `Step`,
  `Trajectory`, `Episode`, with their `from_dict` / `to_dict`;
- `transform_episodes_to_dataproto` (rllm/trainer/verl/transform.py), the
  rows it builds from episodes (prefix merge, padding, masks, rewards);
- trajectory grouping, compact filtering and the min-group-size filter of the
  unified trainer (rllm/trainer/algorithms/*.py), and rLLM's GRPO.

The first tests check the fixture itself against rLLM's own serialized
example and its documented failures (the ones the issue reported), so a wrong
restatement fails here rather than passing everything.
"""

from __future__ import annotations

import copy
import json
import uuid
from collections import defaultdict
from dataclasses import dataclass, field
from enum import Enum
from typing import Any

import numpy as np
import pytest
from pydantic import BaseModel, ConfigDict, Field

from rollout.call_record import CallRecord, ChoiceRecord, TokenSource
from rollout.episode import Episode as OurEpisode
from rollout.episode import EpisodeStatus
from rollout.export import to_rllm, to_verl
from rollout.export.rllm import TerminationReasonError
from rollout.sample import assemble

RLLM_COMMIT = "9beb6e0f676a46d38858991fd79ac5f8e0b16d4c"

# --------------------------------------------------------------------------------------------
# The types
# --------------------------------------------------------------------------------------------


class TerminationReason(Enum):
    """rllm/workflows/workflow.py:18-25. A plain Enum (not str): `.value` is the string."""

    MAX_PROMPT_LENGTH_EXCEEDED = "max_prompt_length_exceeded"
    MAX_RESPONSE_LENGTH_EXCEEDED = "max_response_length_exceeded"
    ENV_DONE = "env_done"
    MAX_TURNS_EXCEEDED = "max_turns_exceeded"
    TIMEOUT = "timeout"
    UNKNOWN = "unknown"
    ERROR = "error"


@dataclass
class ToolCall:
    """rllm/tools/tool_base.py:9-15: exactly `name` and `arguments` (a dict)."""

    name: str
    arguments: dict[str, Any]

    def to_dict(self) -> dict[str, Any]:  # tool_base.py:14-15
        return {"name": self.name, "arguments": self.arguments}


MODEL_OUTPUT_FIELDS: dict[str, Any] = {  # rllm/engine/rollout/rollout_engine.py:17-31, in order
    "text": None,
    "content": None,
    "reasoning": None,
    "tool_calls": None,
    "prompt_ids": None,
    "completion_ids": None,
    "multi_modal_inputs": None,
    "logprobs": None,
    "prompt_logprobs": None,
    "routing_matrices": None,
    "prompt_length": 0,
    "completion_length": 0,
    "finish_reason": None,
    "weight_version": None,
    "metrics": None,
}


class ModelOutput:
    """rollout_engine.py:15-72, a dataclass with the fields above and no validation."""

    def __init__(self, **values: Any) -> None:
        unknown = set(values) - set(MODEL_OUTPUT_FIELDS)
        if unknown:  # a dataclass rejects unknown keyword arguments
            raise TypeError(f"unexpected keyword arguments {sorted(unknown)}")
        for name, default in MODEL_OUTPUT_FIELDS.items():
            setattr(self, name, values.get(name, default))

    def to_dict(self) -> dict[str, Any]:
        """rollout_engine.py:33-50: every field; tool calls serialized, [] when none."""
        out = {name: getattr(self, name) for name in MODEL_OUTPUT_FIELDS}
        out["tool_calls"] = [t.to_dict() for t in self.tool_calls] if self.tool_calls else []
        return out

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> ModelOutput:
        """rollout_engine.py:52-72: every key optional (.get); lengths default to 0;
        `tool_calls` become `ToolCall(**tc)` (so only {name, arguments} loads), [] -> None."""
        values = {name: data.get(name, default) for name, default in MODEL_OUTPUT_FIELDS.items()}
        calls = data.get("tool_calls")
        values["tool_calls"] = [ToolCall(**tc) for tc in calls] if calls else None
        return cls(**values)


class _Model(BaseModel):
    # types.py: Step :112, Trajectory :244, Episode :320 all use this config (no aliases, no extra=)
    model_config = ConfigDict(arbitrary_types_allowed=True, populate_by_name=True)


class Step(_Model):
    """rllm/types.py:100-223."""

    id: str = Field(default_factory=lambda: str(uuid.uuid4()))  # :115
    input: Any | None = None  # :116
    output: Any | None = None  # :117
    action: Any | None = None  # :118
    reward: float = 0.0  # :119
    done: bool = False  # :120
    metadata: dict | None = None  # :121
    prompt_ids: list[int] | list[Any] = Field(default_factory=list)  # :124
    response_ids: list[int] = Field(default_factory=list)  # :125
    logprobs: list[float] = Field(default_factory=list)  # :126
    routing_matrices: list[str] | None = None  # :127
    chat_completions: list[dict[str, Any]] = Field(default_factory=list)  # :128
    observation: Any = None  # :129
    thought: str = ""  # :130
    model_response: str = ""  # :131
    model_output: Any = None  # :132 (a ModelOutput at run time)
    mc_return: float = 0.0  # :133
    advantage: list[float] | float | None = None  # :134
    weight_version: int | None = None  # :135

    def model_post_init(self, _context: Any) -> None:
        """types.py:149-167: copy chat_completions; with a model_output, back-fill empty
        token fields from it, then require len(logprobs) == len(response_ids)."""
        self.chat_completions = copy.deepcopy(self.chat_completions)
        mo = self.model_output
        if mo is None:
            return
        if not self.prompt_ids and mo.prompt_ids is not None:
            self.prompt_ids = mo.prompt_ids
        if not self.response_ids and mo.completion_ids is not None:
            self.response_ids = mo.completion_ids
        if not self.logprobs and mo.logprobs is not None:
            self.logprobs = mo.logprobs
        if self.routing_matrices is None and mo.routing_matrices is not None:
            self.routing_matrices = mo.routing_matrices
        if self.weight_version is None:
            self.weight_version = mo.weight_version
        if self.logprobs:
            assert len(self.response_ids) == len(self.logprobs), "length mismatch"

    def to_dict(self) -> dict[str, Any]:
        """types.py:169-200: these keys in this order; `info` = metadata or {};
        id / input / output are not written."""
        return {
            "prompt_ids": self.prompt_ids,
            "response_ids": self.response_ids,
            "logprobs": self.logprobs,
            "routing_matrices": self.routing_matrices,
            "chat_completions": self.chat_completions,
            "observation": self.observation,
            "thought": self.thought,
            "action": self.action,
            "model_response": self.model_response,
            "model_output": None if self.model_output is None else self.model_output.to_dict(),
            "info": self.metadata if self.metadata is not None else {},
            "reward": self.reward,
            "done": self.done,
            "mc_return": self.mc_return,
            "advantage": self.advantage,
            "weight_version": self.weight_version,
        }

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Step:
        """types.py:202-223: these keys are read with data[k] (KeyError when absent);
        `advantage` defaults to 0.0 when the key is missing (null stays None)."""
        mo = data.get("model_output")
        return cls(
            prompt_ids=data["prompt_ids"],
            response_ids=data["response_ids"],
            logprobs=data["logprobs"],
            routing_matrices=data.get("routing_matrices"),
            chat_completions=data["chat_completions"],
            observation=data["observation"],
            thought=data["thought"],
            action=data["action"],
            model_response=data["model_response"],
            model_output=None if mo is None else ModelOutput.from_dict(mo),
            metadata=data.get("info", data.get("metadata", {})),
            reward=data["reward"],
            done=data["done"],
            mc_return=data["mc_return"],
            advantage=data.get("advantage", 0.0),
            weight_version=data.get("weight_version"),
        )


def _without_images(task: Any) -> Any:
    """types.py:274-279 and :351-356: a dict task loses its image / images keys on to_dict."""
    return {k: v for k, v in task.items() if k not in ("image", "images")} if isinstance(task, dict) else task


class Trajectory(_Model):
    """rllm/types.py:241-299."""

    uid: str = Field(default_factory=lambda: str(uuid.uuid4()))  # :246
    name: str = "default_traj_name"  # :247 (_DEFAULT_TRAJ_NAME, :91)
    task: Any = None  # :248
    steps: list[Step] = Field(default_factory=list)  # :249
    reward: float | None = None  # :250
    input: dict | None = None  # :251
    output: Any = None  # :252
    signals: dict[str, float] = Field(default_factory=dict)  # :253
    metadata: dict | None = None  # :254

    def to_dict(self) -> dict[str, Any]:
        """types.py:272-287: input / output / signals are not written."""
        return {
            "uid": self.uid,
            "name": self.name,
            "task": _without_images(self.task),
            "steps": [s.to_dict() for s in self.steps],
            "reward": None if self.reward is None else float(self.reward),
            "info": self.metadata if self.metadata is not None else {},
        }

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Trajectory:
        """types.py:289-299: name, task and reward required; uid and steps optional."""
        return cls(
            uid=data.get("uid", str(uuid.uuid4())),
            name=data["name"],
            task=data["task"],
            steps=[Step.from_dict(s) for s in data.get("steps", [])],
            reward=data["reward"],
            metadata=data.get("info", data.get("metadata", {})),
        )


class Episode(_Model):
    """rllm/types.py:317-381."""

    id: str = Field(default_factory=lambda: str(uuid.uuid4()))  # :322
    task: Any = None  # :323
    termination_reason: Any | None = None  # :324 (a TerminationReason at run time)
    is_correct: bool = False  # :325
    session_id: str | None = None  # :326
    trajectories: list[Trajectory] = Field(default_factory=list)  # :327
    artifacts: dict[str, Any] = Field(default_factory=dict)  # :328
    metrics: dict = Field(default_factory=dict)  # :329
    metadata: dict = Field(default_factory=dict)  # :330

    @property
    def task_id(self) -> str:  # types.py:332-334: the part before the first ":"
        return self.id.split(":")[0]

    @property
    def rollout_idx(self) -> str:  # types.py:336-338: IndexError when id has no ":"
        return self.id.split(":")[1]

    def to_dict(self) -> dict[str, Any]:
        """types.py:349-366: `.value` of the reason (AttributeError on a plain str);
        artifacts are not written."""
        reason = self.termination_reason
        return {
            "id": self.id,
            "task": _without_images(self.task),
            "termination_reason": None if reason is None else reason.value,
            "is_correct": bool(self.is_correct),
            "session_id": self.session_id,
            "trajectories": [t.to_dict() for t in self.trajectories],
            "metrics": self.metrics,
            "info": self.metadata,
        }

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Episode:
        """types.py:368-381: id, task, is_correct, trajectories required; a missing reason
        is UNKNOWN, null or an unknown string raise ValueError; session_id is not read."""
        return cls(
            id=data["id"],
            task=data["task"],
            termination_reason=TerminationReason(data.get("termination_reason", TerminationReason.UNKNOWN)),
            is_correct=data["is_correct"],
            trajectories=[Trajectory.from_dict(t) for t in data["trajectories"]],
            metrics=data.get("metrics", {}),
            metadata=data.get("info", data.get("metadata", {})),
        )


# --------------------------------------------------------------------------------------------
# The unified trainer's grouping and filtering (rllm/trainer/algorithms/)
# --------------------------------------------------------------------------------------------

# rllm/trainer/config/rllm/base.yaml:112-120: what compact filtering masks once enabled.
COMPACT_FILTERING_YAML = {
    TerminationReason.MAX_PROMPT_LENGTH_EXCEEDED: True,
    TerminationReason.MAX_RESPONSE_LENGTH_EXCEEDED: True,
    TerminationReason.ENV_DONE: False,
    TerminationReason.MAX_TURNS_EXCEEDED: True,
    TerminationReason.TIMEOUT: True,
    TerminationReason.UNKNOWN: False,
    TerminationReason.ERROR: True,
}


def should_mask(reason: Any, masked: dict[TerminationReason, bool]) -> bool:
    """config.py:143-161: compares with `==` against enum members, so a plain string
    never matches and nothing is masked."""
    return any(on and reason == member for member, on in masked.items())


def trajectory_groups(episodes: list[Episode], masked: dict[TerminationReason, bool] | None = None) -> dict[str, list[Trajectory]]:
    """transform.py:105-146: skip compact-filtered episodes; group trajectories with steps
    on f"{episode.task_id}:{trajectory.name}" (rollout_idx is read for metadata, :137)."""
    groups: dict[str, list[Trajectory]] = defaultdict(list)
    for ep in episodes:
        if masked is not None and should_mask(ep.termination_reason or TerminationReason.UNKNOWN, masked):
            continue
        for traj in ep.trajectories:
            if traj.steps:
                ep.rollout_idx  # noqa: B018  (:137 reads it: IndexError for an id without ":")
                groups[f"{ep.task_id}:{traj.name}"].append(traj)
    return groups


MIN_TRAJS_PER_GROUP = 2  # base.yaml:127; rejection_sampling.py:106-135 drops smaller groups always


def grpo(rewards: np.ndarray, eps: float = 1e-6) -> np.ndarray:
    """rl_algo.py:6-18: population std (np.std); a group of one has mean 0 and std 1."""
    if len(rewards) <= 1:
        return rewards / (1.0 + eps)
    return (rewards - rewards.mean()) / (rewards.std() + eps)


# --------------------------------------------------------------------------------------------
# The verl transform (rllm/trainer/verl/transform.py)
# --------------------------------------------------------------------------------------------


@dataclass
class Rows:
    """One entry per emitted row (AccumulatedData, rllm/trainer/verl/dataclass.py:26-110)."""

    prompts: list[list[int]] = field(default_factory=list)
    responses: list[list[int]] = field(default_factory=list)
    masks: list[list[int]] = field(default_factory=list)
    logprobs: list[list[float]] = field(default_factory=list)  # only rows that have some (:101)
    traj_rewards: list[float] = field(default_factory=list)
    step_ids: list[str] = field(default_factory=list)
    episode_ids: list[str] = field(default_factory=list)
    termination_reasons: list[str] = field(default_factory=list)


def _trajectory_rows(traj: Trajectory, rows: Rows) -> int:
    """transform.py:248-402."""
    reward = 0.0 if traj.reward is None else traj.reward  # :287
    # :289-296: a step without model_output (or its prompt_ids) is dropped with a warning.
    valid = [s for s in traj.steps if s.model_output is not None and s.model_output.prompt_ids is not None]
    segments: list[dict[str, list[Any]]] = []
    for step in valid:
        mo = step.model_output
        action = list(mo.completion_ids)  # :318/:378: list(None) is a TypeError
        action_lp = list(mo.logprobs or [])
        if action_lp and len(action_lp) != len(action):  # :322-323 / :380-381: zero-extend
            action_lp += [0.0] * (len(action) - len(action_lp))
        prompt = list(mo.prompt_ids)
        seg = segments[-1] if segments else None
        if seg is not None and prompt[: len(seg["full"])] == seg["full"] and len(prompt) >= len(seg["full"]):
            obs = prompt[len(seg["full"]) :]  # :373-393: cumulative, merge into this row
            seg["response"] += obs + action
            seg["mask"] += [0] * len(obs) + [1] * len(action)
            seg["logprobs"] += [0.0] * len(obs) + action_lp
            seg["full"] += obs + action
        else:  # :316-337 and :394-398: a new row with this step's whole prompt
            segments.append(
                {"prompt": prompt, "response": action, "mask": [1] * len(action), "logprobs": action_lp, "full": prompt + action}
            )
    for seg in segments:  # :339-369 _emit: step_reward = traj reward, step_id = traj uid
        rows.prompts.append(seg["prompt"])
        rows.responses.append(seg["response"])
        rows.masks.append(seg["mask"])
        if seg["logprobs"]:
            rows.logprobs.append(seg["logprobs"])
        rows.traj_rewards.append(reward)
        rows.step_ids.append(traj.uid)
    return len(segments)


def transform_rows(episodes: list[Episode]) -> Rows:
    """transform.py:405-435 and :513-549, up to batching: an episode whose trajectories
    all lack steps is dropped; episode fields are repeated once per emitted row."""
    rows = Rows()
    for ep in episodes:
        if all(not t.steps for t in ep.trajectories):  # :417-422
            continue
        n = sum(_trajectory_rows(t, rows) for t in ep.trajectories)
        rows.episode_ids += [ep.id] * n
        reason = ep.termination_reason or TerminationReason.UNKNOWN  # :431
        rows.termination_reasons += [reason.value] * n  # :182 writes .value
    return rows


def batch_rows(rows: Rows, pad_id: int, max_prompt: int, max_response: int) -> dict[str, np.ndarray]:
    """transform.py:135-234: prompts left-padded and cut to their last P tokens, responses
    right-padded and cut to their first R (:19-39); attention_mask = ids != pad (:42-52);
    traj reward at the last response index when 0 < len <= R (:55-76);
    rollout_log_probs only when every row has logprobs (:204-208)."""
    if not rows.prompts:  # torch.nn.utils.rnn.pad_sequence on an empty list
        raise RuntimeError("received an empty list of sequences")
    n = len(rows.prompts)

    def pad(seqs: list[list[Any]], width: int, value: Any, left: bool, dtype: Any) -> np.ndarray:
        out = np.full((n, width), value, dtype=dtype)
        for i, s in enumerate(seqs):
            s = s[-width:] if left else s[:width]
            if s and left:
                out[i, width - len(s) :] = s
            elif s:
                out[i, : len(s)] = s
        return out

    prompts = pad(rows.prompts, max_prompt, pad_id, True, np.int64)
    responses = pad(rows.responses, max_response, pad_id, False, np.int64)
    traj_rewards = np.zeros((n, max_response), np.float32)
    for i, (r, resp) in enumerate(zip(rows.traj_rewards, rows.responses, strict=True)):
        if 0 < len(resp) <= max_response:
            traj_rewards[i, len(resp) - 1] = r
    out = {
        "prompts": prompts,
        "responses": responses,
        "input_ids": np.concatenate([prompts, responses], axis=1),
        "attention_mask": np.concatenate([prompts, responses], axis=1) != pad_id,
        "response_mask": pad(rows.masks, max_response, 0, False, np.int64),
        "traj_rewards": traj_rewards,
    }
    if len(rows.logprobs) == n:
        out["rollout_log_probs"] = pad(rows.logprobs, max_response, 0.0, False, np.float32)
    return out


# --------------------------------------------------------------------------------------------
# The fixture against rLLM's own serialized example and its documented failures
# --------------------------------------------------------------------------------------------

RLLM_EXAMPLE = {  # an Episode.to_dict() as rLLM writes it, 1 trajectory, 2 cumulative steps
    "id": "task-7:0",
    "task": {"question": "What is 2+3?", "ground_truth": "5"},
    "termination_reason": "env_done",
    "is_correct": True,
    "session_id": None,
    "trajectories": [
        {
            "uid": "6f1c2a9e-0000-4000-8000-000000000001",
            "name": "solver",
            "task": {"question": "What is 2+3?", "ground_truth": "5"},
            "steps": [
                {
                    "prompt_ids": [101, 102, 103], "response_ids": [201, 202], "logprobs": [-0.11, -0.22],
                    "routing_matrices": None,
                    "chat_completions": [{"role": "user", "content": "What is 2+3?"}, {"role": "assistant", "content": "calc(2+3)"}],
                    "observation": None, "thought": "", "action": "calc(2+3)", "model_response": "calc(2+3)",
                    "model_output": {
                        "text": "calc(2+3)", "content": "calc(2+3)", "reasoning": None, "tool_calls": [],
                        "prompt_ids": [101, 102, 103], "completion_ids": [201, 202], "multi_modal_inputs": None,
                        "logprobs": [-0.11, -0.22], "prompt_logprobs": None, "routing_matrices": None,
                        "prompt_length": 3, "completion_length": 2, "finish_reason": "stop", "weight_version": 0, "metrics": None,
                    },
                    "info": {}, "reward": 0.0, "done": False, "mc_return": 0.0, "advantage": None, "weight_version": 0,
                },
                {
                    "prompt_ids": [101, 102, 103, 201, 202, 301, 302], "response_ids": [203, 204], "logprobs": [-0.33, -0.44],
                    "routing_matrices": None,
                    "chat_completions": [
                        {"role": "user", "content": "What is 2+3?"}, {"role": "assistant", "content": "calc(2+3)"},
                        {"role": "user", "content": "5"}, {"role": "assistant", "content": "The answer is 5."},
                    ],
                    "observation": "5", "thought": "", "action": "The answer is 5.", "model_response": "The answer is 5.",
                    "model_output": {
                        "text": "The answer is 5.", "content": "The answer is 5.", "reasoning": None, "tool_calls": [],
                        "prompt_ids": [101, 102, 103, 201, 202, 301, 302], "completion_ids": [203, 204],
                        "multi_modal_inputs": None, "logprobs": [-0.33, -0.44], "prompt_logprobs": None,
                        "routing_matrices": None, "prompt_length": 7, "completion_length": 2, "finish_reason": "stop",
                        "weight_version": 0, "metrics": None,
                    },
                    "info": {}, "reward": 1.0, "done": True, "mc_return": 1.0, "advantage": None, "weight_version": 0,
                },
            ],
            "reward": 1.0,
            "info": {},
        }
    ],
    "metrics": {"solver_acc": 1.0},
    "info": {},
}


def test_fixture_round_trips_rllms_own_example_and_merges_it_into_one_row() -> None:
    ep = Episode.from_dict(copy.deepcopy(RLLM_EXAMPLE))
    assert ep.to_dict() == RLLM_EXAMPLE
    assert ep.termination_reason is TerminationReason.ENV_DONE and ep.task_id == "task-7"
    rows = transform_rows([ep])  # the two cumulative steps merge into one row
    assert rows.prompts == [[101, 102, 103]]
    assert rows.responses == [[201, 202, 301, 302, 203, 204]]
    assert rows.masks == [[1, 1, 0, 0, 1, 1]]
    assert rows.logprobs == [[-0.11, -0.22, 0.0, 0.0, -0.33, -0.44]]
    batch = batch_rows(rows, pad_id=0, max_prompt=4, max_response=8)
    assert batch["traj_rewards"][0].tolist() == [0, 0, 0, 0, 0, 1.0, 0, 0]
    assert batch["attention_mask"][0].tolist() == [False] + [True] * 9 + [False] * 2


def test_fixture_reproduces_the_failures_the_issue_reported() -> None:
    step = RLLM_EXAMPLE["trajectories"][0]["steps"][0]  # type: ignore[index]
    # "KeyError: 'observation'": Step needs observation and thought.
    with pytest.raises(KeyError, match="observation"):
        Step.from_dict({k: v for k, v in step.items() if k not in ("observation", "thought")})
    # A null reason does not load; a plain-string reason does not serialize.
    with pytest.raises(ValueError, match="None is not a valid TerminationReason"):
        Episode.from_dict({**RLLM_EXAMPLE, "termination_reason": None})
    with pytest.raises(AttributeError):
        Episode(id="t:0", termination_reason="env_done").to_dict()
    # ...and compact filtering keeps every plain-string episode.
    strings = [Episode(id=f"t:{i}", termination_reason=r.value, trajectories=[Trajectory(name="a", steps=[Step()])]) for i, r in enumerate(TerminationReason)]
    assert len(trajectory_groups(strings, COMPACT_FILTERING_YAML)["t:a"]) == 7
    # No model_output: every step is dropped and batching an empty batch fails.
    bare = Episode.from_dict({**RLLM_EXAMPLE, "trajectories": [{**RLLM_EXAMPLE["trajectories"][0], "steps": [{**step, "model_output": None}]}]})  # type: ignore[index]
    with pytest.raises(RuntimeError, match="empty list of sequences"):
        batch_rows(transform_rows([bare]), 0, 4, 4)
    # OpenAI-shaped tool calls do not load; an id without ":" breaks grouping.
    with pytest.raises(TypeError):
        ModelOutput.from_dict({"tool_calls": [{"id": "c1", "type": "function", "function": {"name": "f", "arguments": "{}"}}]})
    with pytest.raises(IndexError):
        trajectory_groups([Episode(id="no-colon", trajectories=[Trajectory(steps=[Step()])])])
    # A missing advantage loads as 0.0, a stale "precomputed" value; null stays None.
    assert Step.from_dict({k: v for k, v in step.items() if k != "advantage"}).advantage == 0.0
    assert Step.from_dict(step).advantage is None


# --------------------------------------------------------------------------------------------
# to_rllm against the restated rLLM
# --------------------------------------------------------------------------------------------


def _choice(ids: list[int], logprobs: list[float] | None, version: int = 3, **kw: Any) -> ChoiceRecord:
    return ChoiceRecord(ids=ids, logprobs=logprobs, versions=[version] * len(ids), source=TokenSource.VLLM, **kw)


def _call(prompt: list[int], *choices: ChoiceRecord, messages: list[dict[str, Any]] | None = None, parent: int | None = None, reward: float | None = None) -> CallRecord:
    return CallRecord(
        id=f"c{uuid.uuid4().hex[:6]}",
        prompt_ids=prompt,
        prompt_source=TokenSource.VLLM,
        choices=list(choices),
        request={"messages": messages or [{"role": "user", "content": "q"}], "api_key": "sk-SECRETSECRETSECRET00"},
        parent=parent,
        reward=reward,
    )


def multi_turn(task_id: str, sample: int, reward: float, *, drift: bool = False, status: EpisodeStatus = EpisodeStatus.COMPLETED) -> OurEpisode:
    """Three turns; turn 2 re-renders the history differently when `drift` (a new row)."""
    user = {"role": "user", "content": f"{task_id}?"}
    a1 = {"role": "assistant", "content": "7"}
    tool = {"role": "assistant", "content": None, "reasoning_content": "add them",
            "tool_calls": [{"id": "t1", "type": "function", "function": {"name": "add", "arguments": '{"a": 2, "b": 3}'}}]}
    p0 = [1, 2, 3 + sample]
    p1 = [*p0, 10, 11, 5, 6]  # prompt + reply + observation tokens
    c0 = _call(p0, _choice([10, 11], [-0.5, -0.25], finish_reason="stop", message=a1), messages=[user])
    c1 = _call(p1, _choice([12, 13, 14], [-1.0, -0.125, -2.0], finish_reason="tool_calls", message=tool),
               messages=[user, a1, {"role": "user", "content": "Wrong."}], parent=0)
    p2 = [*p1, 12, 13, 14, 8] if not drift else [1, 2, 99, 8]
    c2 = _call(p2, _choice([15], None, finish_reason="stop", message={"role": "assistant", "content": "5"}),
               messages=[user, a1, {"role": "user", "content": "Wrong."}, tool, {"role": "tool", "tool_call_id": "t1", "content": "5"}], parent=1)
    return OurEpisode(task_id=task_id, sample=sample, task={"q": task_id, "images": ["x"]}, calls=[c0, c1, c2],
                      reward=reward, status=status, metadata={"token": "hidden", "note": "Bearer abcdefghijklmnop"})


def test_to_rllm_loads_in_rllm_and_survives_to_dict() -> None:
    eps = [multi_turn("gsm8k:12", 0, 1.0), multi_turn("gsm8k:12", 1, 0.0, drift=True)]
    dicts = json.loads(json.dumps(to_rllm(eps)))  # JSON-ready
    for d, ours in zip(dicts, eps, strict=True):
        ep = Episode.from_dict(copy.deepcopy(d))
        assert ep.termination_reason is TerminationReason.ENV_DONE
        out = ep.to_dict()
        # rLLM drops the task's images on to_dict (types.py:351-356); everything else is a fixed point.
        d["task"] = _without_images(d["task"])
        d["trajectories"][0]["task"] = _without_images(d["trajectories"][0]["task"])
        assert out == d
        (traj,) = ep.trajectories
        assert traj.name == "agent" and traj.uid == ours.id and traj.reward == ours.reward
        assert [s.done for s in traj.steps] == [False, False, True]
        for step, call in zip(traj.steps, ours.calls, strict=True):
            mo = step.model_output
            assert mo.prompt_ids == step.prompt_ids == call.prompt_ids.tolist()
            assert mo.completion_ids == step.response_ids == call.choices[0].ids.tolist()
            assert step.advantage is None and step.weight_version == 3
        s1 = traj.steps[1]
        assert s1.model_output.tool_calls == [ToolCall(name="add", arguments={"a": 2, "b": 3})]
        assert s1.thought == "add them" and s1.model_response == ""
        assert traj.steps[2].logprobs == [] and traj.steps[2].model_output.logprobs == []  # none sent
        assert ep.task_id == "gsm8k%3A12"  # one group per task despite the ":" in it
    text = json.dumps(dicts)
    assert "SECRET" not in text and "hidden" not in text and "abcdefghijklmnop" not in text


def test_termination_reasons_are_rllms_and_compact_filtering_applies() -> None:
    statuses = {
        EpisodeStatus.COMPLETED: TerminationReason.ENV_DONE,
        EpisodeStatus.TIMEOUT: TerminationReason.TIMEOUT,
        EpisodeStatus.ERROR: TerminationReason.ERROR,
        EpisodeStatus.TRUNCATED: TerminationReason.MAX_TURNS_EXCEEDED,
    }
    eps = [multi_turn("t", i, 1.0, status=s) for i, s in enumerate(statuses)]
    length = multi_turn("t", 9, 0.0, status=EpisodeStatus.TRUNCATED)
    length.calls[-1].choices[0].finish_reason = "length"
    explicit = multi_turn("t", 10, 0.0)
    explicit.metadata["termination_reason"] = "max_prompt_length_exceeded"
    loaded = [Episode.from_dict(d) for d in to_rllm([*eps, length, explicit])]
    assert [e.termination_reason for e in loaded] == [
        *statuses.values(),
        TerminationReason.MAX_RESPONSE_LENGTH_EXCEEDED,
        TerminationReason.MAX_PROMPT_LENGTH_EXCEEDED,
    ]
    kept = trajectory_groups(loaded, COMPACT_FILTERING_YAML)["t:agent"]
    assert [t.uid for t in kept] == [eps[0].id]  # only env_done survives rLLM's YAML masks
    explicit.metadata["termination_reason"] = "finished"
    with pytest.raises(TerminationReasonError, match="finished"):
        to_rllm(explicit)


def test_rllm_transform_builds_the_rows_to_verl_packs() -> None:
    eps = [
        multi_turn("a", 0, 1.0),
        multi_turn("a", 1, 0.0, drift=True),  # the third turn does not extend: two rows
        multi_turn("b", 0, 0.5),
        multi_turn("b", 1, 1.0),
    ]
    loaded = [Episode.from_dict(d) for d in to_rllm(eps)]
    rows = transform_rows(loaded)
    with pytest.warns(UserWarning, match="1 episodes span several rows"):
        ours = to_verl(assemble(eps, mode="concat"), pad_id=0)
    t, nt = ours["tensors"], ours["non_tensors"]
    width_p, width_r = t["prompts"].shape[1], t["responses"].shape[1]
    theirs = batch_rows(rows, pad_id=0, max_prompt=width_p, max_response=width_r)
    assert len(rows.prompts) == len(t["prompts"]) == 5
    for key in ("prompts", "responses", "input_ids", "response_mask"):
        np.testing.assert_array_equal(theirs[key], t[key], err_msg=key)
    np.testing.assert_array_equal(theirs["attention_mask"], t["attention_mask"].astype(bool))
    np.testing.assert_array_equal(theirs["traj_rewards"], t["rm_scores"])  # verl's rm_scores slot
    # One turn had no logprobs: both leave rollout_log_probs out rather than zero-fill it.
    assert "rollout_log_probs" not in theirs and "rollout_log_probs" not in t
    # Rows follow episodes in order: rLLM's episode ids are ours (task_id:sample).
    assert rows.episode_ids == [f"{s}" for s in nt["episode_ids"]]

    # With logprobs everywhere they agree on those too.
    for ep in eps:
        ep.calls[2].choices[0].logprobs = np.array([-0.75], np.float32)
    theirs = batch_rows(transform_rows([Episode.from_dict(d) for d in to_rllm(eps)]), 0, width_p, width_r)
    ours = to_verl(eps, uid="episode")
    np.testing.assert_array_equal(theirs["rollout_log_probs"], ours["tensors"]["rollout_log_probs"])


def test_rllm_groups_and_grpo_give_each_episode_one_advantage() -> None:
    eps = [multi_turn("a", i, r, drift=i == 0) for i, r in enumerate((1.0, 0.0, 0.0))]
    loaded = [Episode.from_dict(d) for d in to_rllm(eps)]
    groups = trajectory_groups(loaded)
    assert list(groups) == ["a:agent"] and len(groups["a:agent"]) == 3 >= MIN_TRAJS_PER_GROUP
    advantage = dict(zip((t.uid for t in groups["a:agent"]), grpo(np.array([t.reward for t in groups["a:agent"]])), strict=True))
    rows = transform_rows(loaded)  # episode 0 drifted: two rows, one trajectory uid
    per_row = [advantage[uid] for uid in rows.step_ids]
    assert rows.step_ids.count(eps[0].id) == 2
    assert per_row[0] == per_row[1] == pytest.approx(2 / 3 / (np.std([1.0, 0, 0]) + 1e-6))
