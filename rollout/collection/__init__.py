"""Parallel episode collection: the local asyncio executor and the Ray executor.

The public surface: `collect` / `acollect` / `Collector`, their configs, the
`Executor` protocol, the output sink and the summary. How one episode runs
(`runner`) and how agents are imported (`backend.import_object`) are
internals, imported from their modules where needed.
"""

from rollout.collection.backend import Backend
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
from rollout.collection.runner import Job

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
    "collect",
    "done_uids",
    "iter_tasks",
    "load_config",
    "load_tasks",
]
