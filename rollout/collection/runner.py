"""Running one episode: the user's agent function inside a recorder scope.

Shared by the local and the Ray executors, so both produce the same episode
for the same job and seed. The agent is `episode(task, model)`, async or sync,
returning a reward, a dict (`reward` plus anything else, kept as metadata),
or None. Failures become episodes with a status and a reason; transport
failures are retried with backoff on a fresh episode first.
"""

from __future__ import annotations

import asyncio
import hashlib
import inspect
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from compat.retry import EPISODE_RETRY, is_transient
from rollout.collection.backend import Backend
from rollout.episode import Episode, EpisodeStatus

Agent = Callable[[Any, Any], Any]


@dataclass(frozen=True)
class Job:
    """One requested rollout: a task and its sample index within the GRPO group."""

    task_id: str
    sample: int
    task: Any = field(compare=False)
    seed: int = 0
    server: int | None = None  # preferred server index (the Ray driver balances these)

    @property
    def uid(self) -> str:
        return f"{self.task_id}:{self.sample}"


def episode_seed(run_seed: int, task_id: str, sample: int) -> int:
    """A per-episode sampling seed that does not depend on scheduling order."""
    digest = hashlib.blake2b(f"{run_seed}|{task_id}|{sample}".encode(), digest_size=4).digest()
    return int.from_bytes(digest, "little") & 0x7FFFFFFF


def apply_result(episode: Episode, result: Any) -> None:
    """Store what the agent returned: a reward, a dict with one, or nothing."""
    if result is None:
        return
    if isinstance(result, bool | int | float):
        episode.reward = float(result)
        return
    if isinstance(result, dict):
        data = dict(result)
        if "reward" in data and data["reward"] is not None:
            episode.reward = float(data.pop("reward"))
        episode.metadata.update(data)
        return
    raise TypeError(
        f"agent returned {type(result).__name__}; return a float reward, a dict with 'reward', or None"
    )


def transport_error(exc: BaseException | None) -> BaseException | None:
    """The connection trouble or 5xx/429 anywhere in the cause chain, if any."""
    seen = 0
    while exc is not None and seen < 10:
        if is_transient(exc):  # includes a single call's timeout (and refused connections)
            return exc
        exc = exc.__cause__ or exc.__context__
        seen += 1
    return None


async def _call_agent(agent: Agent, task: Any, model: Any) -> Any:
    if inspect.iscoroutinefunction(agent):
        return await agent(task, model)
    # Sync agents run in a thread; the episode's context (and so its scope) goes with them.
    result = await asyncio.to_thread(agent, task, model)
    if inspect.isawaitable(result):
        result = await result
    return result


async def run_episode(
    job: Job,
    agent: Agent,
    backend: Backend,
    *,
    timeout_s: float | None,
    retries: int,
) -> Episode:
    """Run `job` to a finished episode; never raises for agent or server failures."""
    failures: list[str] = []
    for attempt in range(retries + 1):
        slot = backend.acquire(job.server if attempt == 0 else None)
        episode = Episode(task_id=job.task_id, sample=job.sample, task=job.task)
        model = backend.model(slot, seed=job.seed)
        error: BaseException | None = None

        async def body(episode: Episode = episode, model: Any = model) -> None:
            async with backend.recorder.episode(episode=episode):
                apply_result(episode, await _call_agent(agent, job.task, model))

        started = time.monotonic()
        try:
            await asyncio.wait_for(body(), timeout_s)
        except (asyncio.TimeoutError, TimeoutError) as exc:
            if timeout_s is not None and time.monotonic() - started >= timeout_s:
                episode.status = EpisodeStatus.TIMEOUT
                episode.error = f"episode exceeded its timeout of {timeout_s} s"
            else:  # one call timed out (or could not connect): the scope recorded which
                error = exc
        except Exception as exc:  # recorded by the scope; the run goes on
            error = exc
            if episode.status == EpisodeStatus.COMPLETED:
                episode.status = EpisodeStatus.ERROR
                episode.error = f"{type(exc).__name__}: {exc}"
        transport = transport_error(error)
        backend.release(slot, failed_transport=transport is not None)
        episode.metadata["server"] = slot.url
        if transport is not None and attempt < retries:
            failures.append(episode.error or "transport error")
            await EPISODE_RETRY.asleep(attempt, transport)
            continue
        if failures:
            episode.metadata["failed_attempts"] = failures
        return episode
    raise AssertionError("unreachable")
