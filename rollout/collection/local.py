"""The local executor: episodes as asyncio tasks in this process, up to `concurrency` at once."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncGenerator, AsyncIterator, Iterable

from rollout.collection.backend import Backend, recorder_for
from rollout.collection.config import CollectConfig
from rollout.collection.runner import Agent, Job, run_episode
from rollout.episode import Episode


async def run_bounded(
    jobs: Iterable[Job],
    agent: Agent,
    backend: Backend,
    *,
    concurrency: int,
    timeout_s: float | None,
    retries: int,
) -> AsyncIterator[Episode]:
    """Yield episodes as they finish; at most `concurrency` run at once.

    Jobs are started lazily, so a million-task iterable costs nothing up
    front, and closing the generator cancels the episodes in flight.
    """
    it = iter(jobs)
    running: set[asyncio.Task[Episode]] = set()
    finished: asyncio.Queue[asyncio.Task[Episode]] = asyncio.Queue()

    def done(task: asyncio.Task[Episode]) -> None:
        running.discard(task)
        finished.put_nowait(task)

    def refill() -> None:
        while len(running) < concurrency:
            job = next(it, None)
            if job is None:
                return
            task = asyncio.ensure_future(
                run_episode(job, agent, backend, timeout_s=timeout_s, retries=retries)
            )
            task.add_done_callback(done)  # O(1) per episode, unlike asyncio.wait over all
            running.add(task)

    refill()
    try:
        while running or not finished.empty():
            task = await finished.get()
            refill()
            yield task.result()
    finally:
        for task in running:
            task.cancel()
        if running:
            await asyncio.gather(*running, return_exceptions=True)


class LocalExecutor:
    """Runs jobs in this process. Clients are built per batch, on the batch's event loop."""

    def __init__(self, config: CollectConfig, agent: Agent, urls: list[str]) -> None:
        self.config = config
        self.agent = agent
        self.urls = urls
        self.policy_version: int | None = None

    async def run(self, jobs: Iterable[Job]) -> AsyncGenerator[Episode, None]:
        cfg = self.config
        recorder = recorder_for(cfg.backend, self.policy_version)
        backend = Backend(cfg.backend, self.urls, recorder)
        try:
            async for episode in run_bounded(
                jobs,
                self.agent,
                backend,
                concurrency=cfg.concurrency,
                timeout_s=cfg.episode_timeout_s,
                retries=cfg.episode_retries,
            ):
                yield episode
        finally:
            await backend.aclose()

    def set_policy_version(self, version: int) -> None:
        self.policy_version = version

    def close(self) -> None:
        pass
