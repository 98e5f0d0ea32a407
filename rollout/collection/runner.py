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
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from compat import EPISODE_RETRY, is_transient, to_thread
from rollout.collection.backend import Backend
from rollout.episode import Episode, EpisodeStatus, as_reward
from rollout.errors import RewardError, exception_chain, explain_failure
from rollout.recorder import Recorder

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


def _reward(value: Any) -> float:
    """The one rule (`rollout.episode.as_reward`), naming the agent as the source."""
    try:
        return as_reward(value)
    except RewardError as exc:
        raise RewardError(
            f"agent returned a bad reward: {exc}; return a number, a dict with 'reward', or None"
        ) from None


def apply_result(episode: Episode, result: Any) -> None:
    """Store what the agent returned: a reward, a dict with one, or nothing."""
    if result is None:
        return
    if isinstance(result, dict):
        data = dict(result)
        reward = data.pop("reward", None)
        if reward is not None:
            episode.reward = _reward(reward)
        episode.metadata.update(data)
        return
    episode.reward = _reward(result)


def transport_error(exc: BaseException | None) -> BaseException | None:
    """The connection trouble or 5xx/429 anywhere in the cause chain, if any."""
    # is_transient includes a single call's timeout (and refused connections)
    return next((e for e in exception_chain(exc) if is_transient(e)), None)


def failure_status(exc: BaseException) -> tuple[EpisodeStatus, str]:
    """How an agent's exception ends its episode: (status, reason). A call that
    timed out makes a `timeout` episode; a dropped connection does not (see
    `rollout.errors.explain_failure`)."""
    timed_out, reason = explain_failure(exc)
    return (EpisodeStatus.TIMEOUT if timed_out else EpisodeStatus.ERROR), reason


async def _call_agent(agent: Agent, task: Any, model: Any) -> Any:
    if inspect.iscoroutinefunction(agent):
        return await agent(task, model)
    # Sync agents run on a thread of their own (compat/threads.py); the episode's
    # context, and so its recording scope, goes with them.
    result = await to_thread(agent, task, model)
    if inspect.isawaitable(result):
        result = await result
    return result


CANCEL_GRACE_S = 5.0
"""How long a timed-out or cancelled agent may take to unwind before its episode is handed back."""


async def _attempt(
    episode: Episode,
    agent: Agent,
    task: Any,
    model: Any,
    recorder: Recorder,
    timeout_s: float | None,
) -> BaseException | None:
    """Run the agent once into `episode`; returns its exception, if it raised one.

    The agent runs as its own task, so the runner can tell its own deadline
    (the task is still running), an agent that raised CancelledError (the task
    ended cancelled), and this run being cancelled (the wait below raises).
    """

    async def body() -> None:
        async with recorder.episode(episode=episode):
            apply_result(episode, await _call_agent(agent, task, model))

    child = asyncio.ensure_future(body())
    try:
        done, _ = await asyncio.wait({child}, timeout=timeout_s)
    except asyncio.CancelledError:  # the run is being cancelled: so is this episode
        child.cancel()
        await asyncio.wait({child}, timeout=CANCEL_GRACE_S)
        raise
    if not done:
        child.cancel()
        await asyncio.wait({child}, timeout=CANCEL_GRACE_S)
        episode.status = EpisodeStatus.TIMEOUT
        episode.error = f"episode exceeded its timeout of {timeout_s} s"
        return None
    try:
        child.result()
    except asyncio.CancelledError as exc:  # raised by the agent: its own failure
        episode.status = EpisodeStatus.ERROR
        episode.error = "CancelledError raised by the agent" + (f": {exc}" if str(exc) else "")
        return exc
    except Exception as exc:
        episode.status, episode.error = failure_status(exc)
        return exc
    return None


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
        try:
            error = await _attempt(episode, agent, job.task, model, backend.recorder, timeout_s)
        finally:  # also when the run is cancelled: the slot's count stays right
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
