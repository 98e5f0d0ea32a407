"""What the embedded server needs from a policy: the numpy one or the torch one.

The server samples token by token (`engine.Generation`), reports the sampling
distribution's logprobs and top tokens (`policy.Distribution`), bounds reply
sizes by the longest token it can emit (`vocab_ids`) and swaps weights on
`/update_weights` after checking the upload against `weight_shapes()`. Any
object with these members can be served; `Policy` (numpy) and
`rollout.embedded.torch_policy.TorchPolicy` (a transformers model) are the
two that ship.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Protocol

import numpy as np

from .policy import Distribution


class ServedPolicy(Protocol):
    """A policy the embedded server can serve and update."""

    end_id: int
    """The token that ends a completion (and a chat message)."""
    vocab_ids: np.ndarray
    """Every cl100k id the policy can emit, the end token included."""

    @property
    def max_model_len(self) -> int:
        """Longest prompt + completion, in tokens."""
        ...

    def sample_next(
        self,
        context_ids: Sequence[int],
        rng: np.random.Generator,
        temperature: float = 1.0,
        top_p: float = 1.0,
    ) -> tuple[int, float, Distribution]:
        """One token, its logprob under the sampling distribution, and that distribution.

        Must draw from ``rng`` exactly as `policy.draw` does, so a request's
        seed reproduces its tokens.
        """
        ...

    def weight_shapes(self) -> dict[str, tuple[int, ...]]:
        """Name -> shape of every trainable array: what an upload must hold, exactly."""
        ...

    def set_weights(self, weights: Mapping[str, np.ndarray]) -> None:
        """Replace the weights (all of them); ``ValueError`` naming what is wrong."""
        ...

    def copy(self) -> ServedPolicy:
        """An independent policy with the same config and weights (the server's snapshot)."""
        ...
