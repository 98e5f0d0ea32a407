"""Proof that recorded data trains: collect, export, update, push weights, repeat.

`train` runs GRPO-style REINFORCE on the embedded numpy policy from `to_verl`
arrays alone; the on-policy checks (`check_on_policy`, `check_versions`) fail
loudly when a recorded id, logprob or version is off.
"""

from rollout.training.reinforce import (
    LOGPROB_TOLERANCE,
    check_on_policy,
    check_versions,
    grpo_gradient,
    plot_rewards,
    train,
)

__all__ = [
    "LOGPROB_TOLERANCE",
    "check_on_policy",
    "check_versions",
    "grpo_gradient",
    "plot_rewards",
    "train",
]
