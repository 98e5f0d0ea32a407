"""The verl trainer logs each iteration to wandb, MLflow and TensorBoard, offline; read back by each tool.

Runs in the verl venv (its requirements add the trackers, pinned as the trackers tier's).
"""

from __future__ import annotations

from pathlib import Path

import pytest

pytest.importorskip("verl", reason="peer tier: run tests/peers/run.sh (verl venv)")

from rollout.collection import load_tasks
from rollout.errors import ConfigError
from rollout.training import load_train_config, train_verl
from tests.peers.trackers.readers import (
    mlflow_history,
    mlflow_run,
    tb_scalars,
    tb_texts,
    wandb_history,
    wandb_run_dir,
)
from tests.peers.verl.test_train_verl import SMALL, even

pytestmark = pytest.mark.peers

TASKS = [task for _, task in load_tasks("examples/arithmetic.jsonl")][:6]
LOGGED = (
    "mean_reward", "reward_std", "pg_loss", "pg_clipfrac", "ppo_kl", "grad_norm", "entropy",
    "max_logprob_diff", "version", "collect_s", "export_s", "loss_s", "step_s", "push_s",
)  # fmt: skip


def test_verl_training_logs_every_iteration_to_all_three(tmp_path: Path) -> None:
    root = tmp_path / "tracking"
    history = train_verl(
        overrides=[
            *SMALL, "trainer.iterations=2", "trainer.target=null",
            "tracking.trackers=[wandb, mlflow, tensorboard]", f"tracking.dir={root}",
            "tracking.run_name=verl-1", "tracking.samples=2",
        ],
        tasks=TASKS, agent=even, log=lambda _: None,
    )  # fmt: skip
    assert len(history) == 2
    scalars = tb_scalars(root / "tensorboard" / "verl-1")
    for key in LOGGED:
        points = scalars[f"train/{key}"]
        assert [s for s, _ in points] == [0, 1], key
        assert [v for _, v in points] == [
            pytest.approx(h[key], rel=1e-6, abs=1e-7) for h in history
        ], key
    assert all(0 <= v <= 1e-5 for _, v in scalars["train/max_logprob_diff"])
    assert [v for _, v in scalars["collect/calls_as_tokens"]] == [
        24,
        24,
    ]  # the later turn of each episode
    assert [s for s, _ in tb_texts(root / "tensorboard" / "verl-1", "train/samples")] == [0, 1]

    client, run_id = mlflow_run(root, "verl-1")
    for key in LOGGED:
        assert mlflow_history(client, run_id, f"train/{key}") == [
            (i, h[key]) for i, h in enumerate(history)
        ]
    assert client.get_run(run_id).data.params["trainer.policy_loss"] == "vanilla"

    rows, config = wandb_history(wandb_run_dir(root))
    assert [(r["_step"], r["train/entropy"]) for r in rows if "train/entropy" in r] == [
        (i, h["entropy"]) for i, h in enumerate(history)
    ]
    assert config["trainer"]["adv_estimator"] == "episode_grpo"


def test_trackers_belong_in_the_top_level_block() -> None:
    with pytest.raises(ConfigError, match="top-level `tracking` block"):
        load_train_config(overrides=["collect.tracking.trackers=[tensorboard]"])
