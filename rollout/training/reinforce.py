"""Proof that the recorded data trains: GRPO-style REINFORCE for the embedded policy.

Each iteration collects a batch on the embedded server, exports it with
`to_verl`, and computes the update from those arrays alone (the trainer's
only access to the server is pushing weights). Before updating it checks that
the data is on-policy: every sampled token's recorded logprob equals the
trainer's recomputed one (max abs diff <= 1e-5) and every call carries the
version just pushed. A wrong id, mask, logprob, version or reward anywhere in
the chain breaks either the checks or the learning curve.
"""

from __future__ import annotations

import time
from collections import defaultdict
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

import numpy as np

from rollout.demo import TRAIN_CONFIG
from rollout.embedded.policy import Policy
from rollout.episode import Episode
from rollout.errors import OffPolicyError
from rollout.export import to_verl
from rollout.tracking import TrainLog, open_tracker

LOGPROB_TOLERANCE = 1e-5


def _rows(batch: dict[str, Any]) -> Iterable[tuple[str, np.ndarray, np.ndarray, np.ndarray, np.ndarray, float]]:
    """(uid, prompt ids, response ids, response mask, recorded logprobs, reward) per row."""
    b = batch["tensors"]
    width_p = b["prompts"].shape[1]
    for i, uid in enumerate(batch["non_tensors"]["uid"]):
        att = b["attention_mask"][i].astype(bool)
        prompt = b["prompts"][i][att[:width_p]]
        rlen = int(att[width_p:].sum())
        yield (
            str(uid),
            prompt,
            b["responses"][i, :rlen],
            b["response_mask"][i, :rlen].astype(bool),
            b["rollout_log_probs"][i, :rlen],
            float(b["rm_scores"][i].sum()),
        )


def check_on_policy(policy: Policy, batch: dict[str, Any], temperature: float, top_p: float) -> float:
    """Max |recorded - recomputed| logprob over sampled tokens; raises past the tolerance."""
    worst = 0.0
    for _, prompt, response, mask, recorded, _ in _rows(batch):
        recomputed = policy.logprobs(prompt.tolist(), response.tolist(), temperature, top_p)
        if mask.any():
            worst = max(worst, float(np.max(np.abs(recomputed[mask] - recorded[mask]))))
    if not worst <= LOGPROB_TOLERANCE:
        raise OffPolicyError(f"recorded logprobs differ from the policy's by {worst:.3g}")
    return worst


def check_versions(episodes: list[Episode], version: int) -> None:
    for ep in episodes:
        for call in ep.calls:
            for choice in call.choices:
                seen = set(choice.versions.to_array().tolist())
                if seen - {version}:
                    raise OffPolicyError(
                        f"episode {ep.uid} call {call.index} has versions {sorted(seen)}, expected {version}"
                    )


def grpo_gradient(
    policy: Policy, batch: dict[str, Any], temperature: float, top_p: float
) -> tuple[dict[str, np.ndarray], float]:
    """REINFORCE gradient with group-mean baselines (groups = task ids), and the mean reward."""
    rows = list(_rows(batch))
    groups: dict[str, list[float]] = defaultdict(list)
    for uid, *_, reward in rows:
        groups[uid].append(reward)
    baseline = {uid: float(np.mean(r)) for uid, r in groups.items()}
    items = [
        (prompt.tolist(), response.tolist(), (reward - baseline[uid]) * mask.astype(np.float64))
        for uid, prompt, response, mask, _, reward in rows
    ]
    # Mean over each group, summed over groups: a task's step size does not
    # shrink as more tasks share the batch.
    grads = {
        k: v * len(groups) for k, v in policy.policy_gradient(items, temperature, top_p).items()  # type: ignore[arg-type]
    }
    # The bias is shared by every context; GRPO's zero advantage on all-fail
    # groups never pushes it back, so updating it collapses all tasks onto the
    # first answers learned. Keep it at its initial value.
    grads["b"] = np.zeros_like(grads["b"])
    mean_reward = float(np.mean([r[-1] for r in rows])) if rows else 0.0
    return grads, mean_reward


def train(
    config: Any = TRAIN_CONFIG,
    *,
    iterations: int = 30,
    lr: float = 12.5,
    target: float | None = 0.8,
    tasks: Any = None,
    log: Callable[[str], None] = print,
    plot: str | Path | None = None,
    save: str | Path | None = None,
    **settings: Any,
) -> list[dict[str, Any]]:
    """Collect, check, update, push; repeat. Returns one stats dict per iteration.

    `save`: write the trained policy there (`Policy.load`, `rollout serve --weights`).
    """
    from rollout.collection import Collector
    from rollout.collection.run import require_tasks
    from rollout.embedded import push_weights

    settings.setdefault("output", {"path": None})
    settings.setdefault("progress", False)
    history: list[dict[str, Any]] = []
    with Collector(config, **settings) as collector:
        cfg = collector.config
        if cfg.backend.kind != "embedded":
            raise ValueError("train() trains the embedded policy: backend.kind must be 'embedded'")
        sampling = cfg.backend.sampling
        temperature = float(sampling.get("temperature", 1.0))
        top_p = float(sampling.get("top_p", 1.0))
        embedded = cfg.backend.embedded
        policy = Policy.load(embedded.weights) if embedded.weights else Policy(seed=embedded.seed)
        url = collector.urls[0]
        source = require_tasks(tasks, cfg)
        run = {**cfg.model_dump(mode="json"), "trainer": {"iterations": iterations, "lr": lr, "target": target}}
        tracker = open_tracker(cfg.tracking, "train", run)
        tracked = TrainLog(tracker, cfg.tracking) if tracker is not None else None
        try:
            for it in range(iterations):
                version = it  # the weights pushed after iteration it-1
                start = time.perf_counter()
                episodes = collector.run_batch(source)
                check_versions(episodes, version)
                collect_s, start = time.perf_counter() - start, time.perf_counter()
                batch = to_verl(episodes)
                export_s, start = time.perf_counter() - start, time.perf_counter()
                max_diff = check_on_policy(policy, batch, temperature, top_p)
                grads, mean_reward = grpo_gradient(policy, batch, temperature, top_p)
                loss_s = time.perf_counter() - start
                rewards = [e.reward or 0.0 for e in episodes]
                stats: dict[str, Any] = {
                    "iteration": it,
                    "version": version,
                    "episodes": len(episodes),
                    "mean_reward": float(np.mean(rewards)),
                    "reward_std": float(np.std(rewards)),
                    "sample_mean_reward": mean_reward,
                    "max_logprob_diff": max_diff,
                    "drift_rows": int(batch["tensors"]["prompts"].shape[0]) - len(episodes),
                    "collect_s": collect_s,
                    "export_s": export_s,
                    "loss_s": loss_s,  # the on-policy check and the gradient (REINFORCE has no loss value)
                }
                history.append(stats)
                log(
                    f"iter {it:3d}  version {version:3d}  mean reward {stats['mean_reward']:.3f}  "
                    f"max |dlogp| {max_diff:.1e}"
                )
                done = target is not None and stats["mean_reward"] >= target
                if not done:
                    start = time.perf_counter()
                    policy.apply_gradient(grads, lr)
                    stats["step_s"], start = time.perf_counter() - start, time.perf_counter()
                    weights, pushed = policy.get_weights(), it + 1
                    collector.set_policy_version(
                        pushed, hook=lambda w=weights, v=pushed: push_weights(url, w, v)  # type: ignore[misc]
                    )
                    stats["push_s"] = time.perf_counter() - start
                if tracked is not None:
                    tracked.iteration(stats, episodes)
                if done:
                    break
        finally:
            if tracked is not None:
                tracked.close()
    if save is not None:
        Path(save).parent.mkdir(parents=True, exist_ok=True)
        policy.save(save)
        log(f"wrote {save} (the trained policy: rollout serve --weights {save})")
    if plot is not None:
        plot_rewards(history, plot, log)
    return history


def plot_rewards(history: list[dict[str, Any]], path: str | Path, log: Callable[[str], None] = print) -> bool:
    """Write a PNG of the reward curve when matplotlib is installed."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        log("no plot written: matplotlib is missing (pip install 'rollout-compat[plot]')")
        return False
    fig, ax = plt.subplots(figsize=(6, 3.5))
    ax.plot([h["iteration"] for h in history], [h["mean_reward"] for h in history], marker="o")
    ax.set_xlabel("iteration")
    ax.set_ylabel("mean reward")
    ax.set_ylim(0, 1)
    ax.grid(alpha=0.3)
    fig.tight_layout()
    Path(path).parent.mkdir(parents=True, exist_ok=True)  # runs/ on a fresh checkout
    fig.savefig(path, dpi=100)
    plt.close(fig)
    log(f"wrote {path}")
    return True
