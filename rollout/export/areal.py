"""AReaL export: padded [N, L] numpy arrays in AReaL's per-interaction conventions.

AReaL turns each interaction into a dict with batch dim 1 (`input_ids` =
prompt + output, `loss_mask` 0/1, `logprobs` 0.0 on the prompt, `versions` -1
on the prompt, `attention_mask` all true, `rewards` [1]) and its trainer pads a
list of them to [N, max_len]. `to_areal` produces that padded batch directly.

Packing is one preallocated array per field and one slice copy per sample
and field, so each token is copied once; see benchmarks/bench_export.py.
"""

from __future__ import annotations

from collections.abc import Iterable

import numpy as np

from rollout.episode import Episode
from rollout.errors import MissingLogprobsError
from rollout.record import NO_VERSION
from rollout.sample import AssemblyResult, Sample, as_samples


def to_areal(
    data: AssemblyResult | Iterable[Sample] | Iterable[Episode] | Episode,
    pad_id: int = 0,
    *,
    require_logprobs: bool = False,
) -> dict[str, np.ndarray]:
    """Pack samples into AReaL's padded training batch.

    `data` may be samples, an `AssemblyResult`, or episodes; episodes are first
    assembled in concat mode (failed episodes skipped; call `assemble` yourself
    for other choices). Returns `input_ids` int32 [N, L] (padded with
    `pad_id`), `loss_mask` int32 0/1, `logprobs` float32 (0.0 off sampled
    tokens), `versions` int32 (-1 on prompt, observations and padding),
    `attention_mask` bool (true exactly on real tokens) and `rewards` float32
    [N]. Samples without logprobs get 0.0 there; `require_logprobs=True`
    raises instead, since decoupled PPO would read them as probability 1.
    """
    samples = as_samples(data)
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
