"""The whole chain trains: collect on the embedded server, export, update, push, repeat."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from rollout.collection import Collector, load_tasks
from rollout.embedded import Policy
from rollout.errors import OffPolicyError
from rollout.export import to_verl
from rollout.training import (
    LOGPROB_TOLERANCE,
    check_on_policy,
    check_versions,
    train,
)

TASKS = [task for _, task in load_tasks("examples/arithmetic.jsonl")][:8]


def test_training_reaches_target_deterministically() -> None:
    lines: list[str] = []
    history = train(
        "configs/train_tiny.yaml", iterations=30, tasks=TASKS, samples_per_task=16, log=lines.append
    )
    rewards = [h["mean_reward"] for h in history]
    assert rewards[0] < 0.1  # the untrained baseline
    assert rewards[-1] >= 0.8
    # On-policy every iteration: recorded logprobs equal recomputed ones.
    assert all(h["max_logprob_diff"] <= LOGPROB_TOLERANCE for h in history)
    assert [h["version"] for h in history] == list(range(len(history)))
    assert len(lines) == len(history)


def test_logprob_equality_and_version_checks_catch_off_policy_data() -> None:
    with Collector("configs/train_tiny.yaml", samples_per_task=2) as collector:
        episodes = collector.run_batch(TASKS[:4])
    batch = to_verl(episodes)
    policy = Policy(seed=0)  # the server's initial policy
    assert check_on_policy(policy, batch, 1.0, 1.0) <= LOGPROB_TOLERANCE
    check_versions(episodes, 0)
    with pytest.raises(OffPolicyError):
        check_versions(episodes, 1)
    other = Policy(seed=1)  # different weights: recorded logprobs no longer match
    with pytest.raises(OffPolicyError):
        check_on_policy(other, batch, 1.0, 1.0)
    # Sampled tokens are exactly those the server reported, mask 1 only on them.
    mask = batch["tensors"]["response_mask"].astype(bool)
    assert int(mask.sum()) == sum(len(c.choices[0].ids) for e in episodes for c in e.calls)
    assert np.all(batch["tensors"]["rollout_log_probs"][~mask] == 0)


def test_rollout_train_in_a_fresh_directory_writes_its_plot(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """A fresh checkout has no runs/: the default plot path's folder is made, not a crash."""
    pytest.importorskip("matplotlib")  # the plot extra; without it no plot is written
    from rollout.cli import main

    monkeypatch.chdir(tmp_path)
    code = main(["train", "--iterations", "1", "--target", "0", "samples_per_task=2", "limit=4"])
    assert code == 0, capsys.readouterr().err
    assert (tmp_path / "runs" / "train_tiny.png").stat().st_size > 0
