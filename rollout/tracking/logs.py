"""What a collection run and a training run send to their trackers, and when.

- `CollectLog`: collection metrics (`collect/...`) every `interval_s` and at
  the end, stepped by episodes finished; a sample of trajectories (a
  reservoir over the whole run) as one table at the end.
- `TrainLog`: per iteration, the trainer's numbers (`train/...`), the
  batch's collection counts (`collect/...`) and its first few trajectories.
"""

from __future__ import annotations

import contextlib
import random
import time
import warnings
from collections.abc import Iterator, Mapping
from typing import Any

from rollout.episode import Episode
from rollout.redact import redact_text
from rollout.tracking.config import TrackingSpec
from rollout.tracking.metrics import COLUMNS, EpisodeStats, sample_rows
from rollout.tracking.tracker import Tracker, TrackerWarning


@contextlib.contextmanager
def guard(tracker: Tracker, what: str) -> Iterator[None]:
    """rollout's own side of logging fails like a tracker: one warning, then no more logging."""
    try:
        yield
    except Exception as exc:
        warnings.warn(
            f"tracking failed to {what} ({type(exc).__name__}: {redact_text(str(exc))[:300]}); "
            "no more logging this run. The run goes on.",
            TrackerWarning,
            stacklevel=4,
        )
        tracker.close()


def open_tracker(spec: TrackingSpec, kind: str, config: Mapping[str, Any]) -> Tracker | None:
    """The run's `Tracker`, or None when no tracker is asked for (nothing is imported then)."""
    return Tracker(spec, kind=kind, config=config) if spec.enabled else None


class CollectLog:
    """Feeds one collection run's episodes to its tracker; cheap between ticks."""

    def __init__(self, tracker: Tracker, spec: TrackingSpec, *, seed: int = 0) -> None:
        self.tracker = tracker
        self.spec = spec
        self.stats = EpisodeStats()
        self._next = time.perf_counter() + spec.interval_s
        self._logged = -1  # the step of the last log
        self._rng = random.Random(seed)
        self._sample: list[list[list[Any]]] = []  # reservoir: each episode's rows

    def update(self, episode: Episode) -> None:
        if self.tracker:
            with guard(self.tracker, "count an episode"):
                self._update(episode)

    def _update(self, episode: Episode) -> None:
        self.stats.update(episode)
        k = self.spec.samples
        if k:
            n = self.stats.episodes
            if len(self._sample) < k:
                self._sample.append(sample_rows(episode, self.spec.sample_chars))
            elif (j := self._rng.randrange(n)) < k:
                self._sample[j] = sample_rows(episode, self.spec.sample_chars)
        if time.perf_counter() >= self._next:
            self._log()
            self._next = time.perf_counter() + self.spec.interval_s

    def _log(self) -> None:
        self.tracker.log(self.stats.metrics("collect", rates=True), step=self.stats.episodes)
        self._logged = self.stats.episodes

    def close(self) -> None:
        step = self.stats.episodes
        try:
            with guard(self.tracker, "log the end of the run"):
                if step != self._logged:
                    self._log()
                self.tracker.table(
                    "collect/samples", COLUMNS, [r for rows in self._sample for r in rows], step
                )
        finally:
            self.tracker.close()


class TrainLog:
    """One training run's tracker: `iteration(stats, episodes)` after each iteration."""

    def __init__(self, tracker: Tracker, spec: TrackingSpec) -> None:
        self.tracker = tracker
        self.spec = spec

    def iteration(self, stats: Mapping[str, Any], episodes: list[Episode]) -> None:
        if self.tracker:
            with guard(self.tracker, "log an iteration"):
                self._iteration(stats, episodes)

    def _iteration(self, stats: Mapping[str, Any], episodes: list[Episode]) -> None:
        step = int(stats["iteration"])
        batch = EpisodeStats()
        for ep in episodes:
            batch.update(ep)
        metrics = {f"train/{k}": v for k, v in stats.items() if k != "iteration"}
        self.tracker.log({**metrics, **batch.metrics("collect")}, step=step)
        rows = [
            r
            for ep in episodes[: self.spec.samples]
            for r in sample_rows(ep, self.spec.sample_chars)
        ]
        self.tracker.table("train/samples", COLUMNS, rows, step)

    def close(self) -> None:
        self.tracker.close()
