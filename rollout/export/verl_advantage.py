"""Per-episode GRPO and RLOO for verl's trainer: all rows of an episode share one advantage.

verl groups rows on `non_tensor_batch["uid"]`, and an advantage estimator
sees nothing else about them: `compute_advantage` calls it as
`fn(token_level_rewards=, response_mask=, config=, index=uid)`
(verl 0.9.1 trainer/ppo/ray_trainer.py:248-279). `to_verl(..., uid="episode")`
puts `(task_id, episode_id)` pairs there. These estimators then do what verl's
own multi-output path does for agent-loop sessions
(`compute_advantage_for_multi_trajectories`, trainer/ppo/v1/utils.py:148-217):
score each episode by its last row, run verl's own GRPO / RLOO
(core_algos.py:268 / :588) on one score per episode grouped by task, and give
every row of the episode that value times its `response_mask`. So a
one-row-per-episode batch gets exactly verl's `grpo` / `rloo`, and an episode
split over several rows still counts once. A plain (non-pair) uid makes each
row its own episode.

Importing this module registers `episode_grpo` and `episode_rloo` with verl
(it needs verl and torch). In verl's trainer process:
`VERL_USE_EXTERNAL_MODULES=rollout.export.verl_advantage` and
`algorithm.adv_estimator=episode_grpo` (verl/__init__.py:47-51 imports it).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np
import torch
from verl.trainer.ppo.core_algos import (
    compute_grpo_outcome_advantage,
    compute_rloo_outcome_advantage,
    register_adv_est,
)


def _episodes(index: Any) -> tuple[list[int], np.ndarray, list[int]]:
    """Last row of each episode, each episode's group (task), and each row's episode."""
    last: dict[Any, int] = {}
    group: dict[Any, Any] = {}
    for row, key in enumerate(index):
        episode, task = (tuple(key), key[0]) if isinstance(key, tuple) else (key, key)
        last[episode] = row
        group[episode] = task
    position = {episode: i for i, episode in enumerate(last)}
    rows = [position[tuple(k) if isinstance(k, tuple) else k] for k in index]
    tasks = np.empty(len(last), dtype=object)
    tasks[:] = list(group.values())
    return list(last.values()), tasks, rows


def _per_episode(
    estimator: Callable[..., tuple[torch.Tensor, torch.Tensor]],
    token_level_rewards: torch.Tensor,
    response_mask: torch.Tensor,
    index: Any,
    **options: Any,
) -> tuple[torch.Tensor, torch.Tensor]:
    last, tasks, rows = _episodes(index)
    scores = token_level_rewards.sum(dim=-1)[last].unsqueeze(-1)  # one [E, 1] score per episode
    advantage, _ = estimator(
        token_level_rewards=scores, response_mask=torch.ones_like(scores), index=tasks, **options
    )
    out = advantage[:, 0][rows].unsqueeze(-1) * response_mask
    return out, out


def _over_episodes(estimator: Callable[..., Any], grpo: bool) -> Callable[..., Any]:
    """`estimator` run over episodes, with the keywords verl passes (ray_trainer.py:248-279)."""

    def estimate(
        token_level_rewards: torch.Tensor,
        response_mask: torch.Tensor,
        index: Any,
        epsilon: float = 1e-6,
        config: Any = None,
        **_: Any,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        options: dict[str, Any] = {"epsilon": epsilon}
        if grpo:  # verl's GRPO reads this from algorithm config (Dr.GRPO when False)
            options["norm_adv_by_std_in_grpo"] = (
                True if config is None else bool(config.get("norm_adv_by_std_in_grpo", True))
            )
        return _per_episode(estimator, token_level_rewards, response_mask, index, **options)

    return estimate


episode_grpo = register_adv_est("episode_grpo")(_over_episodes(compute_grpo_outcome_advantage, True))
"""verl's GRPO over episodes: (score - mean) / (std + eps) per task, or score - mean."""

episode_rloo = register_adv_est("episode_rloo")(_over_episodes(compute_rloo_outcome_advantage, False))
"""verl's RLOO over episodes: n / (n - 1) * (score - group mean) per task."""
