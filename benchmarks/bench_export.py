"""Export throughput: AReaL packing of 1 M tokens, and Parquet / JSONL write + read.

Prints one JSON line. Baselines are measured in the same run on the same data:
`np.concatenate` of the four per-token fields (the unavoidable copy, no
padding) and a naive per-row Python loop (list padding + np.array), the way
a quick exporter would be written.

    python benchmarks/bench_export.py [--tokens 1000000]
"""

from __future__ import annotations

import argparse
import json
import os
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from rollout.call_record import CallRecord, ChoiceRecord, TokenSource
from rollout.episode import Episode
from rollout.export import read_jsonl, read_parquet, to_areal, write_jsonl, write_parquet
from rollout.sample import Sample


def _best(fn: Callable[[], Any], repeat: int) -> float:
    best = float("inf")
    for _ in range(repeat):
        t = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - t)
    return best


def make_samples(total: int, rng: np.random.Generator, mean_len: int = 1000) -> list[Sample]:
    samples, n = [], 0
    while n < total:
        length = int(min(rng.integers(mean_len // 2, mean_len * 3 // 2), total - n))
        length = max(length, 2)
        mask = np.zeros(length, dtype=bool)
        mask[length // 3 :] = True
        samples.append(
            Sample(
                tokens=rng.integers(0, 150_000, length, dtype=np.int32),
                loss_mask=mask,
                logprobs=np.where(mask, rng.standard_normal(length), 0).astype(np.float32),
                versions=np.where(mask, 3, -1).astype(np.int32),
                prompt_len=length // 3,
                reward=float(rng.random()),
            )
        )
        n += length
    return samples


def make_episodes(total: int, rng: np.random.Generator, calls: int = 4) -> list[Episode]:
    """Multi-turn episodes whose stored tokens (prompts + completions) sum to ~total."""
    episodes, n = [], 0
    while n < total:
        prompt = rng.integers(0, 150_000, 200, dtype=np.int32)
        records = []
        for i in range(calls):
            out = rng.integers(0, 150_000, int(rng.integers(50, 250)), dtype=np.int32)
            records.append(
                CallRecord(
                    id=f"chatcmpl-{len(episodes)}-{i}",
                    index=i,
                    prompt_ids=prompt,
                    prompt_source=TokenSource.VLLM,
                    choices=[
                        ChoiceRecord(
                            ids=out,
                            logprobs=-rng.random(len(out)).astype(np.float32),
                            versions=np.full(len(out), 3, np.int32),
                            finish_reason="stop",
                            message={"role": "assistant", "content": "x" * 40},
                            source=TokenSource.VLLM,
                        )
                    ],
                    request={"model": "m", "messages": [{"role": "user", "content": "y" * 80}]},
                    usage={"prompt_tokens": len(prompt), "completion_tokens": len(out)},
                    parent=i - 1 if i else None,
                )
            )
            n += len(prompt) + len(out)
            obs = rng.integers(0, 150_000, 30, dtype=np.int32)
            prompt = np.concatenate([prompt, out, obs])
        episodes.append(Episode(task_id=f"t{len(episodes)}", calls=records, reward=1.0))
    return episodes


def naive_pack(samples: list[Sample], pad_id: int = 0) -> dict[str, np.ndarray]:
    width = max(len(s.tokens) for s in samples)
    rows: dict[str, list[list[Any]]] = {
        "input_ids": [],
        "loss_mask": [],
        "logprobs": [],
        "versions": [],
    }
    for s in samples:
        pad = width - len(s.tokens)
        rows["input_ids"].append(s.tokens.tolist() + [pad_id] * pad)
        rows["loss_mask"].append(s.loss_mask.astype(int).tolist() + [0] * pad)
        rows["logprobs"].append(s.logprobs.tolist() + [0.0] * pad)
        rows["versions"].append(s.versions.tolist() + [-1] * pad)
    return {
        "input_ids": np.array(rows["input_ids"], np.int32),
        "loss_mask": np.array(rows["loss_mask"], np.int32),
        "logprobs": np.array(rows["logprobs"], np.float32),
        "versions": np.array(rows["versions"], np.int32),
    }


def concat_fields(samples: list[Sample]) -> None:
    for name in ("tokens", "loss_mask", "logprobs", "versions"):
        np.concatenate([getattr(s, name) for s in samples])


def _file_io(
    write: Callable[[], Any], read: Callable[[], Any], path: Path, tokens: int, repeat: int
) -> dict[str, float]:
    t_write = _best(write, repeat)
    size = path.stat().st_size
    t_read = _best(read, repeat)
    return {
        "write_tokens_per_s": round(tokens / t_write),
        "read_tokens_per_s": round(tokens / t_read),
        "write_MB_per_s": round(size / t_write / 1e6, 1),
        "read_MB_per_s": round(size / t_read / 1e6, 1),
        "bytes_per_token": round(size / tokens, 2),
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--tokens", type=int, default=1_000_000)
    ap.add_argument("--repeat", type=int, default=5)
    args = ap.parse_args()
    rng = np.random.default_rng(0)

    samples = make_samples(args.tokens, rng)
    n_tok = sum(len(s.tokens) for s in samples)
    to_areal(samples)  # warm up
    t_areal = _best(lambda: to_areal(samples), args.repeat)
    t_concat = _best(lambda: concat_fields(samples), args.repeat)
    t_naive = _best(lambda: naive_pack(samples), 1)
    a, b = to_areal(samples), naive_pack(samples)
    assert all(np.array_equal(a[k], b[k]) for k in b), "naive baseline disagrees"

    episodes = make_episodes(args.tokens, rng)
    ep_tok = sum(e.num_tokens for e in episodes)
    with tempfile.TemporaryDirectory() as tmp:
        pq_path, jl_path = Path(tmp) / "e.parquet", Path(tmp) / "e.jsonl"
        parquet = _file_io(
            lambda: write_parquet(episodes, pq_path),
            lambda: read_parquet(pq_path),
            pq_path,
            ep_tok,
            max(1, args.repeat // 2),
        )

        def write_jl() -> None:
            write_jsonl(episodes, jl_path, append=False)

        jsonl = _file_io(write_jl, lambda: read_jsonl(jl_path), jl_path, ep_tok, 1)

    areal_tps = n_tok / t_areal
    print(
        json.dumps(
            {
                "bench": "export",
                "cpus": os.cpu_count(),
                "areal": {
                    "tokens": n_tok,
                    "samples": len(samples),
                    "padded_shape": list(a["input_ids"].shape),
                    "tokens_per_s": round(areal_tps),
                    "seconds": round(t_areal, 4),
                    "baseline_concat_tokens_per_s": round(n_tok / t_concat),
                    "ratio_vs_concat": round(t_concat / t_areal, 3),
                    "baseline_naive_loop_tokens_per_s": round(n_tok / t_naive),
                    "speedup_vs_naive_loop": round(t_naive / t_areal, 1),
                    "target_20M_met": areal_tps >= 20e6,
                },
                "parquet": {"tokens": ep_tok, **parquet},
                "jsonl": {"tokens": ep_tok, **jsonl},
            }
        )
    )


if __name__ == "__main__":
    main()
