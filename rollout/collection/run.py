"""`collect` / `acollect`: tasks in, finished episodes out (to disk as they finish).

    summary = rollout.collect("configs/local.yaml")            # the CLI's main job
    summary = rollout.collect(agent=my_episode, tasks=[...], samples_per_task=4)
    async for episode in rollout.acollect(config): ...         # library use

The executor (local asyncio, or Ray actors) only turns jobs into episodes;
task loading, resume, output and progress live here, the same for both.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import json
import os
from collections.abc import AsyncGenerator, AsyncIterator, Callable, Iterable, Iterator
from pathlib import Path
from typing import Any

from rollout.collection.backend import EmbeddedHandle, import_object
from rollout.collection.config import (
    CollectConfig,
    ConfigError,
    apply_overrides,
    deep_merge,
    load_config,
    validate_config,
)
from rollout.collection.executor import Executor
from rollout.collection.output import EpisodeSink, JournalIndex
from rollout.collection.progress import CollectSummary, Progress
from rollout.collection.runner import Agent, Job, episode_seed
from rollout.episode import Episode
from rollout.tokenizers import load_tokenizer
from rollout.tracking import CollectLog, open_tracker

TaskSource = str | Path | Iterable[Any]


def _task_items(tasks: TaskSource) -> Iterator[Any]:
    """The tasks one by one: the lines of a JSONL file (read lazily), or an iterable's items."""
    if not isinstance(tasks, str | Path):
        yield from tasks
        return
    path = Path(tasks)
    if not path.exists():
        raise ConfigError(f"tasks file {path} does not exist")
    with path.open(encoding="utf-8") as f:
        for lineno, line in enumerate(f, 1):
            if line.strip():
                try:
                    task = json.loads(line)
                except json.JSONDecodeError as exc:
                    raise ConfigError(f"{path}:{lineno}: not valid JSON ({exc.msg})") from None
                if isinstance(task, list):  # a JSON file of tasks, not JSONL: not one task
                    raise ConfigError(
                        f"{path}:{lineno}: holds a JSON array; a tasks file has one task per "
                        "line (JSONL), each a JSON object"
                    )
                yield task


def iter_tasks(tasks: TaskSource, limit: int | None = None) -> Iterator[tuple[str, Any]]:
    """(task_id, task) pairs as they are read; ids from `id`, else the position."""
    seen: set[str] = set()
    for i, task in enumerate(itertools.islice(_task_items(tasks), limit)):
        task_id = str(task.get("id", i)) if isinstance(task, dict) else str(i)
        if task_id in seen:
            raise ConfigError(f"duplicate task id {task_id!r}")
        seen.add(task_id)
        yield task_id, task


def _no_tasks(tasks: TaskSource) -> ConfigError:
    # A run of nothing would "succeed" and hide a wrong path or an empty export.
    where = f"tasks file {tasks}" if isinstance(tasks, str | Path) else "the task list"
    return ConfigError(f"no tasks to run: {where} holds no tasks")


def load_tasks(tasks: TaskSource, limit: int | None = None) -> list[tuple[str, Any]]:
    """(task_id, task) pairs from a JSONL file or an iterable, all in memory."""
    out = list(iter_tasks(tasks, limit))
    if not out:
        raise _no_tasks(tasks)
    return out


def require_tasks(tasks: TaskSource | None, config: CollectConfig) -> TaskSource:
    """The tasks given, else the config's; a ConfigError when neither names any."""
    source = tasks if tasks is not None else config.tasks
    if source is None:
        raise ConfigError(
            "no tasks: set `tasks:` in the config (a JSONL file, one task per line), "
            "or pass tasks=<a path or a list>"
        )
    return source


def _jobs(
    config: CollectConfig, tasks: Iterable[tuple[str, Any]], skip: set[str], batch: int = 0
) -> Iterator[Job]:
    """One job per (task, sample), lazily; seeds depend on the run seed, batch, task and sample only."""
    for task_id, task in tasks:
        for sample in range(config.samples_per_task):
            if f"{task_id}:{sample}" not in skip:
                yield Job(task_id, sample, task, episode_seed(config.seed + batch, task_id, sample))


def _count(
    config: CollectConfig, tasks: TaskSource, skip: set[str], failed: set[str]
) -> tuple[int, int, int]:
    """(episodes requested, already done, of those: failed) in one checking pass.

    Bad tasks fail here, before the run.
    """
    requested = done = done_failed = 0
    for task_id, _ in iter_tasks(tasks, config.limit):
        requested += config.samples_per_task
        for k in range(config.samples_per_task):
            uid = f"{task_id}:{k}"
            done += uid in skip
            done_failed += uid in skip and uid in failed
    if not requested:
        raise _no_tasks(tasks)
    return requested, done, done_failed


def resolve_config(
    config: CollectConfig | str | Path | None, overrides: list[str] | None, settings: dict[str, Any]
) -> CollectConfig:
    """A config file or object, then `key=value` overrides, then keyword settings merged in."""
    if isinstance(config, CollectConfig):
        data = apply_overrides(config.model_dump(), overrides or [])
    else:
        data = load_config(config, overrides).model_dump()
    return validate_config(deep_merge(data, settings))


@contextlib.contextmanager
def backend_urls(config: CollectConfig) -> Iterator[list[str]]:
    """The server URLs for this run, starting the embedded server when asked."""
    if config.backend.kind == "embedded":
        with EmbeddedHandle(config.backend) as urls:
            yield urls
    else:
        yield list(config.backend.urls)


def is_stale(episode: Episode, current: int, max_staleness: int) -> bool:
    """Any sampled token from a policy more than `max_staleness` versions old."""
    for call in episode.calls:
        for choice in call.choices:
            versions = choice.versions.to_array()
            known = versions[versions >= 0]
            if known.size and int(known.min()) < current - max_staleness:
                return True
    return False


class Collector:
    """Servers and workers that live across batches: collect, update the policy, repeat.

        with Collector("configs/local.yaml") as c:
            episodes = c.run_batch(tasks)
            c.set_policy_version(1, hook=lambda: push_weights(c.urls[0], weights, 1))
    """

    def __init__(
        self,
        config: CollectConfig | str | Path | None = None,
        *,
        agent: Agent | str | None = None,
        overrides: list[str] | None = None,
        **settings: Any,
    ) -> None:
        self.config = resolve_config(config, overrides, settings)
        spec = agent if agent is not None else self.config.agent
        if spec is None:
            raise ConfigError(
                "no agent: set `agent: module:function` in the config, or pass agent=<episode function>"
            )
        self._agent_spec: Agent | str = spec
        try:
            self.agent: Agent = import_object(spec) if isinstance(spec, str) else spec
        except ValueError as exc:
            raise ConfigError(f"agent: {exc}") from None
        if not callable(self.agent):
            raise ConfigError(f"agent {spec!r} is not callable")
        key_env = self.config.backend.api_key_env
        if key_env and os.environ.get(key_env) is None:  # before a server or worker starts
            raise ConfigError(
                f"backend.api_key_env names {key_env!r}, which is not set (export {key_env}=...)"
            )
        if self.config.backend.tokenizer is not None:  # a tokenizer that cannot load fails here, before any episode
            load_tokenizer(self.config.backend.tokenizer)
        self.policy_version: int | None = None
        self.dropped_stale = 0
        self.batches = 0  # batches run so far; each gets fresh sampling seeds
        self._stack = contextlib.ExitStack()
        self.urls: list[str] = []
        self.executor: Executor | None = None

    def start(self) -> Collector:
        if self.executor is not None:  # already started: a second start would leak servers and workers
            return self
        try:
            self.urls = self._stack.enter_context(backend_urls(self.config))
            executor = self._executor()
        except BaseException:  # e.g. no Ray cluster: stop the server started for it
            self._stack.close()
            raise
        self._stack.callback(executor.close)
        if self.policy_version is not None:  # set before start
            executor.set_policy_version(self.policy_version)
        self.executor = executor
        return self

    def _executor(self) -> Executor:
        if self.config.executor == "ray":
            from rollout.collection.ray_executor import RayExecutor

            return RayExecutor(self.config, self._agent_spec, self.urls)
        from rollout.collection.local import LocalExecutor

        return LocalExecutor(self.config, self.agent, self.urls)

    def close(self) -> None:
        self._stack.close()

    def __enter__(self) -> Collector:
        return self.start()

    def __exit__(self, *exc: Any) -> None:
        self.close()

    def jobs(self, tasks: TaskSource | None = None, skip: set[str] | None = None) -> list[Job]:
        """Jobs for the next batch (its seeds differ from the previous batch's); tasks: the config's
        when not given."""
        source = require_tasks(tasks, self.config)
        jobs = list(_jobs(self.config, load_tasks(source, self.config.limit), skip or set(), self.batches))
        self.batches += 1
        return jobs

    def set_policy_version(self, version: int, hook: Callable[[], Any] | None = None) -> None:
        """Between batches: run the weight-update hook, then stamp new calls with `version`."""
        if hook is not None:
            hook()
        self.policy_version = version
        if self.executor is not None:  # else `start` hands it over
            self.executor.set_policy_version(version)

    async def arun(self, jobs: Iterable[Job]) -> AsyncGenerator[Episode, None]:
        """Episodes for `jobs` as they finish, staleness-checked."""
        if self.executor is None:
            raise RuntimeError("Collector is not started: use `with Collector(...)` or .start()")
        cfg = self.config
        stream = self.executor.run(jobs)
        try:
            async for episode in stream:
                stale = (
                    cfg.max_staleness is not None
                    and self.policy_version is not None
                    and is_stale(episode, self.policy_version, cfg.max_staleness)
                )
                if stale and cfg.stale_action == "drop":
                    self.dropped_stale += 1
                    continue
                if stale:
                    episode.metadata["stale"] = True
                yield episode
        finally:
            await stream.aclose()

    def run_batch(self, tasks: TaskSource | None = None) -> list[Episode]:
        """One batch, kept in memory (for training loops)."""
        jobs = self.jobs(tasks)

        async def main() -> list[Episode]:
            return [ep async for ep in self.arun(jobs)]

        return asyncio.run(main())


async def acollect(
    config: CollectConfig | str | Path | None = None,
    *,
    agent: Agent | str | None = None,
    tasks: Iterable[Any] | str | None = None,
    overrides: list[str] | None = None,
    summary: CollectSummary | None = None,
    **settings: Any,
) -> AsyncIterator[Episode]:
    """Yield each finished episode (already written to the output) as it completes.

    `summary`, if given, is filled in as the run goes and complete when the
    stream ends. Nothing here keeps an episode once it is yielded.
    """
    collector = Collector(config, agent=agent, overrides=overrides, **settings)
    cfg = collector.config
    source = require_tasks(tasks, cfg)
    if not isinstance(source, str | Path):
        source = list(source)  # read twice: checked and counted first, then run
    out = cfg.output
    journal = JournalIndex.scan(out.path) if out.path and out.resume else JournalIndex()
    skip = journal.done(out.retry_failed)
    requested, skipped, skipped_failed = _count(cfg, source, skip, journal.failed())
    # Tasks and jobs stream from here: a file of a million tasks is never all in memory.
    jobs = _jobs(cfg, iter_tasks(source, cfg.limit), skip)
    # Trackers start before the clock: mlflow's first start sets up its store (seconds).
    tracker = open_tracker(cfg.tracking, "collect", cfg.model_dump(mode="json"))
    log = CollectLog(tracker, cfg.tracking, seed=cfg.seed) if tracker is not None else None
    try:
        progress = Progress(summary or CollectSummary(), cfg, total=requested - skipped, skipped=skipped)
        progress.summary.skipped_failed = skipped_failed
        with collector, EpisodeSink(out) as sink:
            stream = collector.arun(jobs)
            try:
                async for episode in stream:
                    sink.write(episode)  # on disk before any tracker sees it
                    progress.update(episode)
                    if log is not None:
                        log.update(episode)
                    yield episode
            finally:
                await stream.aclose()
                progress.close()
    finally:
        if log is not None:
            log.close()


def collect(
    config: CollectConfig | str | Path | None = None,
    *,
    agent: Agent | str | None = None,
    tasks: Iterable[Any] | str | None = None,
    overrides: list[str] | None = None,
    on_episode: Callable[[Episode], None] | None = None,
    **settings: Any,
) -> CollectSummary:
    """Run a whole collection; returns its summary.

    Episodes stream to `output.path`; only a run without one keeps them, in
    `summary.episodes`, so memory stays flat however long the run. Call
    `summary.check()` to fail on a run that produced nothing to train on.
    """
    cfg = resolve_config(config, overrides, settings)
    summary = CollectSummary()
    keep = summary.episodes if cfg.output.path is None else None

    async def main() -> None:
        async for episode in acollect(cfg, agent=agent, tasks=tasks, summary=summary):
            if on_episode is not None:
                on_episode(episode)
            if keep is not None:
                keep.append(episode)

    asyncio.run(main())
    return summary
