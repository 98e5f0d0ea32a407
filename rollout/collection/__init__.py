"""Parallel episode collection: the local asyncio executor and the Ray executor.

The public surface: `collect` / `acollect` / `Collector`, their configs, the
`Executor` protocol, the output sink and the summary. How one episode runs
(`runner.Job`, `run_episode`), the per-worker clients (`backend.Backend`), how
agents are imported (`backend.import_object`) and what a journal holds
(`output.done_uids`) are internals, imported from their modules where needed.
"""

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
from rollout.collection.output import EpisodeSink
from rollout.collection.progress import CollectSummary
from rollout.collection.run import Collector, acollect, collect, iter_tasks, load_tasks

__all__ = [
    "BackendSpec",
    "CollectConfig",
    "CollectSummary",
    "Collector",
    "ConfigError",
    "EmbeddedSettings",
    "EpisodeSink",
    "Executor",
    "OutputSpec",
    "RaySpec",
    "acollect",
    "collect",
    "iter_tasks",
    "load_config",
    "load_tasks",
]
