"""Running totals for a collection, shown as a tqdm bar and a closing summary table."""

from __future__ import annotations

import time
from collections import Counter
from typing import Any

from pydantic import BaseModel, ConfigDict, Field

from rollout.collection.config import CollectConfig
from rollout.episode import Episode, EpisodeStatus
from rollout.errors import NoTrainableDataError

_OK = (EpisodeStatus.COMPLETED, EpisodeStatus.TRUNCATED)


class CollectSummary(BaseModel):
    """What a run did. `episodes` is filled only when no output path was given."""

    model_config = ConfigDict(arbitrary_types_allowed=True)

    requested: int = 0
    skipped: int = 0  # already on disk (resume)
    skipped_failed: int = 0  # of those, episodes on disk as failed (error/timeout), not rerun
    finished: int = 0
    statuses: dict[str, int] = Field(default_factory=dict)
    tokens: int = 0
    sampled_tokens: int = 0
    trainable_tokens: int = 0  # sampled tokens with exact or checked ids, in episodes that did not fail
    unpaired_choices: int = 0  # replies whose tokenizer ids did not match the server's tokens
    first_error: str | None = None  # the first failed episode's reason
    allow_untrainable: bool = False  # the run's setting, for `check`
    mean_reward: float | None = None
    wall_s: float = 0.0
    episodes_per_s: float = 0.0
    tokens_per_s: float = 0.0
    output: str | None = None
    episodes: list[Episode] = Field(default_factory=list, exclude=True)

    @property
    def failed(self) -> int:
        return self.finished - sum(self.statuses.get(s.value, 0) for s in _OK)

    @property
    def untrainable(self) -> bool:
        """Episodes ran, but not one sampled token can be trained on."""
        return self.finished > 0 and self.trainable_tokens == 0

    def check(self) -> None:
        """Raise NoTrainableDataError if this run produced nothing to train on.

        That is: every episode failed, or (unless `allow_untrainable`) no
        sampled token has exact ids or a tokenizer's ids checked against the server's. A run that only skipped episodes passes.
        """
        if self.finished and self.failed == self.finished:
            counts = ", ".join(f"{k}: {v}" for k, v in sorted(self.statuses.items()))
            raise NoTrainableDataError(
                f"every one of the {self.finished} episodes failed ({counts}); "
                f"the first: {self.first_error}. Once fixed, `--retry-failed` "
                "(output.retry_failed=true) runs them again"
            )
        if not self.finished and self.skipped and self.skipped_failed == self.skipped:
            # A resume that found only failures must not read as a finished run.
            raise NoTrainableDataError(
                f"nothing ran: all {self.skipped} episodes are already on disk, and all "
                f"{self.skipped_failed} failed; `--retry-failed` (output.retry_failed=true) "
                "runs them again"
            )
        if self.untrainable and not self.allow_untrainable:
            raise NoTrainableDataError(
                f"no trainable data: no sampled token of the {self.finished} episodes has exact "
                "ids (ask the server for them: backend.request_token_ids), or ids from a "
                "tokenizer that matched the server's tokens (backend.tokenizer: server, "
                "tiktoken:<encoding> or hf:<name>); or set allow_untrainable=true to accept such a run"
            )

    def table(self) -> str:
        trainable = str(self.trainable_tokens)
        if self.untrainable:
            trainable += " (no sampled token has exact ids, nor checked tokenizer ids: nothing here can train)"
        rows = [
            ("episodes requested", self.requested),
            ("skipped (already on disk)", self.skipped),
            *((("  failed (--retry-failed reruns them)", self.skipped_failed),) if self.skipped_failed else ()),
            ("finished", self.finished),
            *((f"  {k}", v) for k, v in sorted(self.statuses.items())),
            ("tokens (prompt + sampled)", self.tokens),
            ("sampled tokens", self.sampled_tokens),
            ("trainable tokens", trainable),
            *((("tokenizer mismatches (replies)", self.unpaired_choices),) if self.unpaired_choices else ()),
            ("mean reward", "-" if self.mean_reward is None else f"{self.mean_reward:.4f}"),
            ("wall time (s)", f"{self.wall_s:.2f}"),
            ("episodes/s", f"{self.episodes_per_s:.1f}"),
            ("tokens/s", f"{self.tokens_per_s:.0f}"),
            ("output", self.output or "(memory)"),
        ]
        width = max(len(k) for k, _ in rows)
        return "\n".join(f"{k:<{width}}  {v}" for k, v in rows)


class Progress:
    """Fills in a run's summary episode by episode; draws a bar when `config.progress` is set."""

    def __init__(self, summary: CollectSummary, config: CollectConfig, *, total: int, skipped: int) -> None:
        self.summary = summary
        summary.requested, summary.skipped = total + skipped, skipped
        summary.output = config.output.path
        summary.allow_untrainable = config.allow_untrainable
        self._statuses: Counter[str] = Counter()
        self._reward_sum = 0.0
        self._rewarded = 0
        self._t0 = time.perf_counter()
        self._bar: Any = None
        if config.progress:
            from tqdm import tqdm

            self._bar = tqdm(total=total, unit="ep", dynamic_ncols=True)

    def update(self, episode: Episode) -> None:
        s = self.summary
        s.finished += 1
        self._statuses[episode.status.value] += 1
        ok = episode.status in _OK
        if not ok and s.first_error is None:
            s.first_error = episode.error or episode.status.value
        for call in episode.calls:
            s.tokens += call.num_tokens
            for choice in call.choices:
                s.sampled_tokens += choice.num_sampled
                if ok and choice.trainable:
                    s.trainable_tokens += len(choice.ids)
                if choice.mismatch is not None:
                    s.unpaired_choices += 1
        if episode.reward is not None:
            self._reward_sum += episode.reward
            self._rewarded += 1
        if self._bar is not None:
            elapsed = max(time.perf_counter() - self._t0, 1e-9)
            self._bar.update(1)
            self._bar.set_postfix(
                tok_s=f"{s.sampled_tokens / elapsed:.0f}",
                reward=f"{self._reward_sum / max(self._rewarded, 1):.3f}",
                failed=s.finished - sum(self._statuses[k.value] for k in _OK),
                refresh=False,
            )

    def close(self) -> None:
        if self._bar is not None:
            self._bar.close()
        s = self.summary
        s.wall_s = time.perf_counter() - self._t0
        s.statuses = dict(self._statuses)
        s.mean_reward = self._reward_sum / self._rewarded if self._rewarded else None
        s.episodes_per_s = s.finished / s.wall_s if s.wall_s else 0.0
        s.tokens_per_s = s.sampled_tokens / s.wall_s if s.wall_s else 0.0
