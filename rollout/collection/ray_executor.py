"""The Ray executor: async actors run episodes; the driver streams results with `ray.wait`.

Each `RolloutWorker` is an async actor that builds its own backend (recorder,
wrapped clients, compat models) from the picklable config, so no client is
ever pickled, and runs up to `concurrency_per_worker` episodes at once. It
returns `Episode`s whose token data are numpy arrays (pickled as buffers,
no Python object per token).

The driver keeps every worker's queue full (not `ActorPool`, which treats an
async actor as busy until its single call returns), assigns each episode the
least-loaded server, and re-submits an episode whose worker or node died; an
episode is yielded only from a successful result, so the output holds each
requested episode exactly once.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import time
from collections.abc import AsyncIterator
from typing import Any

from rollout.collection.config import CollectConfig
from rollout.collection.runner import Agent, Job
from rollout.episode import Episode, EpisodeStatus

logger = logging.getLogger(__name__)

TIMEOUT_GRACE_S = 10.0
REVIVE_WAIT_S = 60.0  # how long a restarting worker may take before it is replaced


def _ray() -> Any:
    try:
        import ray
    except ImportError as exc:  # pragma: no cover - depends on the environment
        raise ImportError("executor 'ray' needs Ray: pip install 'rollout-compat[ray]'") from exc
    return ray


class RolloutWorker:
    """Runs episodes inside a Ray actor. Decorated with `ray.remote` at start-up."""

    def __init__(self, config: dict[str, Any], agent: Agent | str, urls: list[str], worker_id: int) -> None:
        from rollout.collection.backend import Backend, import_object
        from rollout.recorder import Recorder

        self.config = CollectConfig.model_validate(config)
        self.agent: Agent = import_object(agent) if isinstance(agent, str) else agent
        self.worker_id = worker_id
        self.recorder = Recorder(
            request_token_ids=self.config.backend.request_token_ids,
            request_logprobs=self.config.backend.request_logprobs,
            keep_finished=False,
        )
        self.backend = Backend(self.config.backend, urls, self.recorder)

    async def run(self, job: Job, policy_version: int | None = None) -> Episode:
        from rollout.collection.runner import run_episode

        # The version travels with every job: an actor that Ray restarted re-ran
        # __init__ and would otherwise stamp new calls with no version at all.
        if policy_version is not None:
            self.recorder.policy_version = policy_version
        episode = await run_episode(
            job,
            self.agent,
            self.backend,
            timeout_s=self.config.episode_timeout_s,
            retries=self.config.episode_retries,
        )
        episode.metadata["worker"] = self.worker_id
        episode.metadata["node"] = os.uname().nodename
        episode.metadata["node_id"] = _node_id()
        return episode

    def set_policy_version(self, version: int) -> int:
        self.recorder.policy_version = version
        return version

    def pid(self) -> int:
        return os.getpid()

    def node_id(self) -> str:
        """The Ray node this actor runs on (hex id), for placement checks and fault tests."""
        return _node_id()


def _node_id() -> str:
    try:
        return str(_ray().get_runtime_context().get_node_id())
    except Exception:  # outside Ray (the class used directly)
        return ""


def _lost_errors(ray: Any) -> tuple[type[BaseException], ...]:
    """Errors that mean the worker (or its node), not the episode, failed: re-submit."""
    ex = ray.exceptions
    names = ("RayActorError", "ObjectLostError", "ActorUnavailableError", "NodeDiedError",
             "WorkerCrashedError", "ActorUnschedulableError")  # fmt: skip
    return tuple(getattr(ex, n) for n in names if hasattr(ex, n))


def _wait_ready(ray: Any, refs: list[Any], timeout: float) -> list[Any]:
    """Block until at least one ref is ready (or `timeout`), then take every other ready one.

    One thread hop per batch instead of per episode: when many episodes finish
    together the driver settles them all and refills the workers at once.
    """
    ready, rest = ray.wait(refs, num_returns=1, timeout=timeout)
    if ready and rest:
        more, _ = ray.wait(rest, num_returns=len(rest), timeout=0)
        ready.extend(more)
    return list(ready)


class RayExecutor:
    """Starts (or joins) a cluster, places workers, and streams episodes back."""

    def __init__(self, config: CollectConfig, agent: Agent | str, urls: list[str]) -> None:
        ray = _ray()
        self.config = config
        self.urls = urls or [""]
        spec = config.ray
        if not ray.is_initialized():
            env = {"PYTHONPATH": os.pathsep.join(p for p in [os.getcwd(), os.environ.get("PYTHONPATH", "")] if p)}
            ray.init(
                address=spec.address,
                runtime_env={"env_vars": env},
                include_dashboard=False,
                logging_level=logging.WARNING,
                log_to_driver=False,
            )
            self._owns_ray = True
        else:
            self._owns_ray = False
        self._remote_cls = ray.remote(RolloutWorker).options(
            num_cpus=spec.num_cpus_per_worker,
            max_concurrency=spec.concurrency_per_worker,
            max_restarts=spec.max_restarts,
            max_task_retries=0,  # re-submission is ours, so a result arrives once
            # Workers on different nodes: a lost node takes fewer episodes with it,
            # and every node's CPUs serve clients.
            scheduling_strategy="SPREAD",
        )
        payload = config.model_dump(mode="json")
        self._args = (payload, agent, self.urls)
        self.workers: list[Any] = [self._spawn(i) for i in range(spec.num_workers)]
        self.policy_version: int | None = None
        self.resubmitted = 0  # episodes re-run because their worker or node was lost
        self.replaced = 0  # workers replaced after Ray gave up restarting them

    def _spawn(self, worker_id: int) -> Any:
        return self._remote_cls.remote(*self._args, worker_id)

    def set_policy_version(self, version: int) -> None:
        """Stamp calls of later jobs with `version` (also sent with each job, see `run`)."""
        ray = _ray()
        self.policy_version = version
        refs = [w.set_policy_version.remote(version) for w in self.workers]
        for ref in refs:
            with contextlib.suppress(*_lost_errors(ray)):  # a restarting worker gets it with its next job
                ray.get(ref)

    async def run(self, jobs: list[Job]) -> AsyncIterator[Episode]:
        """Episodes for `jobs` as they finish; each job's episode is yielded exactly once.

        A worker that loses episodes (its process or node died) is marked down:
        new work goes to the others while a `pid` probe waits for Ray to restart
        it; one that is dead for good, or not back within REVIVE_WAIT_S, is
        replaced. Lost episodes are re-submitted ahead of new ones.
        """
        ray = _ray()
        cfg = self.config
        lost_errors = _lost_errors(ray)
        per_worker = cfg.ray.concurrency_per_worker
        queue = list(reversed(jobs))
        in_flight: dict[Any, tuple[Job, int, float]] = {}  # ref -> (job, worker index, start)
        load = [0] * len(self.workers)
        server_load = [0] * len(self.urls)
        attempts: dict[str, int] = {}
        down: set[int] = set()  # workers not given new work until their probe answers
        probes: dict[Any, tuple[int, float]] = {}  # pid ref -> (worker index, down since)
        limit = (cfg.episode_timeout_s or 0) * (cfg.episode_retries + 1) + TIMEOUT_GRACE_S

        def submit() -> None:
            live = [i for i in range(len(self.workers)) if i not in down]
            while queue and live:
                w = min(live, key=load.__getitem__)
                if load[w] >= per_worker:
                    return
                job = queue.pop()
                s = min(range(len(self.urls)), key=server_load.__getitem__)
                job = Job(job.task_id, job.sample, job.task, job.seed, server=s)
                ref = self.workers[w].run.remote(job, self.policy_version)
                in_flight[ref] = (job, w, time.monotonic())
                load[w] += 1
                server_load[s] += 1

        def settle(ref: Any) -> tuple[Job, int]:
            job, w, _ = in_flight.pop(ref)
            load[w] -= 1
            if job.server is not None:
                server_load[job.server] -= 1
            return job, w

        def probe(w: int, since: float) -> None:
            down.add(w)
            probes[self.workers[w].pid.remote()] = (w, since)

        def check_probe(ref: Any) -> None:
            w, since = probes.pop(ref)
            try:
                ray.get(ref)
                down.discard(w)  # alive, possibly restarted by Ray: back in the pool
            except ray.exceptions.ActorUnavailableError:  # restarting: ask again
                probe(w, since)
            except Exception as exc:  # dead for good: restarts used up, or killed for good
                self._replace(w, exc)
                probe(w, time.monotonic())

        submit()
        try:
            while in_flight or (queue and probes):  # a worker still restarting at the end waits for the next batch
                refs = [*in_flight, *probes]
                ready = await asyncio.to_thread(_wait_ready, ray, refs, 0.5)
                done: list[Episode] = []
                for ref in ready:
                    if ref in probes:
                        check_probe(ref)
                        continue
                    job, w = settle(ref)
                    try:
                        done.append(ray.get(ref))
                    except lost_errors as exc:
                        tries = attempts[job.uid] = attempts.get(job.uid, 0) + 1
                        logger.warning("worker %d lost episode %s (%s); re-submitting", w, job.uid, type(exc).__name__)
                        if tries > cfg.ray.max_restarts + 3:
                            done.append(_failed(job, f"worker lost {tries} times: {type(exc).__name__}"))
                            continue
                        if w not in down:
                            probe(w, time.monotonic())
                        queue.append(job)  # popped first: lost episodes go before new ones
                        self.resubmitted += 1
                    except Exception as exc:  # the worker's own code failed
                        done.append(_failed(job, f"{type(exc).__name__}: {exc}"))
                now = time.monotonic()
                for ref, (w, since) in list(probes.items()):
                    if now - since > REVIVE_WAIT_S:  # e.g. no resources left to restart it on
                        del probes[ref]
                        self._replace(w, TimeoutError(f"not back after {REVIVE_WAIT_S:.0f} s"))
                        probe(w, now)
                if cfg.episode_timeout_s is not None:
                    for ref, (job, _, started) in list(in_flight.items()):
                        if now - started > limit:
                            ray.cancel(ref)
                            settle(ref)
                            done.append(
                                _failed(job, f"episode exceeded {limit:.0f} s on its worker", EpisodeStatus.TIMEOUT)
                            )
                submit()  # refill before handing results out: workers stay busy meanwhile
                for episode in done:
                    yield episode
                if not in_flight and not probes and queue:  # pragma: no cover - defensive
                    raise RuntimeError("Ray executor has queued episodes but no worker to run them")
        finally:
            for ref in in_flight:
                ray.cancel(ref)

    def _replace(self, w: int, reason: BaseException) -> None:
        """Start a new actor for worker slot `w`; the old one is killed for good."""
        ray = _ray()
        logger.warning("worker %d is gone (%s); starting a replacement", w, str(reason)[:300])
        with contextlib.suppress(Exception):  # never leave a half-restarted actor holding resources
            ray.kill(self.workers[w], no_restart=True)
        self.workers[w] = self._spawn(w)
        self.replaced += 1

    def close(self) -> None:
        ray = _ray()
        for w in self.workers:
            with contextlib.suppress(Exception):  # already dead
                ray.kill(w)
        self.workers = []
        if self._owns_ray:
            ray.shutdown()


def _failed(job: Job, reason: str, status: EpisodeStatus = EpisodeStatus.ERROR) -> Episode:
    return Episode(task_id=job.task_id, sample=job.sample, task=job.task, status=status, error=reason)
