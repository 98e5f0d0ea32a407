"""The arithmetic demo that ships with the package: an agent, its tasks, the training config.

`rollout collect` and `rollout train` with no config run it, so an installed
rollout works without a repository checkout. The library has no default agent
or tasks: the CLI hands these over (the training configs here name no tasks;
`rollout train` passes `TASKS`). The repository's `configs/`
and `examples/` are the templates to copy for your own agent.
"""

from __future__ import annotations

from pathlib import Path

HERE = Path(__file__).resolve().parent

AGENT = "rollout.demo.arithmetic:episode"
"""Import path of the demo agent (a multi-turn `episode(task, model)`)."""

TASKS = HERE / "arithmetic.jsonl"
"""48 addition tasks, one JSON object per line: id, a, b, answer."""

COLLECT = {"agent": AGENT, "tasks": str(TASKS)}
"""What `rollout collect` without --config runs (the library itself has no default agent or tasks)."""

TRAIN_CONFIG = HERE / "train_tiny.yaml"
"""The config `rollout train` uses by default."""

TRAIN_VERL_CONFIG = HERE / "train_verl.yaml"
"""The config `rollout train --trainer verl` uses by default (a transformer, verl's update)."""

__all__ = ["AGENT", "COLLECT", "TASKS", "TRAIN_CONFIG", "TRAIN_VERL_CONFIG"]
