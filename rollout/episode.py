"""An episode: the calls one agent run made on one task, plus its outcome.

Rewards follow AReaL's conventions so exports mean the same thing there:
an episode reward, optional per-call rewards, and `discount(gamma)` which walks
calls in reverse insertion order once (`R = R * gamma + r_i; r_i = R`). The
`tree=True` mode discounts along each branch of the call tree only, so
parallel branches do not leak rewards into each other.
"""

from __future__ import annotations

import math
import uuid
from dataclasses import dataclass, field
from enum import Enum
from typing import Any

from rollout.call_record import CallRecord
from rollout.errors import RewardError


class EpisodeStatus(str, Enum):
    COMPLETED = "completed"
    TRUNCATED = "truncated"
    TIMEOUT = "timeout"
    ERROR = "error"


def new_episode_id() -> str:
    return uuid.uuid4().hex


def as_reward(value: Any) -> float:
    """`value` as a finite float. numpy / torch scalars are accepted; NaN, inf and
    non-numbers raise `RewardError` naming the value (a NaN reward would poison
    every advantage in its group)."""
    if isinstance(value, (str, bytes)) or not hasattr(value, "__float__"):
        raise RewardError(f"reward must be a number, got {type(value).__name__} {value!r}")
    try:
        reward = float(value)
    except (TypeError, ValueError) as exc:
        raise RewardError(f"reward must be a single number, got {value!r} ({exc})") from None
    if not math.isfinite(reward):
        raise RewardError(f"reward must be finite, got {value!r}")
    return reward


@dataclass(eq=False)  # not slotted: one per rollout, and weak references to it must work
class Episode:
    """One rollout: task id, GRPO sample index, calls, status and rewards.

    `reward` is checked on every assignment (see `as_reward`); None means unset.
    """

    id: str = field(default_factory=new_episode_id)
    task_id: str = ""
    sample: int = 0
    task: Any = None
    calls: list[CallRecord] = field(default_factory=list)
    status: EpisodeStatus = EpisodeStatus.COMPLETED
    error: str | None = None
    reward: float | None = None
    metadata: dict[str, Any] = field(default_factory=dict)
    discounted: bool = False

    def __post_init__(self) -> None:
        if not isinstance(self.status, EpisodeStatus):
            self.status = EpisodeStatus(self.status)

    def __setattr__(self, name: str, value: Any) -> None:
        if name == "reward" and value is not None:
            value = as_reward(value)
        object.__setattr__(self, name, value)

    @property
    def uid(self) -> str:
        """rLLM-style `task_id:sample` key, unique per requested rollout."""
        return f"{self.task_id}:{self.sample}"

    @property
    def exact(self) -> bool:
        return all(c.exact for c in self.calls)

    @property
    def failed(self) -> bool:
        """Ended in error or timeout: what it recorded is kept, but `assemble` skips it."""
        return self.status in (EpisodeStatus.ERROR, EpisodeStatus.TIMEOUT)

    @property
    def num_tokens(self) -> int:
        return sum(c.num_tokens for c in self.calls)

    def set_reward(self, call: int | str, reward: float) -> None:
        """Set one call's reward, by position in the episode or by completion id."""
        self._call(call).reward = as_reward(reward)

    def set_last_reward(self, reward: float) -> None:
        if not self.calls:
            raise RewardError("episode has no calls to reward")
        self.calls[-1].reward = as_reward(reward)

    def _call(self, key: int | str) -> CallRecord:
        if isinstance(key, int):
            return self.calls[key]
        for c in self.calls:
            if c.id == key:
                return c
        raise KeyError(f"no call with id {key!r} in episode {self.id}")

    def call_rewards(self) -> list[float]:
        """Per-call rewards, with unset ones as 0.0 (AReaL's default)."""
        return [0.0 if c.reward is None else c.reward for c in self.calls]

    def discount(self, gamma: float, *, tree: bool = False) -> list[float]:
        """Propagate rewards backwards once, in place; returns the new rewards.

        If no call has a reward but the episode has one, it is placed on the
        last call first, as `set_last_reward` would. Calling twice raises: a
        second pass would discount already-discounted returns.
        """
        if self.discounted:
            raise RewardError(f"episode {self.id} was already discounted")
        if not 0.0 <= gamma <= 1.0:
            raise ValueError(f"gamma must be in [0, 1], got {gamma}")
        if self.calls and all(c.reward is None for c in self.calls) and self.reward is not None:
            self.calls[-1].reward = self.reward
        rewards = self.call_rewards()
        if tree:
            out = list(rewards)
            children: dict[int, list[int]] = {}
            for i, c in enumerate(self.calls):
                if c.parent is not None:
                    children.setdefault(c.parent, []).append(i)
            # A call's return = own reward + gamma * the mean return of its
            # children (its branches). Children come after parents, so one
            # reverse pass suffices, and siblings never see each other.
            for i in reversed(range(len(self.calls))):
                kids = children.get(i, [])
                if kids:
                    out[i] = rewards[i] + gamma * sum(out[k] for k in kids) / len(kids)
        else:
            out = [0.0] * len(rewards)
            running = 0.0
            for i in reversed(range(len(rewards))):
                running = running * gamma + rewards[i]
                out[i] = running
        for c, r in zip(self.calls, out, strict=True):
            c.reward = r
        self.discounted = True
        return out
