"""verl export: the batch verl's `DataProto.from_dict(**to_verl(...))` takes as written.

Checked against verl 0.9.1 (the wheel on PyPI; tests/peers/verl runs it):
`DataProto.from_dict(tensors, non_tensors, meta_info)` (verl/protocol.py:493)
turns numpy arrays into tensors itself (TensorDict), so torch is not needed
here. Rewards travel the way verl's agent loop hands them over: `rm_scores`,
the score on the last real response token (experimental/agent_loop/
agent_loop.py:1096-1099), which the trainer copies into `token_level_scores`
(trainer/ppo/ray_trainer.py:1633; a `token_level_scores` shipped by anyone
else is overwritten there).

Layout: `prompts` left-padded [N, P], `responses` right-padded [N, R] holding
everything after the first prompt (sampled tokens and observation tokens),
`input_ids` = prompts ++ responses, `attention_mask` / `position_ids` over
[N, P+R], `response_mask` 1 only on sampled tokens, `rollout_log_probs` (0 on
observations and padding), `rm_scores`. Ids, masks and positions are int64
and scores float32, the dtypes verl uses. The attention mask comes from the
real lengths, not from `input_ids != pad_id` as rLLM builds it, so a real
token equal to the pad id is kept; `rollout_log_probs` is left out when some
row has no logprobs (rLLM leaves it out too; zeros would read as p = 1).

Advantages: verl's trainer recomputes them from `rm_scores`, grouping rows on
`non_tensors["uid"]`. With `uid="task"` (the default) that is the task id, so
verl's own GRPO/RLOO equal per-episode GRPO/RLOO when each episode is one row,
which exact multi-turn concat makes the norm. An episode split over several
rows (drift, n > 1) would weigh in once per row: `meta_info
["num_multi_row_episodes"]` counts them (with a warning), and `uid="episode"`
writes `(task_id, episode_id)` pairs that the estimators in
`rollout.export.verl_advantage` (`episode_grpo`, `episode_rloo`, registered
with verl) group by episode.
"""

from __future__ import annotations

import json
import warnings
from collections import Counter
from collections.abc import Iterable
from pathlib import Path
from typing import Any, Literal

import numpy as np

from rollout.episode import Episode
from rollout.errors import TruncationError
from rollout.sample import AssemblyResult, Sample, as_samples

UidMode = Literal["task", "episode"]


def _check_fit(lens: np.ndarray, limit: int | None, what: str, truncate: bool) -> None:
    """Raise if some row is over `limit` and we may not truncate."""
    if limit is None:
        return
    if limit < 0:
        raise ValueError(f"max_{what}_len must be >= 0, got {limit}")
    over = int(np.count_nonzero(lens > limit))
    if over and not truncate:
        raise TruncationError(
            f"{over} of {len(lens)} samples have a {what} longer than max_{what}_len={limit} "
            f"(longest {int(lens.max())}); raise the limit or pass truncate=True"
        )


def _objects(values: Iterable[Any]) -> np.ndarray:
    """A 1-D object array, even of tuples (np.array would make those a 2-D array)."""
    items = list(values)
    out = np.empty(len(items), dtype=object)
    out[:] = items
    return out


def to_verl(
    data: AssemblyResult | Iterable[Sample] | Iterable[Episode] | Episode,
    pad_id: int = 0,
    max_prompt_len: int | None = None,
    max_response_len: int | None = None,
    *,
    truncate: bool = False,
    uid: UidMode = "task",
) -> dict[str, Any]:
    """Pack samples into `{"tensors", "non_tensors", "meta_info"}` for `DataProto.from_dict`.

    P and R are the max lengths when given, else the longest prompt/response.
    A sample that does not fit raises `TruncationError` by default; with
    `truncate=True` the prompt keeps its last P tokens (as rLLM does), the
    response its first R, the reward moves to the last kept response token,
    and `meta_info["num_truncated"]` counts the rows cut.
    `uid` picks verl's group key: "task" (task id) or "episode" ((task id,
    episode id) pairs, for the `episode_grpo` / `episode_rloo` estimators).
    Episodes are assembled in concat mode first.
    """
    if uid not in ("task", "episode"):
        raise ValueError(f"uid must be 'task' or 'episode', got {uid!r}")
    samples = as_samples(data)
    n = len(samples)
    plens = np.fromiter((s.prompt_len for s in samples), dtype=np.int64, count=n)
    rlens = np.fromiter((len(s.tokens) - s.prompt_len for s in samples), dtype=np.int64, count=n)
    _check_fit(plens, max_prompt_len, "prompt", truncate)
    _check_fit(rlens, max_response_len, "response", truncate)
    width_p = max_prompt_len if max_prompt_len is not None else (int(plens.max()) if n else 0)
    width_r = max_response_len if max_response_len is not None else (int(rlens.max()) if n else 0)
    num_truncated = int(np.count_nonzero((plens > width_p) | (rlens > width_r)))
    kept_p = np.minimum(plens, width_p)
    kept_r = np.minimum(rlens, width_r)

    prompts = np.full((n, width_p), pad_id, dtype=np.int64)
    responses = np.full((n, width_r), pad_id, dtype=np.int64)
    response_mask = np.zeros((n, width_r), dtype=np.int64)
    logprobs = np.zeros((n, width_r), dtype=np.float32)
    scores = np.zeros((n, width_r), dtype=np.float32)
    for i, s in enumerate(samples):
        p, kp, kr = s.prompt_len, int(kept_p[i]), int(kept_r[i])
        if kp:
            prompts[i, width_p - kp :] = s.tokens[p - kp : p]
        if kr:
            responses[i, :kr] = s.tokens[p : p + kr]
            response_mask[i, :kr] = s.loss_mask[p : p + kr]
            logprobs[i, :kr] = s.logprobs[p : p + kr]
            scores[i, kr - 1] = s.reward

    attention_mask = np.concatenate(
        [np.arange(width_p) >= (width_p - kept_p)[:, None], np.arange(width_r) < kept_r[:, None]],
        axis=1,
    ).astype(np.int64)
    position_ids = np.maximum(np.cumsum(attention_mask, axis=1) - 1, 0) * attention_mask
    tensors: dict[str, np.ndarray] = {
        "input_ids": np.concatenate([prompts, responses], axis=1),
        "attention_mask": attention_mask,
        "position_ids": position_ids,
        "prompts": prompts,
        "responses": responses,
        "response_mask": response_mask,
        "rm_scores": scores,
    }
    missing = sum(1 for s in samples if not s.has_logprobs)
    if not missing:
        tensors["rollout_log_probs"] = logprobs

    episodes = [s.uid for s in samples]
    multi_row = sum(1 for count in Counter(episodes).values() if count > 1)
    if multi_row and uid == "task":
        warnings.warn(
            f"{multi_row} episodes span several rows; verl's grpo/rloo would count each row "
            "as a rollout. Pass uid='episode' and use adv_estimator=episode_grpo / episode_rloo "
            "(rollout.export.verl_advantage) to keep advantages per episode.",
            stacklevel=2,
        )
    groups = [s.task_id for s in samples] if uid == "task" else zip(
        (s.task_id for s in samples), episodes, strict=True
    )
    non_tensors: dict[str, np.ndarray] = {
        "uid": _objects(groups),
        "episode_ids": _objects(episodes),
        "is_exact": np.array([s.exact for s in samples], dtype=bool),
    }
    meta: dict[str, Any] = {
        "num_truncated": num_truncated,
        "num_missing_logprobs": missing,
        "num_multi_row_episodes": multi_row,
    }
    return {"tensors": tensors, "non_tensors": non_tensors, "meta_info": meta}


def write_verl(batch: dict[str, Any], path: str | Path) -> None:
    """Save a `to_verl` batch as .npz, without pickles (`read_verl` loads it back).

    Strings are stored as unicode arrays and (task, episode) pairs as [N, 2]
    arrays; meta_info as JSON.
    """
    arrays: dict[str, Any] = {f"tensors.{k}": v for k, v in batch["tensors"].items()}
    for key, value in batch["non_tensors"].items():
        items = list(value)
        if items and isinstance(items[0], tuple):
            arrays[f"pairs.{key}"] = np.array([[str(x) for x in pair] for pair in items], dtype=str)
        else:
            arrays[f"non_tensors.{key}"] = np.asarray(items if value.dtype == object else value)
    arrays["meta_info"] = np.array(json.dumps(batch["meta_info"]))
    with Path(path).open("wb") as f:  # the path as given (numpy appends .npz to a name)
        np.savez(f, **arrays)


def read_verl(path: str | Path) -> dict[str, Any]:
    """A batch saved by `write_verl`, ready for `DataProto.from_dict(**read_verl(path))`."""
    tensors: dict[str, np.ndarray] = {}
    non_tensors: dict[str, np.ndarray] = {}
    meta: dict[str, Any] = {}
    with np.load(Path(path), allow_pickle=False) as f:
        for name in f.files:
            kind, _, key = name.partition(".")
            value = f[name]
            if kind == "tensors":
                tensors[key] = value
            elif kind == "pairs":
                non_tensors[key] = _objects(tuple(str(x) for x in row) for row in value)
            elif kind == "non_tensors":
                non_tensors[key] = value.astype(object) if value.dtype.kind == "U" else value
            elif name == "meta_info":
                meta = json.loads(str(value))
    return {"tensors": tensors, "non_tensors": non_tensors, "meta_info": meta}
