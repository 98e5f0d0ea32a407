"""The full verl run: a tiny transformer trained by verl's update on our exports, offline.

Prints ONE JSON line: the reward curve (initial -> final, iterations, wall
time), each iteration's max |recorded - recomputed| logprob (float32), and the
seconds per iteration split into collect / export / loss / step / weight push.
The baseline, measured in the same run on the same batch: one collection by
the numpy trainer's setup (`rollout train`: the numpy policy, served in
process), so `collect_vs_numpy` says what serving a transformer costs.
Writes the reward curve (PNG, needs matplotlib) and the per-iteration stats.

Runs in an environment with torch, transformers and verl (the verl peer venv:
tests/peers/setup.sh verl):

    python benchmarks/bench_train_verl.py [--plot runs/train_verl.png] [key=value ...]
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np

from rollout.collection import Collector
from rollout.demo import TASKS
from rollout.training import load_train_config, train_verl


def numpy_collect_s(config) -> float:  # type: ignore[no-untyped-def]
    """One batch with the numpy policy served in process (what `rollout train` does)."""
    with Collector(config.collect) as collector:
        start = time.perf_counter()
        collector.run_batch(config.collect.tasks or str(TASKS))
        return time.perf_counter() - start


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--config", help="default: the shipped configs/train_verl.yaml")
    parser.add_argument("--plot", default="runs/train_verl.png")
    parser.add_argument("--history", default="runs/train_verl.json")
    parser.add_argument("overrides", nargs="*", help="key=value, e.g. trainer.iterations=5")
    args = parser.parse_args(argv)
    config = load_train_config(args.config, args.overrides)
    baseline = numpy_collect_s(config)
    lines: list[str] = []

    def log(line: str) -> None:  # progress on stderr; stdout keeps the one JSON line
        lines.append(line)
        print(line, file=sys.stderr, flush=True)

    start = time.perf_counter()
    history = train_verl(config, plot=args.plot, log=log, tasks=config.collect.tasks or str(TASKS))
    wall = time.perf_counter() - start
    Path(args.history).parent.mkdir(parents=True, exist_ok=True)
    Path(args.history).write_text(json.dumps(history, indent=1))

    def mean(key: str) -> float:
        return round(float(np.mean([h[key] for h in history])), 3)

    rewards = [round(h["mean_reward"], 4) for h in history]
    target = config.trainer.target
    report = {
        "benchmark": "train_verl",
        "model": lines[0].removeprefix("model: "),
        "episodes_per_iteration": history[0]["episodes"],
        "iterations": len(history),
        "initial_reward": rewards[0],
        "final_reward": rewards[-1],
        "target": target,
        "reached": target is not None and rewards[-1] >= target,
        "wall_s": round(wall, 1),
        "per_iteration_s": {k: mean(f"{k}_s") for k in ("collect", "export", "loss", "step", "push", "total")},
        "numpy_collect_s": round(baseline, 3),
        "collect_vs_numpy": round(mean("collect_s") / baseline, 2),
        "max_logprob_diff": max(h["max_logprob_diff"] for h in history),
        "rows_equal_episodes": all(h["rows"] == h["episodes"] for h in history),
        "calls": sum(h["calls"] for h in history),
        "later_calls_as_messages": sum(h["later_calls_as_messages"] for h in history),
        "max_logprob_diff_per_iteration": [float(f"{h['max_logprob_diff']:.3g}") for h in history],
        "rewards": rewards,
    }
    print(json.dumps(report))


if __name__ == "__main__":
    main()
