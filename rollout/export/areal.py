"""AReaL export: padded [N, L] arrays in AReaL's per-interaction conventions.

AReaL turns each interaction into a dict with batch dim 1 (`input_ids` =
prompt + output, `loss_mask` 0/1, `logprobs` 0.0 on the prompt, `versions` -1
on the prompt, `attention_mask` all true, `rewards` [1]) and pads a list of
them to [N, max_len] (areal 1.0.4: experimental/openai/types.py:143-206,
utils/data.py:241-296). `to_areal` produces that padded batch directly, as
numpy; `areal_tensors` hands it to AReaL as the torch tensors its
`check_trajectory_format` and `concat_padded_tensors` require (numpy fails the
first and is silently cut to the first trajectory by the second).

Rewards follow AReaL by default: a row's reward is that of the call it ends
with, and a call without its own reward gets 0.0 (types.py:194), except that
the episode reward sits on the episode's last call, as AReaL's
`set_last_reward` puts it. So in individual mode only the last call's row is
rewarded unless the episode was discounted (`Episode.discount`, AReaL's
`apply_reward_discount`), which gives every call its return.
`rewards="episode"` gives every row the episode reward instead.

Packing is one preallocated array per field and one slice copy per sample
and field, so each token is copied once; see benchmarks/bench_export.py.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterable
from typing import Any, Literal

import numpy as np

from rollout.call_record import NO_VERSION
from rollout.episode import Episode
from rollout.errors import MissingLogprobsError
from rollout.sample import AssemblyMode, AssemblyResult, Sample, as_samples, assemble

RewardRule = Literal["areal", "episode"]


def areal_reward(episode: Episode, call: int) -> float:
    """AReaL's reward for call `call` of `episode`: its own, else 0.0, except that the
    episode reward goes on the last call that sampled something when no call has its own."""
    own = episode.calls[call].reward
    if own is not None:
        return float(own)
    if episode.reward is None or any(c.reward is not None for c in episode.calls):
        return 0.0
    last = max((i for i, c in enumerate(episode.calls) if c.choices), default=-1)
    return float(episode.reward) if call == last else 0.0


def _episodes(items: Any) -> list[Episode] | None:
    """`items` as a list of episodes, or None when they are samples."""
    if isinstance(items, Episode):
        return [items]
    if isinstance(items, list) and items and all(isinstance(x, Episode) for x in items):
        return items
    return None


def to_areal(
    data: AssemblyResult | Iterable[Sample] | Iterable[Episode] | Episode,
    pad_id: int = 0,
    *,
    mode: AssemblyMode = "concat",
    rewards: RewardRule = "areal",
    require_logprobs: bool = False,
) -> dict[str, np.ndarray]:
    """Pack samples into AReaL's padded training batch.

    `data` may be episodes, assembled here in `mode` ("concat": one row per
    leaf of the exact-prefix call tree; "individual": one row per call; failed
    episodes skipped) with `rewards` as the module docstring says; or samples /
    an `AssemblyResult`, which keep the rewards `assemble` gave them.
    Returns `input_ids` int32 [N, L] (padded with `pad_id`), `loss_mask` int32
    0/1, `logprobs` float32 (0.0 off sampled tokens), `versions` int32 (-1 on
    prompt, observations and padding), `attention_mask` bool (true exactly on
    real tokens) and `rewards` float32 [N]. Samples without logprobs get 0.0
    there; `require_logprobs=True` raises instead, since decoupled PPO would
    read them as probability 1.
    """
    if rewards not in ("areal", "episode"):
        raise ValueError(f"rewards must be 'areal' or 'episode', got {rewards!r}")
    items: Any = data if isinstance(data, (Episode, AssemblyResult)) else list(data)
    episodes = _episodes(items)
    if episodes is not None:
        samples = assemble(episodes, mode=mode).samples
        if rewards == "areal":
            by_id = {ep.id: ep for ep in episodes}
            samples = [
                dataclasses.replace(s, reward=areal_reward(by_id[s.episode_id], s.calls[-1][0]))
                for s in samples
            ]
    else:
        samples = as_samples(items)
    if require_logprobs:
        missing = sum(1 for s in samples if not s.has_logprobs)
        if missing:
            raise MissingLogprobsError(f"{missing} of {len(samples)} samples have no logprobs")
    n = len(samples)
    lens = np.fromiter((len(s.tokens) for s in samples), dtype=np.int64, count=n)
    width = int(lens.max()) if n else 0
    input_ids = np.full((n, width), pad_id, dtype=np.int32)
    loss_mask = np.zeros((n, width), dtype=np.int32)
    logprobs = np.zeros((n, width), dtype=np.float32)
    versions = np.full((n, width), NO_VERSION, dtype=np.int32)
    for i, s in enumerate(samples):
        k = len(s.tokens)
        input_ids[i, :k] = s.tokens
        loss_mask[i, :k] = s.loss_mask
        logprobs[i, :k] = s.logprobs
        versions[i, :k] = s.versions
    return {
        "input_ids": input_ids,
        "loss_mask": loss_mask,
        "logprobs": logprobs,
        "versions": versions,
        "attention_mask": np.arange(width) < lens[:, None],
        "rewards": np.fromiter((s.reward for s in samples), dtype=np.float32, count=n),
    }


def areal_tensors(batch: dict[str, np.ndarray]) -> dict[str, Any]:
    """`batch` as torch tensors (shared memory, no copy): what AReaL's workflow executor takes.

    torch is the optional `torch` extra (`pip install 'rollout-compat[torch]'`).
    """
    try:
        import torch
    except ImportError as exc:
        raise ImportError(
            "AReaL takes torch tensors: pip install 'rollout-compat[torch]'"
        ) from exc
    return {key: torch.from_numpy(value) for key, value in batch.items()}
