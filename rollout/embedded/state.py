"""What the server's handlers share: the served policy snapshot, settings and limits."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

import numpy as np
from aiohttp import web
from pydantic import BaseModel, ConfigDict, Field

from .policy import get_encoding
from .policy_api import ServedPolicy
from .template import ChatTemplate

MiB = 1 << 20


class Limits(BaseModel):
    """What one request may ask of the server; the excess is refused before any work.

    Sized so that no single request can take more than tens of MiB or stall
    the event loop for long (issue 12.11-12.17); raise them for a server
    that only trusted clients reach.
    """

    model_config = ConfigDict(frozen=True, extra="forbid")

    max_body_bytes: int = Field(default=24 * MiB, gt=0)
    """A JSON request body (413 above): room for a derender of the largest reply."""
    max_generated_tokens: int = Field(default=65536, gt=0)
    """``n`` x ``max_tokens`` over every prompt of a request (400 above)."""
    max_reply_bytes: int = Field(default=16 * MiB, gt=0)
    """A reply's size, bounded from its parameters before sampling (400 above)."""
    read_timeout_s: float = Field(default=30.0, gt=0)
    """For a request's headers and body to arrive, and for a stream's reader to take
    each chunk; idle keep-alive connections close after it too (408 / closed)."""


MAX_VERSION = 2**31 - 1
"""Versions are stored per token as int32 (`rollout.call_record.Versions`): a larger one cannot be recorded."""


def check_version(version: object) -> int:
    """A weight version the records can hold: an int in [0, 2**31 - 1]; `ValueError` otherwise."""
    if type(version) is not int or not 0 <= version <= MAX_VERSION:
        raise ValueError(f"version must be an integer in [0, {MAX_VERSION}], got {version!r}")
    return version


@dataclass(frozen=True)
class Snapshot:
    """Weights and their version, swapped as one reference between requests."""

    policy: ServedPolicy
    version: int


class ServerState:
    """Everything the handlers share; weight updates replace ``snapshot``."""

    def __init__(
        self,
        policy: ServedPolicy,
        model_name: str,
        api_key: str | None,
        latency_s: float,
        latency_per_token_s: float,
        seed: int,
        limits: Limits | None = None,
        version: int = 0,
    ) -> None:
        self.snapshot = Snapshot(policy, check_version(version))
        self.limits = limits or Limits()
        self.model_name = model_name
        self.api_key = api_key
        self.latency_s = latency_s
        self.latency_per_token_s = latency_per_token_s
        self.template = ChatTemplate()
        enc = get_encoding()
        self.token_bytes = max(len(enc.decode_single_token_bytes(int(t))) for t in policy.vocab_ids)
        """The longest token the policy can emit, in bytes (for reply-size bounds)."""
        self._seeds = np.random.default_rng(seed)

    def seed_for(self, requested: int | None) -> int:
        """The request's seed, or one drawn from the server seed (reproducible in order)."""
        if requested is not None:
            return requested
        return int(self._seeds.integers(0, 2**63))

    def set_weights(self, weights: Mapping[str, np.ndarray], version: int) -> None:
        """Validate on a copy, then swap; in-flight requests keep their snapshot."""
        check_version(version)
        policy = self.snapshot.policy.copy()
        policy.set_weights(weights)
        self.snapshot = Snapshot(policy, version)

    @property
    def max_model_len(self) -> int:
        return self.snapshot.policy.max_model_len


STATE_KEY = web.AppKey("state", ServerState)
"""Where handlers find the state: ``request.app[STATE_KEY]``."""
