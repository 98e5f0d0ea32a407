"""verl export: the DataProto layout rLLM builds for verl's PPO/GRPO trainer.

Checked: rllm-org/rllm rllm/trainer/verl/transform.py @0515808 (_batch_tensors_and_build_data_proto, _process_trajectory; token_level_scores = traj_rewards) and verl's non_tensor_batch["uid"] GRPO grouping.

Layout: `prompts` left-padded [N, P], `responses` right-padded [N, R] holding
everything after the first prompt (sampled tokens and observation tokens),
`input_ids` = prompts ++ responses, `attention_mask` / `position_ids` over
[N, P+R], `response_mask` 1 only on sampled tokens, `rollout_log_probs` (0 on
observations and padding), `token_level_scores` with the scalar reward on the
last real response token. `non_tensor_batch["uid"]` is the GRPO group key
(task_id). Ids, masks and positions are int64 and scores float32, the dtypes
verl uses, so `torch.from_numpy` needs no casts.

Two deliberate differences from rLLM: the attention mask comes from the real
lengths, not from `input_ids != pad_id` (a real token equal to the pad id
would otherwise be masked out), and `rollout_log_probs` is omitted, not
zero-filled, when some sample has no logprobs (rLLM omits it too).
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

import numpy as np

from rollout.episode import Episode
from rollout.errors import TruncationError
from rollout.sample import AssemblyResult, Sample, as_samples


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


def to_verl(
    data: AssemblyResult | Iterable[Sample] | Iterable[Episode] | Episode,
    pad_id: int = 0,
    max_prompt_len: int | None = None,
    max_response_len: int | None = None,
    *,
    truncate: bool = False,
) -> dict[str, Any]:
    """Pack samples into `{"batch", "non_tensor_batch", "meta_info"}` for `DataProto.from_dict`.

    P and R are the max lengths when given, else the longest prompt/response.
    A sample that does not fit raises `TruncationError` by default; with
    `truncate=True` the prompt keeps its last P tokens (as rLLM does), the
    response its first R, the reward moves to the last kept response token,
    and `meta_info["num_truncated"]` counts the rows cut.
    Episodes are assembled in concat mode first.
    """
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
    batch: dict[str, np.ndarray] = {
        "input_ids": np.concatenate([prompts, responses], axis=1),
        "attention_mask": attention_mask,
        "position_ids": position_ids,
        "prompts": prompts,
        "responses": responses,
        "response_mask": response_mask,
        "token_level_scores": scores,
    }
    missing = sum(1 for s in samples if not s.has_logprobs)
    if not missing:
        batch["rollout_log_probs"] = logprobs
    non_tensor: dict[str, np.ndarray] = {
        "uid": np.array([s.task_id for s in samples], dtype=object),
        "episode_ids": np.array([s.uid for s in samples], dtype=object),
        "is_exact": np.array([s.exact for s in samples], dtype=bool),
    }
    meta: dict[str, Any] = {"num_truncated": num_truncated, "num_missing_logprobs": missing}
    return {"batch": batch, "non_tensor_batch": non_tensor, "meta_info": meta}
