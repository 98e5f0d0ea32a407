"""Proof that recorded data trains: collect, export, update, push weights, repeat.

`train` runs GRPO-style REINFORCE on the embedded numpy policy from `to_verl`
arrays alone; the on-policy checks (`check_on_policy`, `check_versions`) fail
loudly when a recorded id, logprob or version is off.

`train_verl` (and `VerlTrainer`, `load_train_config`) trains a small
transformer with verl's own advantage and policy-loss functions on the same
exports. They need torch, transformers and verl, so they live in
`rollout.training.verl_trainer`, are loaded only when first asked for here
(``from rollout.training import train_verl``), and are not in ``__all__``: a
star import, or listing this package, must work without them installed.
"""

from rollout.training.reinforce import (
    LOGPROB_TOLERANCE,
    check_on_policy,
    check_versions,
    grpo_gradient,
    plot_rewards,
    train,
)

_VERL = ("VerlTrainer", "load_train_config", "train_verl")


def __getattr__(name: str) -> object:
    if name in _VERL:
        from rollout.training import verl_trainer

        return getattr(verl_trainer, name)
    raise AttributeError(f"module 'rollout.training' has no attribute {name!r}")


__all__ = [
    "LOGPROB_TOLERANCE",
    "check_on_policy",
    "check_versions",
    "grpo_gradient",
    "plot_rewards",
    "train",
]
