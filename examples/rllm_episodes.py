"""rLLM Episodes from a collection on the embedded server.

`rollout.export.to_rllm` turns each recorded episode into the dict rLLM's own
`Episode.to_dict()` writes (rllm/types.py at the pinned commit in
rollout/export/rllm.py): the Episode id is `"{task_id}:{sample}"`, one
trajectory ("agent") holds one step per call, and each step carries the exact
ids the server sampled in `model_output` (`prompt_ids`, `completion_ids`,
`logprobs`), which is what rLLM's verl transform reads, plus
`chat_completions` (the request's messages and the reply).
`trajectory_groups` groups them the way rLLM's GRPO does
(`TrajectoryGroup.group_id == "task_id:traj_name"`).

    python -m examples.rllm_episodes          # prints a summary line
    python -m examples.rllm_episodes out.jsonl  # also writes one Episode per line

In rLLM: `rllm.types.Episode.from_dict(d)` for each dict.
"""

from __future__ import annotations

import json
import sys
from collections import defaultdict
from typing import Any

from rollout import Episode
from rollout.collection import collect
from rollout.demo import AGENT, TASKS
from rollout.export import to_rllm


def collect_episodes(
    limit: int = 4, samples_per_task: int = 2, seed: int = 0, **settings: Any
) -> list[Episode]:
    """Collect the arithmetic agent on the embedded server, episodes sorted by (task, sample)."""
    options: dict[str, Any] = {
        "agent": AGENT,
        "tasks": str(TASKS),
        "limit": limit,
        "samples_per_task": samples_per_task,
        "seed": seed,
        "output": {"path": None},  # keep episodes in memory
        "progress": False,
        "backend": {"kind": "embedded", "sampling": {"temperature": 1.0, "max_tokens": 4}},
    }
    options.update(settings)
    summary = collect(**options)
    return sorted(summary.episodes or [], key=lambda ep: (ep.task_id, ep.sample))


def rllm_episodes(**options: Any) -> list[dict[str, Any]]:
    """rLLM Episode dicts of `collect_episodes(**options)`."""
    return to_rllm(collect_episodes(**options))


def trajectory_groups(episodes: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """rLLM `TrajectoryGroup`s: the trajectories of one task and role, across samples."""
    groups: dict[str, list[dict[str, Any]]] = defaultdict(list)
    for ep in episodes:
        task_id = ep["id"].split(":")[0]  # rLLM's Episode.task_id
        for traj in ep["trajectories"]:
            groups[f"{task_id}:{traj['name']}"].append(traj)
    out = []
    for group_id, trajectories in groups.items():
        versions = [
            s["weight_version"] for t in trajectories for s in t["steps"] if s["weight_version"] is not None
        ]
        out.append(
            {
                "trajectories": trajectories,
                "group_id": group_id,
                "weight_version": min(versions) if versions else None,
            }
        )
    return out


def main(argv: list[str] | None = None) -> dict[str, Any]:
    args = sys.argv[1:] if argv is None else argv
    episodes = rllm_episodes()
    if args:
        with open(args[0], "w", encoding="utf-8") as f:
            for ep in episodes:
                f.write(json.dumps(ep) + "\n")
    steps = [s for ep in episodes for t in ep["trajectories"] for s in t["steps"]]
    out = {
        "episodes": len(episodes),
        "ids": [ep["id"] for ep in episodes],
        "steps": len(steps),
        "groups": len(trajectory_groups(episodes)),
        "correct": sum(ep["is_correct"] for ep in episodes),
        "response_tokens": sum(len(s["response_ids"]) for s in steps),
    }
    print(json.dumps(out))
    return out


if __name__ == "__main__":
    main()
