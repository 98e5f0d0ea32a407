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
import json
from collections.abc import AsyncGenerator, AsyncIterator, Callable, Iterable, Iterator
from pathlib import Path
from typing import Any

from rollout.collect.backend import Backend, EmbeddedHandle, import_object
from rollout.collect.config import CollectConfig, ConfigError, load_config
from rollout.collect.output import EpisodeSink, done_uids
from rollout.collect.progress import CollectSummary, Progress
from rollout.collect.runner import Agent, Job, episode_seed
from rollout.episode import Episode
from rollout.recorder import Recorder


def load_tasks(tasks: str | Path | Iterable[Any], limit: int | None = None) -> list[tuple[str, Any]]:
    """(task_id, task) pairs from a JSONL file or an iterable; ids from `id`, else the position."""
    if isinstance(tasks, str | Path):
        path = Path(tasks)
        if not path.exists():
            raise ConfigError(f"tasks file {path} does not exist")
        items: list[Any] = []
        with path.open(encoding="utf-8") as f:
            for lineno, line in enumerate(f, 1):
                if line.strip():
                    try:
                        items.append(json.loads(line))
                    except json.JSONDecodeError as exc:
                        raise ConfigError(f"{path}:{lineno}: not valid JSON ({exc.msg})") from None
    else:
        items = list(tasks)
    if limit is not None:
        items = items[:limit]
    out: list[tuple[str, Any]] = []
    seen: set[str] = set()
    for i, task in enumerate(items):
        task_id = str(task.get("id", i)) if isinstance(task, dict) else str(i)
        if task_id in seen:
            raise ConfigError(f"duplicate task id {task_id!r}")
        seen.add(task_id)
        out.append((task_id, task))
    return out


def _jobs(config: CollectConfig, tasks: list[tuple[str, Any]], skip: set[str]) -> list[Job]:
    jobs = []
    for task_id, task in tasks:
        for sample in range(config.samples_per_task):
            if f"{task_id}:{sample}" not in skip:
                jobs.append(Job(task_id, sample, task, episode_seed(config.seed, task_id, sample)))
    return jobs


def resolve_config(
    config: CollectConfig | str | Path | None, overrides: list[str] | None, settings: dict[str, Any]
) -> CollectConfig:
    base = config if isinstance(config, CollectConfig) else load_config(config, overrides)
    if isinstance(config, CollectConfig) and overrides:
        base = load_config(None, overrides)  # overrides need a file; apply to defaults
    if settings:
        try:
            base = CollectConfig.model_validate({**base.model_dump(), **settings})
        except Exception as exc:
            raise ConfigError(str(exc)) from None
    return base


@contextlib.contextmanager
def backend_urls(config: CollectConfig) -> Iterator[list[str]]:
    """The server URLs for this run, starting the embedded server when asked."""
    if config.backend.kind == "embedded":
        with EmbeddedHandle(config.backend) as urls:
            yield urls
    else:
        yield list(config.backend.urls)


async def acollect(
    config: CollectConfig | str | Path | None = None,
    *,
    agent: Agent | str | None = None,
    tasks: Iterable[Any] | str | None = None,
    overrides: list[str] | None = None,
    summary: CollectSummary | None = None,
    **settings: Any,
) -> AsyncIterator[Episode]:
    """Yield each finished episode (already written to the output) as it completes."""
    cfg = resolve_config(config, overrides, settings)
    agent_fn: Agent = import_object(agent or cfg.agent) if agent is None or isinstance(agent, str) else agent
    if not callable(agent_fn):
        raise ConfigError(f"agent {cfg.agent!r} is not callable")
    task_list = load_tasks(tasks if tasks is not None else cfg.tasks, cfg.limit)
    skip = done_uids(cfg.output.path) if cfg.output.path and cfg.output.resume else set()
    jobs = _jobs(cfg, task_list, skip)
    progress = Progress(len(jobs), len(task_list) * cfg.samples_per_task - len(jobs), cfg.progress, cfg.output.path)
    with backend_urls(cfg) as urls, EpisodeSink(cfg.output) as sink:
        stream = _execute(cfg, jobs, agent_fn, urls)
        try:
            async for episode in stream:
                sink.write(episode)
                progress.update(episode)
                yield episode
        finally:
            await stream.aclose()
            result = progress.close()
            if summary is not None:
                summary.__dict__.update(result.__dict__)


async def _execute(
    cfg: CollectConfig, jobs: list[Job], agent: Agent, urls: list[str]
) -> AsyncGenerator[Episode, None]:
    if cfg.executor == "ray":
        from rollout.collect.ray_executor import run_ray

        async for episode in run_ray(cfg, jobs, agent, urls):
            yield episode
        return
    from rollout.collect.local import run_local

    recorder = Recorder(
        request_token_ids=cfg.backend.request_token_ids,
        request_logprobs=cfg.backend.request_logprobs,
        keep_finished=False,
    )
    backend = Backend(cfg.backend, urls, recorder)
    try:
        async for episode in run_local(
            jobs,
            agent,
            backend,
            concurrency=cfg.concurrency,
            timeout_s=cfg.episode_timeout_s,
            retries=cfg.episode_retries,
        ):
            yield episode
    finally:
        await backend.aclose()


def collect(
    config: CollectConfig | str | Path | None = None,
    *,
    agent: Agent | str | None = None,
    tasks: Iterable[Any] | str | None = None,
    overrides: list[str] | None = None,
    on_episode: Callable[[Episode], None] | None = None,
    **settings: Any,
) -> CollectSummary:
    """Run a whole collection; returns its summary (with `.episodes` when kept in memory)."""
    summary = CollectSummary()

    async def main() -> None:
        async for episode in acollect(
            config, agent=agent, tasks=tasks, overrides=overrides, summary=summary, **settings
        ):
            if on_episode is not None:
                on_episode(episode)
            if summary.output is None and summary is not None:
                summary.episodes.append(episode)

    asyncio.run(main())
    return summary
