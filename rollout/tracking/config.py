"""The `tracking` config block: which experiment trackers a run logs to, and how.

    tracking:
      trackers: [wandb, mlflow, tensorboard]   # or just `tracking: [tensorboard]`
      project: rollout
      run_name: arithmetic-1                   # default: <kind>-<date>-<time>
      dir: runs/tracking                       # every tracker's local files go under it
      wandb: {mode: offline}
      mlflow: {tracking_uri: null}             # default: sqlite:///<dir>/mlflow.db
      tensorboard: {log_dir: null}             # default: <dir>/tensorboard/<run_name>

Only pydantic here: `rollout.collection.config` imports it, and no tracker
library is imported until a run starts one.
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

TrackerName = Literal["wandb", "mlflow", "tensorboard"]


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class WandbSpec(_Strict):
    # offline: files under <dir>/wandb, no network and no key (`wandb sync` uploads them later);
    # online needs WANDB_API_KEY in the environment (never in a config).
    mode: Literal["offline", "online"] = "offline"
    entity: str | None = None
    group: str | None = None
    tags: list[str] = Field(default_factory=list)


class MlflowSpec(_Strict):
    tracking_uri: str | None = None  # None: sqlite:///<dir>/mlflow.db (a local store, no server)
    experiment: str | None = None  # None: the project


class TensorBoardSpec(_Strict):
    log_dir: str | None = None  # None: <dir>/tensorboard/<run_name>
    flush_secs: float = Field(default=10.0, gt=0)


class TrackingSpec(_Strict):
    """Experiment trackers for one run; none by default."""

    trackers: list[TrackerName] = Field(default_factory=list)
    project: str = "rollout"
    run_name: str | None = None
    dir: str = "runs/tracking"
    interval_s: float = Field(default=10.0, ge=0)
    """Collection: seconds between two progress logs (0: after every episode); the end is always logged."""
    samples: int = Field(default=8, ge=0)
    """Trajectories in the sample table: per run (collection) or per iteration (training); 0: none."""
    sample_chars: int = Field(default=1000, ge=16)
    """Longest prompt or completion text in a table cell; longer ones are cut."""
    wandb: WandbSpec = Field(default_factory=lambda: WandbSpec())
    mlflow: MlflowSpec = Field(default_factory=lambda: MlflowSpec())
    tensorboard: TensorBoardSpec = Field(default_factory=lambda: TensorBoardSpec())

    @model_validator(mode="before")
    @classmethod
    def _shorthand(cls, value: Any) -> Any:
        # `tracking: [wandb, tensorboard]` or `tracking: tensorboard` (also as a CLI override).
        if isinstance(value, str):
            return {"trackers": [value]}
        if isinstance(value, list):
            return {"trackers": value}
        return value

    @field_validator("trackers")
    @classmethod
    def _unique(cls, trackers: list[str]) -> list[str]:
        if len(set(trackers)) != len(trackers):
            raise ValueError(f"a tracker is listed twice: {trackers}")
        return trackers

    @property
    def enabled(self) -> bool:
        return bool(self.trackers)
