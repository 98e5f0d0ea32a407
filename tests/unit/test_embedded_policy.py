"""The embedded numpy policy, with no server involved."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest

from rollout.embedded import END_ID, ChatTemplate, Policy, PolicyConfig, get_encoding
from rollout.embedded.policy import OUTPUT_WORDS
from rollout.embedded.weights import read_weights_npz, weights_to_npz

TEMPLATE = ChatTemplate()


def prompt(text: str) -> list[int]:
    return TEMPLATE.render([{"role": "user", "content": text}])


def test_output_vocabulary_is_single_canonical_tokens() -> None:
    enc = get_encoding()
    policy = Policy()
    assert policy.vocab_size == len(OUTPUT_WORDS) + 1
    assert int(policy.vocab_ids[-1]) == END_ID
    for word, tok in zip(OUTPUT_WORDS, policy.vocab_ids[:-1], strict=True):
        assert enc.encode(word) == [int(tok)]
        assert enc.decode([int(tok)]) == word
    assert [enc.encode(str(i)) for i in (0, 7, 42, 199)] == [[15], [22], [2983], [2550]]


def test_rejects_multi_token_words() -> None:
    with pytest.raises(ValueError, match="single cl100k token"):
        Policy(PolicyConfig(words=("hello world",)))


def test_same_seed_same_weights_and_tokens() -> None:
    a, b = Policy(seed=3), Policy(seed=3)
    assert np.array_equal(a.W, b.W)
    assert not np.array_equal(a.W, Policy(seed=4).W)
    p = prompt("hello")
    out_a = a.generate(p, 20, np.random.default_rng(11), 0.8, 0.95)
    out_b = b.generate(p, 20, np.random.default_rng(11), 0.8, 0.95)
    assert out_a == out_b
    assert len(out_a[0]) >= 1


@pytest.mark.parametrize(("temperature", "top_p"), [(1.0, 1.0), (0.7, 0.9), (1.5, 0.3), (0.0, 1.0)])
def test_generated_logprobs_equal_recomputed(temperature: float, top_p: float) -> None:
    policy = Policy(seed=1)
    p = prompt("What is 2+3?")
    tokens, lps = policy.generate(p, 25, np.random.default_rng(5), temperature, top_p)
    again = policy.logprobs(p, tokens, temperature, top_p)
    assert np.all(np.abs(again - np.asarray(lps)) <= 1e-6)
    if temperature == 0:
        assert np.all(again == 0.0)


def test_distribution_is_normalised_and_truncated() -> None:
    policy = Policy(seed=2)
    ctx = prompt("x")
    full = policy.distribution(ctx, 1.0, 1.0)
    assert full.token_ids.size == policy.vocab_size
    assert math.isclose(float(np.exp(full.logprobs).sum()), 1.0, abs_tol=1e-12)
    assert np.all(np.diff(full.logprobs) <= 0)
    nucleus = policy.distribution(ctx, 1.0, 0.5)
    assert 1 <= nucleus.token_ids.size < policy.vocab_size
    assert math.isclose(float(np.exp(nucleus.logprobs).sum()), 1.0, abs_tol=1e-12)
    # Smallest prefix whose (untruncated) mass reaches top_p.
    mass = np.exp(full.logprobs[: nucleus.token_ids.size])
    assert mass.sum() >= 0.5 > mass[:-1].sum()
    outside = int(full.token_ids[-1])
    assert policy.logprobs(ctx, [outside], 1.0, 0.5)[0] == -np.inf
    assert policy.logprobs(ctx, [9999], 1.0, 1.0)[0] == -np.inf  # not in the vocabulary


def test_context_features_see_the_question() -> None:
    policy = Policy()
    ping, pong = policy.features(prompt("ping")), policy.features(prompt("pong"))
    # Both features depend on the question, so no row is shared by all prompts.
    assert ping[0] != pong[0] and ping[1] != pong[1]
    assert policy.features(prompt("ping")) == ping


def test_gradient_matches_finite_differences() -> None:
    policy = Policy(seed=4)
    ctx = prompt("grad")
    completion = [int(policy.vocab_ids[10]), int(policy.vocab_ids[3]), END_ID]
    weights = np.array([1.0, -0.5, 2.0])
    t, p = 0.9, 0.97

    def objective(pol: Policy) -> float:
        return float(np.dot(weights, pol.logprobs(ctx, completion, t, p)))

    grads = policy.grad_logprob(ctx, completion, weights, t, p)
    eps = 1e-6
    f_local, f_msg = policy.features(ctx)
    for name, index in (
        ("b", (10,)),
        ("b", (policy.vocab_size - 1,)),
        ("W", (f_msg, 3)),
        ("W", (f_local, 10)),
    ):
        shifted = policy.copy()
        getattr(shifted, name)[index] += eps
        numeric = (objective(shifted) - objective(policy)) / eps
        assert numeric == pytest.approx(float(grads[name][index]), abs=1e-4)


def test_gradient_ascent_raises_target_probability() -> None:
    policy = Policy(seed=0)
    ctx = prompt("say seven")
    seven = get_encoding().encode("7")[0]
    before = policy.logprobs(ctx, [seven])[0]
    history = [before]
    for _ in range(5):
        policy.apply_gradient(policy.grad_logprob(ctx, [seven]), lr=1.0)
        history.append(policy.logprobs(ctx, [seven])[0])
    assert np.all(np.diff(history) > 0)
    assert math.exp(history[-1]) > 0.5 > math.exp(before) * 50


def test_reinforce_learns_a_conditional_task() -> None:
    """Small numbers after "ping", big numbers after "pong", from rewards only."""
    enc = get_encoding()
    policy = Policy(seed=0)
    small = {enc.encode(str(i))[0] for i in range(100)}
    tasks = {"ping": small, "pong": {enc.encode(str(i))[0] for i in range(100, 200)}}
    prompts = {k: prompt(k) for k in tasks}
    rng = np.random.default_rng(0)

    def success(name: str) -> float:
        dist = policy.distribution(prompts[name])
        return float(
            sum(
                np.exp(lp)
                for t, lp in zip(dist.token_ids, dist.logprobs, strict=True)
                if int(t) in tasks[name]
            )
        )

    start = {k: success(k) for k in tasks}
    for _ in range(20):
        batch = []
        for name, ids in prompts.items():
            samples = [policy.generate(ids, 1, rng)[0] for _ in range(16)]
            rewards = np.array([1.0 if s[0] in tasks[name] else 0.0 for s in samples])
            for s, adv in zip(samples, rewards - rewards.mean(), strict=True):
                batch.append((ids, s[:1], float(adv)))
        policy.apply_gradient(policy.policy_gradient(batch), lr=30.0)
    end = {k: success(k) for k in tasks}
    assert all(start[k] < 0.5 for k in tasks)
    assert all(end[k] > 0.9 for k in tasks), end


def test_weights_roundtrip(tmp_path: Path) -> None:
    policy = Policy(PolicyConfig(n_buckets=64, max_model_len=512), seed=9)
    policy.b[0] = 1.25
    path = tmp_path / "p.npz"
    policy.save(path)
    loaded = Policy.load(path)
    assert loaded.config == policy.config
    for k, v in policy.get_weights().items():
        assert np.array_equal(loaded.get_weights()[k], v)
    wire = read_weights_npz(weights_to_npz(policy.get_weights()), policy.weight_shapes())
    assert np.array_equal(wire["W"], policy.W) and np.array_equal(wire["b"], policy.b)
    w = policy.get_weights()
    w["W"][0, 0] = 123.0
    assert policy.W[0, 0] != 123.0  # get_weights returns copies
    policy.set_weights(w)
    assert policy.W[0, 0] == 123.0


def test_set_weights_validates() -> None:
    policy = Policy(PolicyConfig(n_buckets=8))
    with pytest.raises(ValueError, match="shape"):
        policy.set_weights({"W": np.zeros((9, policy.vocab_size)), "b": policy.b})
    with pytest.raises(ValueError, match="missing"):
        policy.set_weights({"W": policy.W})
    with pytest.raises(ValueError, match="non-finite"):
        policy.set_weights({"W": policy.W * np.nan, "b": policy.b})
