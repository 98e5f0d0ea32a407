"""Experiment trackers (wandb, MLflow, TensorBoard) for collection and training runs.

Turn them on with the `tracking` config block (`rollout.tracking.config`);
each tracker is an optional extra, imported only when a run starts it. A
tracker that fails warns (`TrackerWarning`) and is dropped: never the run.
"""

from rollout.tracking.config import MlflowSpec, TensorBoardSpec, TrackingSpec, WandbSpec
from rollout.tracking.logs import CollectLog, TrainLog, open_tracker
from rollout.tracking.metrics import EpisodeStats, sample_rows
from rollout.tracking.tracker import Tracker, TrackerWarning

__all__ = [
    "CollectLog",
    "EpisodeStats",
    "MlflowSpec",
    "TensorBoardSpec",
    "Tracker",
    "TrackerWarning",
    "TrackingSpec",
    "TrainLog",
    "WandbSpec",
    "open_tracker",
    "sample_rows",
]
