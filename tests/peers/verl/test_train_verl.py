"""verl's update on our exports, with a real transformer served by the embedded server.

Runs in the verl venv (tests/peers/setup.sh verl; tests/peers/run.sh runs it):
torch 2.13.0 CPU, transformers 5.10.4, verl 0.9.1. One full iteration of
`rollout.training.verl_trainer` (collect -> to_verl -> verl's GRPO advantage
and policy loss -> AdamW step -> weights pushed through /update_weights),
and the checks that make it trustworthy: they fail on off-policy data.
The full run is examples/train_verl.py / benchmarks/bench_train_verl.py.
"""

from __future__ import annotations

import math

import numpy as np
import openai
import pytest
import torch
import verl  # noqa: F401  (the peer: a broken install fails this tier; tests/peers/conftest.py)
from verl.trainer.ppo.core_algos import compute_grpo_outcome_advantage

from rollout.collection import load_tasks
from rollout.embedded import EmbeddedServer, WeightPushError, push_weights
from rollout.embedded.policy import sampling_distribution
from rollout.embedded.torch_policy import TorchPolicy, TorchPolicyConfig, sampling_logprobs
from rollout.embedded.weights import read_weights_npz, weights_to_npz
from rollout.errors import OffPolicyError
from rollout.sample import assemble
from rollout.training import VerlTrainer

pytestmark = pytest.mark.peers

TASKS = [task for _, task in load_tasks("examples/arithmetic.jsonl")][:6]
SMALL = ["collect.samples_per_task=4", "trainer.mini_batches=2"]
"""A small batch (6 tasks x 4 samples, 2 optimizer steps): the loop, not the learning."""


async def even(task: dict, model) -> float:  # type: ignore[no-untyped-def]
    """Two turns; reward 1 when the last reply is an even number.

    The arithmetic task's untrained success rate (~1%) leaves a small batch
    with no reward at all, so no gradient; about half the replies here are
    even, so every group has advantages to step on.
    """
    messages = [{"role": "user", "content": f"Say an even number, task {task['id']}."}]
    for _ in range(2):
        reply = (await model.arun(messages)).choices[0].message.content or ""
        messages += [{"role": "assistant", "content": reply}, {"role": "user", "content": "Again."}]
    return float(reply.strip().isdigit() and int(reply) % 2 == 0)


@pytest.fixture(scope="module")
def trainer():
    with VerlTrainer(overrides=SMALL, tasks=TASKS, agent=even) as t:
        yield t


def test_one_full_iteration_trains_and_stays_on_policy(trainer: VerlTrainer) -> None:
    before = {k: v.copy() for k, v in trainer.policy.get_weights().items()}
    assert trainer.server.weight_version() == 0
    stats = trainer.iteration()

    assert stats["episodes"] == 24 and stats["rows"] == 24  # one exact row per episode
    assert stats["calls"] == 48 and stats["later_calls_as_messages"] == 0  # token mode
    assert stats["sampled_tokens"] == 48  # two one-token turns each
    assert 0 < stats["mean_reward"] < 1
    assert math.isfinite(stats["pg_loss"]) and math.isfinite(stats["grad_norm"])
    assert stats["grad_norm"] > 0
    after = trainer.policy.get_weights()
    moved = [k for k in before if not np.array_equal(before[k], after[k])]
    assert len(moved) == len(before)  # every tensor took the step
    # The recorded logprobs were the model's own, to float32 rounding.
    assert 0 <= stats["max_logprob_diff"] <= 1e-5
    # The server now serves the pushed weights, under the new version.
    assert trainer.version == 1 and trainer.server.weight_version() == 1
    for key in ("collect_s", "export_s", "loss_s", "step_s", "push_s"):
        assert stats[key] > 0

    # The next batch: every call carries version 1 (checked inside collect), and its
    # logprobs are the *updated* model's: the server loaded exactly the weights pushed.
    episodes = trainer.collect()
    assert {v for e in episodes for c in e.calls for ch in c.choices
            for v in ch.versions.to_array().tolist()} == {1}  # fmt: skip
    data = trainer.export(episodes)
    with torch.no_grad():
        recomputed, _ = trainer.logprobs(data)
    mask = data.batch["response_mask"].bool()
    diff = (recomputed - data.batch["rollout_log_probs"]).abs()[mask]
    assert float(diff.max()) <= 1e-5


def test_advantages_are_verls_grpo_over_episodes(trainer: VerlTrainer) -> None:
    data = trainer.export(trainer.collect())
    got = trainer.advantages(data)
    # One row per episode: verl's own GRPO grouped by task gives the same advantages.
    tasks = np.array([uid[0] for uid in data.non_tensor_batch["uid"]], dtype=object)
    want, _ = compute_grpo_outcome_advantage(data.batch["rm_scores"], data.batch["response_mask"], tasks)
    torch.testing.assert_close(got, want)
    rewards = data.batch["rm_scores"].sum(-1)
    if rewards.max() > rewards.min():  # some success in the batch: advantages are not all zero
        assert got.abs().sum() > 0


def test_token_mode_serves_later_turns_as_ids_one_exact_row_per_episode() -> None:
    # Token mode is on by default: every call after an episode's first reaches the torch
    # server's token route as ids (parent prompt + sampled ids + bridge). With two-token
    # replies, which message mode re-renders into other tokens ("1","2" -> "12"), each
    # episode is still one row, with no drift, and the update runs on it.
    two = [*SMALL, "collect.backend.sampling.max_tokens=2"]
    with VerlTrainer(overrides=two, tasks=TASKS, agent=even) as t:
        assert t.config.collect.backend.token_mode == "auto"
        episodes = t.collect()
        assert len(episodes) == 24
        for episode in episodes:
            assert [c.sent_as for c in episode.calls] == ["messages", "tokens"]
            assert all(c.fallback is None for c in episode.calls[1:])  # no fallback to messages
            assert all(ch.exact for c in episode.calls for ch in c.choices)
        result = assemble(episodes)
        assert result.num_drift == 0 and len(result) == len(episodes)  # one row per episode
        data = t.export(episodes)
        assert len(data) == 24
        with torch.no_grad():
            recomputed, _ = t.logprobs(data)
        mask = data.batch["response_mask"].bool()
        assert int(mask.sum()) > 48  # some replies took both tokens
        assert float((recomputed - data.batch["rollout_log_probs"]).abs()[mask].max()) <= 1e-5
        stats = t.iteration()
        assert stats["rows"] == stats["episodes"] == 24 and math.isfinite(stats["pg_loss"])
        assert stats["max_logprob_diff"] <= 1e-5 and t.server.weight_version() == 1


def test_an_episode_over_several_rows_keeps_one_advantage() -> None:
    # Two-token replies: sampled "1", "2" re-render as the one token "12", so a later
    # turn no longer extends the earlier ones and the episode takes several rows
    # (message mode; token mode would keep each episode one row).
    multi = [*SMALL, "collect.backend.sampling.max_tokens=2", "collect.backend.token_mode='off'"]
    with VerlTrainer(overrides=multi, tasks=TASKS, agent=even) as t:
        data = t.export(t.collect())
        advantages = t.advantages(data)
        episodes = data.non_tensor_batch["episode_ids"]
        assert len(data) > len(set(episodes))
        mask = data.batch["response_mask"].bool()
        per_episode: dict[str, set[float]] = {}
        for row, episode in enumerate(episodes):
            per_episode.setdefault(episode, set()).update(advantages[row][mask[row]].tolist())
        assert all(len(values) == 1 for values in per_episode.values())
        stats = t.iteration()  # and a whole iteration on such a batch
        assert stats["rows"] > stats["episodes"] and math.isfinite(stats["pg_loss"])
        assert stats["max_logprob_diff"] <= 1e-5 and t.server.weight_version() == 1


def test_off_policy_logprobs_and_versions_are_caught(trainer: VerlTrainer) -> None:
    url = trainer.server.url
    served = trainer.version
    other = TorchPolicy(TorchPolicyConfig(seed=123))  # same shapes, other weights
    push_weights(url, other.get_weights(), served)  # behind the trainer's back, same version
    try:
        with pytest.raises(OffPolicyError, match="recorded logprobs differ"):
            trainer.iteration(step=False)
        push_weights(url, trainer.policy.get_weights(), served + 5)  # right weights, wrong version
        with pytest.raises(OffPolicyError, match="versions"):
            trainer.collect()
    finally:
        push_weights(url, trainer.policy.get_weights(), served)
    stats = trainer.iteration(step=False)  # restored: on policy again, nothing stepped
    assert stats["max_logprob_diff"] <= 1e-5 and trainer.version == served


def test_weight_uploads_are_checked_against_the_models_own_spec() -> None:
    policy = TorchPolicy()
    shapes = policy.weight_shapes()
    assert "lm_head.weight" in shapes and "model.embed_tokens.weight" in shapes
    wire = read_weights_npz(weights_to_npz(policy.get_weights()), shapes)
    assert set(wire) == set(shapes)
    with EmbeddedServer(policy.copy()) as srv:
        weights = policy.get_weights()
        bad_shape = {**weights, "lm_head.weight": weights["lm_head.weight"][:-1]}
        with pytest.raises(WeightPushError, match=r"lm_head\.weight"):
            push_weights(srv.url, bad_shape, 1)
        missing = {k: v for k, v in weights.items() if k != "model.norm.weight"}
        with pytest.raises(WeightPushError, match="expected exactly the arrays"):
            push_weights(srv.url, missing, 1)
        assert srv.weight_version == 0  # refused uploads change nothing
        nan = {**weights, "model.norm.weight": np.full_like(weights["model.norm.weight"], np.nan)}
        with pytest.raises(WeightPushError, match="non-finite"):
            push_weights(srv.url, nan, 1)
        assert push_weights(srv.url, TorchPolicy(TorchPolicyConfig(seed=7)).get_weights(), 3) == 3
        assert srv.weight_version == 3


@pytest.fixture(scope="module")
def served():
    policy = TorchPolicy(TorchPolicyConfig(seed=3))
    with EmbeddedServer(policy.copy()) as srv:
        yield policy, srv


MESSAGES = [{"role": "user", "content": "What is 12 + 7?"}]


def test_served_replies_are_reproducible_and_exact(served: tuple[TorchPolicy, EmbeddedServer]) -> None:
    policy, srv = served
    client = openai.OpenAI(base_url=srv.base_url, api_key="unused")

    def ask(seed: int) -> openai.types.chat.ChatCompletion:
        return client.chat.completions.create(
            model="tiny", messages=MESSAGES, seed=seed, max_tokens=6, temperature=0.8, top_p=0.9,
            logprobs=True, top_logprobs=3, extra_body={"return_token_ids": True, "ignore_eos": True},
        )  # fmt: skip

    a, b, c = ask(1), ask(1), ask(2)
    ids_a = a.choices[0].token_ids  # type: ignore[attr-defined]
    assert ids_a == b.choices[0].token_ids and len(ids_a) == 6  # type: ignore[attr-defined]
    assert ids_a != c.choices[0].token_ids  # type: ignore[attr-defined]
    assert a.weight_version == 0  # type: ignore[attr-defined]
    served_lp = [t.logprob for t in a.choices[0].logprobs.content]  # type: ignore[union-attr]
    # The server's numbers are the model's sampling distribution, token by token.
    context = list(a.prompt_token_ids)  # type: ignore[attr-defined]
    for tok, lp in zip(ids_a, served_lp, strict=True):
        assert lp == policy.distribution(context, 0.8, 0.9).logprob_of(tok)
        context.append(tok)

    # Token mode: the generate route samples the same tokens and logprobs from the same ids.
    import httpx

    gen = httpx.post(f"{srv.url}/inference/v1/generate", timeout=30, json={
        "token_ids": a.prompt_token_ids,  # type: ignore[attr-defined]
        "sampling_params": {"seed": 1, "max_tokens": 6, "temperature": 0.8, "top_p": 0.9,
                            "logprobs": 0, "ignore_eos": True},
    }).json()  # fmt: skip
    choice = gen["choices"][0]
    assert choice["token_ids"] == ids_a
    assert [e["logprob"] for e in choice["logprobs"]["content"]] == served_lp
    assert choice["weight_versions"] == [{"version": "0", "start": 0, "end": 6}]


@pytest.mark.parametrize(("temperature", "top_p"), [(1.0, 1.0), (0.7, 0.8), (1.3, 0.5)])
def test_training_logprobs_match_the_sampling_distribution(temperature: float, top_p: float) -> None:
    """The trainer's differentiable logprobs (batched, padded) equal the server's numpy ones."""
    policy = TorchPolicy(TorchPolicyConfig(seed=5))
    rng = np.random.default_rng(0)
    prompts = [rng.integers(0, 100_000, size=n).tolist() for n in (3, 9, 5)]
    prompts[0][-1] = 100258  # a template special has its own row
    rows = []
    for prompt in prompts:
        tokens, lps, context = [], [], list(prompt)
        for _ in range(4):
            tok, lp, _ = policy.sample_next(context, rng, temperature, top_p)
            tokens.append(tok), lps.append(lp), context.append(tok)
        rows.append((prompt, tokens, lps))
    width_p = max(len(p) for p, _, _ in rows)
    ids = torch.zeros(3, width_p + 4, dtype=torch.long)
    att = torch.zeros_like(ids)
    for i, (p, toks, _) in enumerate(rows):
        ids[i, width_p - len(p) : width_p] = torch.tensor(p)
        ids[i, width_p:] = torch.tensor(toks)
        att[i, width_p - len(p) :] = 1
    pos = (att.cumsum(-1) - 1).clamp(min=0) * att
    got, entropy = policy.response_logprobs(ids, att, pos, ids[:, width_p:], temperature, top_p)
    want = torch.tensor([lps for _, _, lps in rows], dtype=torch.float32)
    assert float((got - want).abs().max().detach()) < 1e-5
    assert bool((entropy > 0).all()) and float(entropy.detach().max()) <= math.log(policy.vocab_size) + 1e-4
    (got.sum() + entropy.sum()).backward()  # differentiable; padding makes no NaN gradients
    assert all(torch.isfinite(p.grad).all() for p in policy.parameters() if p.grad is not None)


def test_torch_top_p_keeps_the_same_nucleus_as_numpy() -> None:
    logits = torch.tensor([[2.0, 1.0, 1.0, 0.5, -1.0]])
    for temperature, top_p in [(1.0, 0.5), (1.0, 0.9), (0.5, 0.6), (2.0, 0.99)]:
        ours = sampling_logprobs(logits, temperature, top_p)[0]
        ref = sampling_distribution(logits[0].double().numpy(), np.arange(5), temperature, top_p)
        kept = torch.isfinite(ours).nonzero().flatten().tolist()
        assert sorted(kept) == sorted(ref.token_ids.tolist())
        for tok in kept:
            assert abs(float(ours[tok]) - ref.logprob_of(tok)) < 1e-6


def test_train_config_loads_as_the_collect_config_does(tmp_path) -> None:  # type: ignore[no-untyped-def]
    """One loader: bad YAML and unknown keys are one-line ConfigErrors (with the closest key),
    and settings go by name as `train(config, lr=..., samples_per_task=...)` takes them."""
    from rollout.errors import ConfigError
    from rollout.training import load_train_config

    bad = tmp_path / "bad.yaml"
    bad.write_text("trainer: {lr: [\n")
    with pytest.raises(ConfigError, match="is not valid YAML"):
        load_train_config(bad)
    with pytest.raises(ConfigError, match=r"did you mean 'trainer\.lr'"):
        load_train_config(None, ["trainer.lrr=1"])
    config = load_train_config(None, SMALL, lr=1e-3, iterations=2, samples_per_task=2)
    assert (config.trainer.lr, config.trainer.iterations, config.collect.samples_per_task) == (1e-3, 2, 2)
    assert config.trainer.mini_batches == 2  # the overrides still hold
    from rollout.cli import build_parser

    subparsers = next(a for a in build_parser()._actions if a.dest == "command")
    example = subparsers.choices["train"].format_help().split("--trainer verl: ")[1].split(")")[0]
    load_train_config(None, [example])  # the verl trainer takes the example `rollout train -h` gives
