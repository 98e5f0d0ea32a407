"""What the trackers get: counts over episodes as metrics, and a few trajectories as a table.

`EpisodeStats` counts what a dashboard needs and the summary table does not
show as it goes: calls sent as token ids or as messages, fallbacks by
reason, drift (calls that did not token-extend their parent: one more
training row each), the trainable share of sampled tokens. `sample_rows`
renders an episode's calls as table rows, texts cut to a bound.
"""

from __future__ import annotations

import json
import math
import re
import time
from collections import Counter
from typing import Any

from rollout.episode import Episode, EpisodeStatus
from rollout.sample import assemble

_OK = (EpisodeStatus.COMPLETED, EpisodeStatus.TRUNCATED)
MAX_REASONS = 16
"""Distinct fallback reasons logged as their own metric; the rest count as `other`."""
MAX_CALL_ROWS = 16
"""Calls of one episode shown in a sample table."""

COLUMNS = (
    "episode", "task", "call", "status", "reward", "prompt", "completion",
    "prompt_tokens", "sampled_tokens", "exact", "sent_as", "fallback",
)  # fmt: skip


def reason_key(reason: str) -> str:
    """A fallback reason as a metric name: its words before any detail (`token route failed: ...`)."""
    head = reason.split(":", 1)[0].lower()
    return re.sub(r"[^a-z0-9]+", "_", head).strip("_")[:48] or "other"


class EpisodeStats:
    """Running counts over episodes; `metrics(prefix)` is one log's worth of numbers."""

    def __init__(self, *, drift: bool = True) -> None:
        self.drift_check = drift
        self.episodes = 0
        self.statuses: Counter[str] = Counter()
        self.rewarded = 0
        self.reward_sum = 0.0
        self.reward_sq = 0.0
        self.tokens = self.sampled = self.trainable = 0
        self.calls = self.as_tokens = 0
        self.fallbacks: Counter[str] = Counter()
        self.drift = 0
        self.t0 = time.perf_counter()

    def update(self, episode: Episode) -> None:
        self.episodes += 1
        self.statuses[episode.status.value] += 1
        ok = episode.status in _OK
        if episode.reward is not None:
            self.rewarded += 1
            self.reward_sum += episode.reward
            self.reward_sq += episode.reward * episode.reward
        for call in episode.calls:
            self.calls += 1
            self.tokens += call.num_tokens
            if call.sent_as == "tokens":
                self.as_tokens += 1
            else:
                key = reason_key(call.fallback or "token mode off")
                if key not in self.fallbacks and len(self.fallbacks) >= MAX_REASONS:
                    key = "other"
                self.fallbacks[key] += 1
            for choice in call.choices:
                self.sampled += choice.num_sampled
                if ok and choice.trainable:  # as the run's summary counts them
                    self.trainable += len(choice.ids)
        if self.drift_check and ok and len(episode.calls) > 1:
            self.drift += assemble(episode).num_drift

    def metrics(self, prefix: str, *, rates: bool = False) -> dict[str, float]:
        p = prefix
        mean = self.reward_sum / self.rewarded if self.rewarded else None
        out: dict[str, Any] = {
            f"{p}/episodes": self.episodes,
            f"{p}/failed": self.episodes - sum(self.statuses[s.value] for s in _OK),
            **{f"{p}/status/{s}": n for s, n in sorted(self.statuses.items())},
            f"{p}/mean_reward": mean,
            f"{p}/reward_std": (
                math.sqrt(max(self.reward_sq / self.rewarded - mean * mean, 0.0))
                if mean is not None
                else None
            ),
            f"{p}/tokens": self.tokens,
            f"{p}/sampled_tokens": self.sampled,
            f"{p}/trainable_tokens": self.trainable,
            f"{p}/trainable_share": self.trainable / self.sampled if self.sampled else None,
            f"{p}/calls": self.calls,
            f"{p}/calls_as_tokens": self.as_tokens,
            f"{p}/calls_as_messages": self.calls - self.as_tokens,
            **{f"{p}/fallback/{k}": n for k, n in sorted(self.fallbacks.items())},
        }
        if self.drift_check:
            out[f"{p}/drift"] = self.drift
        if rates:
            elapsed = max(time.perf_counter() - self.t0, 1e-9)
            out[f"{p}/episodes_per_s"] = self.episodes / elapsed
            out[f"{p}/tokens_per_s"] = self.sampled / elapsed
        return out


def _content(content: Any) -> str:
    if isinstance(content, str):
        return content
    if isinstance(content, list):  # parts: text kept, others named
        return " ".join(
            p.get("text", "") if isinstance(p, dict) and "text" in p
            else f"[{p.get('type', 'part')}]" if isinstance(p, dict) else str(p)
            for p in content
        )  # fmt: skip
    return "" if content is None else json.dumps(content, default=str)


def prompt_text(request: dict[str, Any]) -> str:
    """A call's prompt as text: `role: content` lines (chat), or the prompt / input as sent."""
    messages = request.get("messages")
    if isinstance(messages, list):
        return "\n".join(
            f"{m.get('role', '?')}: {_content(m.get('content'))}"
            for m in messages
            if isinstance(m, dict)
        )
    for key in ("prompt", "input"):
        if key in request:
            value = request[key]
            return value if isinstance(value, str) else json.dumps(value, default=str)
    return ""


def _head(text: str, n: int) -> str:
    return text if len(text) <= n else text[: n - 1] + "…"


def _tail(text: str, n: int) -> str:
    # A prompt's news is at its end: the last turn, the tool result.
    return text if len(text) <= n else "…" + text[-(n - 1) :]


def sample_rows(episode: Episode, chars: int) -> list[list[Any]]:
    """One row per call (the first `MAX_CALL_ROWS`), in `COLUMNS` order; texts cut to `chars`."""
    task = _head(_content(episode.task), chars)
    rows = []
    for call in episode.calls[:MAX_CALL_ROWS]:
        choice = call.choices[0] if call.choices else None
        completion = ""
        if choice is not None:
            completion = _content(choice.message.get("content"))
            if choice.message.get("tool_calls"):
                completion += " " + json.dumps(choice.message["tool_calls"], default=str)
        rows.append([
            episode.uid, task, call.index, episode.status.value,
            episode.reward,
            _tail(prompt_text(call.request), chars), _head(completion, chars),
            len(call.prompt_ids), sum(c.num_sampled for c in call.choices),
            bool(call.exact), call.sent_as, call.fallback or "",
        ])  # fmt: skip
    return rows
