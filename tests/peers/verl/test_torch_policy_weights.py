"""The torch policy checks uploaded weights in its own dtype (issue 18 §4).

Runs in the verl venv (torch 2.13.0 CPU): `bash tests/peers/run.sh verl`.
A float64 upload of 1e300 is finite as float64 and inf as float32, the
model's dtype; before the check was made after the cast, the server took it
and every later chat answered 500.
"""

from __future__ import annotations

import numpy as np
import openai
import pytest

pytest.importorskip("verl", reason="peer tier: run tests/peers/run.sh (verl venv)")

import torch

from rollout.embedded import EmbeddedServer, WeightPushError, push_weights
from rollout.embedded.torch_policy import TorchPolicy, TorchPolicyConfig

pytestmark = pytest.mark.peers

USER = [{"role": "user", "content": "What is 12 + 7?"}]


def _huge(weights: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    big = weights["model.norm.weight"].astype(np.float64)
    big[0] = 1e300  # finite in float64, inf in float32
    return {**weights, "model.norm.weight": big}


def test_weights_that_overflow_float32_are_refused_in_process() -> None:
    policy = TorchPolicy(TorchPolicyConfig(seed=3))
    before = {k: v.copy() for k, v in policy.get_weights().items()}
    with pytest.raises(ValueError, match=r"model\.norm\.weight.*non-finite"):
        policy.set_weights(_huge(before))
    after = policy.get_weights()
    assert all(np.array_equal(after[k], before[k]) for k in before)  # nothing half-applied
    assert all(torch.isfinite(p).all() for p in policy.model.parameters())


def test_weights_that_overflow_float32_are_a_400_and_the_server_keeps_serving() -> None:
    policy = TorchPolicy(TorchPolicyConfig(seed=3))
    with EmbeddedServer(policy.copy()) as srv:
        with pytest.raises(WeightPushError, match="non-finite"):
            push_weights(srv.url, _huge(policy.get_weights()), 1)
        assert srv.weight_version == 0
        client = openai.OpenAI(base_url=srv.base_url, api_key="unused", max_retries=0)
        reply = client.chat.completions.create(model="tiny", messages=USER, max_tokens=3, seed=1)
        assert reply.choices[0].finish_reason in ("stop", "length")
        # A float64 upload that float32 holds is still taken.
        ok = {k: v.astype(np.float64) for k, v in TorchPolicy(TorchPolicyConfig(seed=7)).get_weights().items()}
        assert push_weights(srv.url, ok, 2) == 2
