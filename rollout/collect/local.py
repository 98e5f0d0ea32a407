"""The local executor: episodes as asyncio tasks in this process, up to `concurrency` at once."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Iterable

from rollout.collect.backend import Backend
from rollout.collect.runner import Agent, Job, run_episode
from rollout.episode import Episode


async def run_local(
    jobs: Iterable[Job],
    agent: Agent,
    backend: Backend,
    *,
    concurrency: int,
    timeout_s: float | None,
    retries: int,
) -> AsyncIterator[Episode]:
    """Yield episodes as they finish; at most `concurrency` run at once.

    Jobs are started lazily, so a million-task iterable costs nothing up front,
    and cancelling the consumer cancels the episodes in flight.
    """
    it = iter(jobs)
    running: set[asyncio.Task[Episode]] = set()

    def refill() -> None:
        while len(running) < concurrency:
            job = next(it, None)
            if job is None:
                return
            running.add(
                asyncio.ensure_future(
                    run_episode(job, agent, backend, timeout_s=timeout_s, retries=retries)
                )
            )

    refill()
    try:
        while running:
            done, _ = await asyncio.wait(running, return_when=asyncio.FIRST_COMPLETED)
            for task in done:
                running.discard(task)
            refill()
            for task in done:
                yield task.result()
    finally:
        for task in running:
            task.cancel()
        if running:
            await asyncio.gather(*running, return_exceptions=True)
