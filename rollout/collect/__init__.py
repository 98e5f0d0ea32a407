"""Parallel episode collection: the local asyncio executor and the Ray executor."""

from rollout.collect.backend import Backend, import_object
from rollout.collect.config import (
    BackendSpec,
    CollectConfig,
    ConfigError,
    EmbeddedSettings,
    OutputSpec,
    RaySpec,
    load_config,
)
from rollout.collect.output import EpisodeSink, done_uids
from rollout.collect.progress import CollectSummary
from rollout.collect.run import Collector, acollect, collect, load_tasks
from rollout.collect.runner import Job, apply_result, episode_seed, run_episode

__all__ = [
    "Backend",
    "BackendSpec",
    "CollectConfig",
    "CollectSummary",
    "Collector",
    "ConfigError",
    "EmbeddedSettings",
    "EpisodeSink",
    "Job",
    "OutputSpec",
    "RaySpec",
    "acollect",
    "apply_result",
    "collect",
    "done_uids",
    "episode_seed",
    "import_object",
    "load_config",
    "load_tasks",
    "run_episode",
]
