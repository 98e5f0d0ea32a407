"""What the server's handlers share: the served policy snapshot and settings."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

import numpy as np
from aiohttp import web

from .policy import Policy
from .template import ChatTemplate


@dataclass(frozen=True)
class Snapshot:
    """Weights and their version, swapped as one reference between requests."""

    policy: Policy
    version: int


class ServerState:
    """Everything the handlers share; weight updates replace ``snapshot``."""

    def __init__(
        self,
        policy: Policy,
        model_name: str,
        api_key: str | None,
        latency_s: float,
        latency_per_token_s: float,
        seed: int,
        version: int = 0,
    ) -> None:
        self.snapshot = Snapshot(policy, version)
        self.model_name = model_name
        self.api_key = api_key
        self.latency_s = latency_s
        self.latency_per_token_s = latency_per_token_s
        self.template = ChatTemplate()
        self._seeds = np.random.default_rng(seed)

    def seed_for(self, requested: int | None) -> int:
        """The request's seed, or one drawn from the server seed (reproducible in order)."""
        if requested is not None:
            return requested
        return int(self._seeds.integers(0, 2**63))

    def set_weights(self, weights: Mapping[str, np.ndarray], version: int) -> None:
        """Validate on a copy, then swap; in-flight requests keep their snapshot."""
        policy = self.snapshot.policy.copy()
        policy.set_weights(weights)
        self.snapshot = Snapshot(policy, version)

    @property
    def max_model_len(self) -> int:
        return self.snapshot.policy.config.max_model_len


STATE_KEY = web.AppKey("state", ServerState)
"""Where handlers find the state: ``request.app[STATE_KEY]``."""
