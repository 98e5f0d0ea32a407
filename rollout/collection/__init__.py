"""Parallel episode collection: the local asyncio executor and the Ray executor."""

from rollout.collection.backend import Backend, import_object
from rollout.collection.config import (
    BackendSpec,
    CollectConfig,
    ConfigError,
    EmbeddedSettings,
    OutputSpec,
    RaySpec,
    load_config,
)
from rollout.collection.executor import Executor
from rollout.collection.output import EpisodeSink, done_uids
from rollout.collection.progress import CollectSummary
from rollout.collection.run import Collector, acollect, collect, iter_tasks, load_tasks
from rollout.collection.runner import Job, apply_result, episode_seed, run_episode

__all__ = [
    "Backend",
    "BackendSpec",
    "CollectConfig",
    "CollectSummary",
    "Collector",
    "ConfigError",
    "EmbeddedSettings",
    "EpisodeSink",
    "Executor",
    "Job",
    "OutputSpec",
    "RaySpec",
    "acollect",
    "apply_result",
    "collect",
    "done_uids",
    "episode_seed",
    "import_object",
    "iter_tasks",
    "load_config",
    "load_tasks",
    "run_episode",
]
