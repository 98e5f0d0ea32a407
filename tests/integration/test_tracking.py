"""The tracking block in the main tier (no tracker library installed here): config, fan-out, failures.

The trackers' own libraries, and reading their logs back, are tested in the
trackers peer tier (tests/peers/trackers) and, for the verl trainer, the verl tier.
"""

from __future__ import annotations

import math
import sys
import warnings
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any, ClassVar

import pytest

import rollout.redact
import rollout.tracking.backends as backends
from rollout import collect
from rollout.cli import main
from rollout.collection import load_config
from rollout.demo import COLLECT
from rollout.errors import ConfigError
from rollout.export import read_jsonl
from rollout.redact import register_secret
from rollout.tracking import EpisodeStats, Tracker, TrackerWarning, TrackingSpec
from rollout.tracking.metrics import MAX_REASONS, reason_key


def test_the_tracking_block_takes_a_list_or_one_name_and_checks_it() -> None:
    assert load_config(overrides=["tracking=[wandb, tensorboard]"]).tracking.trackers == [
        "wandb",
        "tensorboard",
    ]
    assert load_config(overrides=["tracking=mlflow"]).tracking.trackers == ["mlflow"]
    cfg = load_config(overrides=["tracking.trackers=[mlflow]", "tracking.mlflow.experiment=x"])
    assert cfg.tracking.mlflow.experiment == "x" and cfg.tracking.wandb.mode == "offline"
    assert not load_config().tracking.enabled  # off by default
    with pytest.raises(ConfigError, match=r"tracking\.trackers\.0"):
        load_config(overrides=["tracking=[comet]"])
    with pytest.raises(ConfigError, match="listed twice"):
        load_config(overrides=["tracking=[wandb, wandb]"])
    with pytest.raises(ConfigError, match=r"unknown key 'tracking\.wandb\.api_key'"):
        load_config(overrides=["tracking.trackers=[wandb]", "tracking.wandb.api_key=x"])


def test_missing_tracker_libraries_warn_and_the_run_loses_nothing(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    for module in ("wandb", "mlflow", "mlflow.tracking", "tensorboardX"):
        monkeypatch.setitem(sys.modules, module, None)  # import fails, as when not installed
    journal = tmp_path / "eps.jsonl"
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        summary = collect(
        **COLLECT,
            limit=3, samples_per_task=2, progress=False, output={"path": str(journal)},
            tracking={"trackers": ["wandb", "mlflow", "tensorboard"], "dir": str(tmp_path / "t")},
        )  # fmt: skip
    messages = sorted(str(w.message) for w in caught if issubclass(w.category, TrackerWarning))
    assert len(messages) == 3
    for message, extra in zip(messages, ("mlflow", "tensorboard", "wandb"), strict=True):
        assert (
            f"pip install 'rollout-compat[{extra}]'" in message and "goes on without it" in message
        )
    assert summary.finished == len(read_jsonl(journal)) == 6


class Recording:
    """A tracker backend that keeps what it is given (and can be told to fail)."""

    instances: ClassVar[list[Recording]] = []
    fail_at: ClassVar[int | None] = None

    def __init__(self, spec: TrackingSpec, run_name: str, config: Mapping[str, Any]) -> None:
        self.run_name, self.config = run_name, config
        self.logs: list[tuple[int, dict[str, float]]] = []
        self.tables: list[tuple[str, list[str], list[list[Any]], int]] = []
        self.closed = False
        type(self).instances.append(self)

    def log(self, metrics: Mapping[str, float], step: int) -> None:
        if self.fail_at is not None and len(self.logs) == self.fail_at:
            raise ConnectionError("tracker server went away")
        self.logs.append((step, dict(metrics)))

    def table(
        self, key: str, columns: Sequence[str], rows: Sequence[Sequence[Any]], step: int
    ) -> None:
        self.tables.append((key, list(columns), [list(r) for r in rows], step))

    def close(self) -> None:
        self.closed = True


@pytest.fixture
def recording(monkeypatch: pytest.MonkeyPatch) -> type[Recording]:
    class Fresh(Recording):
        instances: ClassVar[list[Recording]] = []

    monkeypatch.setitem(backends.BACKENDS, "tensorboard", Fresh)
    monkeypatch.setattr(rollout.redact, "_secrets", rollout.redact._secrets)  # undo registrations
    return Fresh


def test_collection_logs_per_tick_and_at_the_end_with_keys_redacted(
    tmp_path: Path, recording: type[Recording]
) -> None:
    secret = "sk-main-tier-" + "x7" * 10
    register_secret(secret)
    journal = tmp_path / "eps.jsonl"
    summary = collect(
        agent=COLLECT["agent"],
        limit=4, samples_per_task=2, progress=False, output={"path": str(journal)},
        tasks=[{"id": f"t{i}", "a": i, "b": 1, "answer": i + 1, "note": f"Bearer {secret}"} for i in range(4)],
        tracking={"trackers": ["tensorboard"], "interval_s": 0, "samples": 2, "run_name": f"r-{secret}"},
    )  # fmt: skip
    (rec,) = recording.instances
    assert rec.closed and secret not in rec.run_name
    assert secret not in repr(rec.config) and "[4 items]" not in repr(
        rec.config
    )  # four tasks: kept
    steps = [s for s, _ in rec.logs]
    assert steps == list(range(1, 9))  # one log per episode at interval 0; the end adds none
    final = rec.logs[-1][1]
    assert final["collect/episodes"] == summary.finished == 8
    assert final["collect/trainable_tokens"] == summary.trainable_tokens
    assert final["collect/sampled_tokens"] == summary.sampled_tokens
    episodes = read_jsonl(journal)
    rewards = [e.reward for e in episodes if e.reward is not None]
    assert final["collect/mean_reward"] == pytest.approx(sum(rewards) / len(rewards))
    ((key, columns, rows, step),) = rec.tables
    assert key == "collect/samples" and step == 8 and columns[0] == "episode"
    assert len({r[0] for r in rows}) == 2  # two episodes, every call a row
    assert all(secret not in str(cell) for r in rows for cell in r)
    assert any("[REDACTED]" in str(r[1]) for r in rows)  # the task cell, redacted not dropped


def test_a_tracker_failing_mid_run_is_dropped_with_one_warning(
    tmp_path: Path, recording: type[Recording]
) -> None:
    recording.fail_at = 2
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        summary = collect(
        **COLLECT,
            limit=3, samples_per_task=2, progress=False, output={"path": str(tmp_path / "e.jsonl")},
            tracking={"trackers": ["tensorboard"], "interval_s": 0},
        )  # fmt: skip
    (message,) = [str(w.message) for w in caught if issubclass(w.category, TrackerWarning)]
    assert (
        "tracker tensorboard failed to log metrics (ConnectionError: tracker server went away)"
        in message
    )
    (rec,) = recording.instances
    assert len(rec.logs) == 2 and rec.closed and rec.tables == []  # dropped: nothing more sent
    assert summary.finished == 6


def test_a_bug_in_rollouts_own_logging_code_does_not_fail_the_run(
    tmp_path: Path, recording: type[Recording], monkeypatch: pytest.MonkeyPatch
) -> None:
    def broken(self: EpisodeStats, episode: Any) -> None:
        raise KeyError("a field the counter did not expect")

    monkeypatch.setattr(EpisodeStats, "update", broken)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        summary = collect(
        **COLLECT,
            limit=2, samples_per_task=2, progress=False, output={"path": str(tmp_path / "e.jsonl")},
            tracking={"trackers": ["tensorboard"], "interval_s": 0},
        )  # fmt: skip
    (message,) = [str(w.message) for w in caught if issubclass(w.category, TrackerWarning)]
    assert message.startswith("tracking failed to count an episode (KeyError")
    assert summary.finished == len(read_jsonl(tmp_path / "e.jsonl")) == 4
    (rec,) = recording.instances
    assert rec.closed and rec.logs == []


def test_the_tracker_sends_numbers_only() -> None:
    with Tracker(TrackingSpec()) as tracker:  # no trackers: a no-op that still filters
        assert not tracker and tracker.active == []
        tracker.log({"a": 1}, step=0)
    rec = Recording(TrackingSpec(), "r", {})
    t = Tracker(TrackingSpec())
    t._backends["x"] = rec
    t.log({"a": 1, "b": None, "c": math.nan, "d": True, "e": 2.5}, step=3)  # type: ignore[dict-item]
    assert rec.logs == [(3, {"a": 1.0, "e": 2.5})]


def test_fallback_reasons_become_a_bounded_set_of_metric_names() -> None:
    assert reason_key("first call") == "first_call"
    assert reason_key("token route failed: HTTP 500 at http://h/v1?key=abc") == "token_route_failed"
    assert (
        reason_key("tools changed since the parent call") == "tools_changed_since_the_parent_call"
    )
    stats = EpisodeStats(drift=False)
    from rollout.call_record import CallRecord
    from rollout.episode import Episode

    for i in range(MAX_REASONS + 5):
        stats.update(Episode(task_id=str(i), calls=[CallRecord(fallback=f"reason {i}: detail")]))
    metrics = stats.metrics("collect")
    reasons = {k: v for k, v in metrics.items() if k.startswith("collect/fallback/")}
    assert len(reasons) == MAX_REASONS + 1 and reasons["collect/fallback/other"] == 5
    assert metrics["collect/calls_as_messages"] == MAX_REASONS + 5


def test_export_to_hf_without_datasets_says_which_extra(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    journal = tmp_path / "eps.jsonl"
    collect(**COLLECT, limit=1, progress=False, output={"path": str(journal)})
    monkeypatch.setitem(sys.modules, "datasets", None)
    assert main(["export", str(journal), "--to", "hf", "--out", str(tmp_path / "hf")]) == 2
    assert "pip install 'rollout-compat[datasets]'" in capsys.readouterr().err
