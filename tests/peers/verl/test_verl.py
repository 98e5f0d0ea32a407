"""verl 0.9.1's own code on `to_verl` output: DataProto, rewards, advantages.

Runs in the verl venv (tests/peers/setup.sh verl; tests/peers/run.sh runs it).
Every check uses verl's functions as its trainer calls them:
`DataProto.from_dict` (verl/protocol.py:493), `extract_reward`
(trainer/ppo/reward.py:160) and `compute_advantage`
(trainer/ppo/ray_trainer.py:187), against advantages computed by hand here.
"""

from __future__ import annotations

import os
import subprocess
import sys
from collections import defaultdict
from pathlib import Path

import numpy as np
import pytest
import torch
import verl  # noqa: F401  (the peer: a broken install fails this tier; tests/peers/conftest.py)
from verl import DataProto
from verl.trainer.config.algorithm import AlgoConfig
from verl.trainer.ppo.ray_trainer import compute_advantage
from verl.trainer.ppo.reward import extract_reward

import rollout.export.verl_advantage  # noqa: F401  (registers episode_grpo / episode_rloo)
from rollout.call_record import CallRecord, ChoiceRecord, TokenSource
from rollout.episode import Episode
from rollout.export import read_verl, to_verl, write_verl

pytestmark = pytest.mark.peers

EPS = 1e-6  # verl's default epsilon (core_algos.py:273)


def episode(task: str, sample: int, reward: float, turns: int = 2, drift: bool = False) -> Episode:
    """A `turns`-turn episode; with `drift` the last turn does not extend the others (2 rows)."""
    calls, prompt = [], [1, 2, 3 + sample]
    for t in range(turns):
        if drift and t == turns - 1:
            prompt = [1, 2, 90 + sample]  # re-rendered history: a new row
        ids = [10 + t, 11 + t]
        calls.append(
            CallRecord(
                prompt_ids=prompt,
                prompt_source=TokenSource.VLLM,
                choices=[ChoiceRecord(ids=ids, logprobs=[-0.5, -0.25], versions=[1, 1], source=TokenSource.VLLM)],
                parent=t - 1 if t else None,
            )
        )
        prompt = [*prompt, *ids, 7]  # the reply and one observation token
    return Episode(task_id=task, sample=sample, reward=reward, calls=calls)


REWARDS = {"a": [1.0, 0.0, 0.0, 1.0], "b": [0.5, 0.5, 1.0], "c": [0.0]}


def batch(uid: str = "task", drift: bool = False) -> tuple[list[Episode], dict]:
    eps = [
        episode(task, i, r, turns=1 + i % 3, drift=drift and (task, i) == ("a", 2))
        for task, rewards in REWARDS.items()
        for i, r in enumerate(rewards)
    ]
    with pytest.warns(UserWarning) if drift and uid == "task" else _nothing():
        out = to_verl(eps, uid=uid)  # type: ignore[arg-type]
    return eps, out


class _nothing:
    def __enter__(self) -> None:
        return None

    def __exit__(self, *exc: object) -> None:
        return None


def hand_advantages(estimator: str, norm_by_std: bool = True) -> dict[tuple[str, int], float]:
    """Per-episode GRPO / RLOO from REWARDS, by hand: one score per episode, grouped by task.
    GRPO: (s - mean) / (unbiased std + eps), mean 0 / std 1 for a group of one; RLOO:
    n / (n - 1) * (s - mean), s itself for a group of one (core_algos.py:268-333, :588-637)."""
    out = {}
    for task, scores in REWARDS.items():
        s = np.array(scores, dtype=np.float64)
        n = len(s)
        for i, score in enumerate(s):
            if estimator == "grpo":
                mean, std = (s.mean(), s.std(ddof=1)) if n > 1 else (0.0, 1.0)
                out[(task, i)] = (score - mean) / (std + EPS) if norm_by_std else score - mean
            else:
                out[(task, i)] = n / (n - 1) * (score - s.mean()) if n > 1 else score
    return out


def trainer_advantages(data: DataProto, estimator: str, config: AlgoConfig) -> torch.Tensor:
    """What verl's trainer does after the rollout (ray_trainer.py:1633-1660, reward on, no KL)."""
    reward, _ = extract_reward(data)
    data.batch["token_level_scores"] = reward
    data.batch["token_level_rewards"] = data.batch["token_level_scores"]
    data = compute_advantage(
        data, adv_estimator=estimator, norm_adv_by_std_in_grpo=config.norm_adv_by_std_in_grpo, config=config
    )
    return data.batch["advantages"]


def expected_rows(eps: list[Episode], data: DataProto, per_episode: dict[tuple[str, int], float]) -> torch.Tensor:
    by_uid = {ep.uid: (ep.task_id, ep.sample) for ep in eps}
    scalars = torch.tensor([per_episode[by_uid[e]] for e in data.non_tensor_batch["episode_ids"]], dtype=torch.float32)
    return scalars.unsqueeze(-1) * data.batch["response_mask"]


def test_dataproto_from_dict_takes_to_verl_as_written(tmp_path: Path) -> None:
    eps, out = batch(drift=True)
    data = DataProto.from_dict(**out)
    assert len(data) == len(out["non_tensors"]["uid"]) == 9  # 8 episodes, one split in two
    assert set(data.batch.keys()) == set(out["tensors"])
    for key, value in out["tensors"].items():
        assert torch.equal(data.batch[key], torch.from_numpy(value)), key
    assert data.batch["input_ids"].dtype == torch.int64 and data.batch["rm_scores"].dtype == torch.float32
    assert data.meta_info["num_multi_row_episodes"] == 1
    # What the trainer does with batches: concatenate, select, and round-trip the saved file.
    both = DataProto.concat([data, DataProto.from_dict(**batch(drift=True)[1])])
    assert len(both) == 18 and both.non_tensor_batch["uid"].shape == (18,)
    assert len(data.select_idxs([0, 2])) == 2
    write_verl(to_verl(eps, uid="episode"), tmp_path / "b.npz")
    loaded = DataProto.from_dict(**read_verl(tmp_path / "b.npz"))
    assert loaded.non_tensor_batch["uid"][0] == ("a", "a:0")
    assert torch.equal(loaded.batch["rm_scores"], data.batch["rm_scores"])


def test_rewards_reach_the_trainer_as_rm_scores() -> None:
    eps, out = batch()
    data = DataProto.from_dict(**out)
    reward, _ = extract_reward(data)  # the trainer's token_level_scores
    lengths = data.batch["response_mask"].shape[1] - (data.batch["responses"] == 0).sum(-1)
    for row, ep in enumerate(eps):  # one row per episode here
        assert reward[row].sum().item() == ep.reward
        assert reward[row, lengths[row] - 1].item() == ep.reward  # on the last response token
        assert torch.count_nonzero(reward[row]) <= 1


@pytest.mark.parametrize("estimator", ["grpo", "rloo"])
def test_one_row_per_episode_verl_advantages_are_per_episode(estimator: str) -> None:
    eps, out = batch()  # exact multi-turn: every episode is one row
    assert out["meta_info"]["num_multi_row_episodes"] == 0
    data = DataProto.from_dict(**out)
    got = trainer_advantages(data, estimator, AlgoConfig(adv_estimator=estimator))
    want = expected_rows(eps, data, hand_advantages(estimator))
    torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize(("estimator", "norm"), [("grpo", True), ("grpo", False), ("rloo", True)])
def test_episode_estimators_keep_split_episodes_whole(estimator: str, norm: bool) -> None:
    config = AlgoConfig(adv_estimator=f"episode_{estimator}", norm_adv_by_std_in_grpo=norm)
    eps, out = batch(uid="episode", drift=True)
    data = DataProto.from_dict(**out)
    got = trainer_advantages(data, f"episode_{estimator}", config)
    want = expected_rows(eps, data, hand_advantages(estimator, norm))
    torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-6)
    rows_of: dict[str, list[int]] = defaultdict(list)
    for row, e in enumerate(data.non_tensor_batch["episode_ids"]):
        rows_of[e].append(row)
    (split,) = [rows for rows in rows_of.values() if len(rows) > 1]
    first = [got[r][data.batch["response_mask"][r].bool()][0].item() for r in split]
    assert first[0] == first[1]  # both rows of the split episode share one advantage

    # verl's own estimator over the same rows (uid = task) counts that episode twice.
    _, by_task = batch(uid="task", drift=True)
    stock = trainer_advantages(DataProto.from_dict(**by_task), estimator, config)
    assert not torch.allclose(stock, want, atol=1e-4)


def test_episode_estimators_register_through_verls_external_modules() -> None:
    code = (  # registered by `import verl` alone, before anything of ours is imported
        "import verl\n"
        "from verl.trainer.ppo.core_algos import get_adv_estimator_fn\n"
        "grpo, rloo = get_adv_estimator_fn('episode_grpo'), get_adv_estimator_fn('episode_rloo')\n"
        "import rollout.export.verl_advantage as ours\n"
        "print(grpo is ours.episode_grpo, rloo is ours.episode_rloo)\n"
    )
    env = {**os.environ, "VERL_USE_EXTERNAL_MODULES": "rollout.export.verl_advantage"}
    proc = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert proc.stdout.split() == ["True", "True"]
