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
import threading
import time
from collections import deque
from collections.abc import AsyncGenerator, Iterable
from typing import Any

from rollout.collection.config import CollectConfig, ConfigError, RaySpec
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
        from rollout.collection.backend import Backend, import_object, recorder_for

        self.config = CollectConfig.model_validate(config)
        self.agent: Agent = import_object(agent) if isinstance(agent, str) else agent
        self.worker_id = worker_id
        self.recorder = recorder_for(self.config.backend)
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


def _init_ray(ray: Any, spec: RaySpec) -> None:
    """Start a new local cluster (`address` None), or join `address` within `connect_timeout_s`.

    Workers find the agent's module as the driver did: Ray itself puts the
    driver's working directory on their sys.path (first, so there a user's
    compat.py would shadow the library: ray 2.x, ray/_private/worker.py,
    `py_driver_sys_path`).
    """
    options: dict[str, Any] = {
        "include_dashboard": False,
        "logging_level": logging.WARNING,
        "log_to_driver": False,
    }
    if spec.address is None:
        # ray.init(address=None) joins whatever RAY_ADDRESS or Ray's session file
        # (/tmp/ray/ray_current_cluster) names, a dead cluster included, and then
        # retries its GCS forever; "local" always starts a new cluster (ray 2.x,
        # ray/_private/services.py: canonicalize_bootstrap_address).
        ray.init(address="local", **options)
        return
    # Joining a cluster that does not answer loops on GCS timeouts with no
    # bound of its own: connect on a daemon thread and give up on it in time.
    failure: list[BaseException] = []

    def connect() -> None:
        try:
            ray.init(address=spec.address, **options)
        except BaseException as exc:  # handed to the caller below
            failure.append(exc)

    thread = threading.Thread(target=connect, name="ray-connect", daemon=True)
    thread.start()
    thread.join(spec.connect_timeout_s)
    where = f"ray.address {spec.address!r}"
    if thread.is_alive():
        raise ConfigError(
            f"{where}: no Ray cluster answered within {spec.connect_timeout_s:g} s "
            "(ray.connect_timeout_s); check it with `ray status --address ...`, or set "
            "ray.address=null to start a local cluster"
        )
    if failure:
        raise ConfigError(f"{where}: cannot connect: {type(failure[0]).__name__}: {failure[0]}") from None


class RayExecutor:
    """Starts (or joins) a cluster, places workers, and streams episodes back."""

    def __init__(self, config: CollectConfig, agent: Agent | str, urls: list[str]) -> None:
        ray = _ray()
        self.config = config
        self.urls = urls or [""]
        spec = config.ray
        self._owns_ray = not ray.is_initialized()
        if self._owns_ray:
            _init_ray(ray, spec)
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

    async def run(self, jobs: Iterable[Job]) -> AsyncGenerator[Episode, None]:
        """Episodes for `jobs` as they finish; each job's episode is yielded exactly once.

        Jobs are taken from the iterable as workers have room (see `_Scheduler`).
        """
        ray = _ray()
        sched = _Scheduler(self, jobs)
        sched.submit()
        try:
            while sched.busy():
                ready = await asyncio.to_thread(_wait_ready, ray, sched.refs(), 0.5)
                done = deque(sched.settle_all(ready))
                done.extend(sched.expire(time.monotonic()))
                sched.submit()  # refill before handing results out: workers stay busy meanwhile
                while done:  # popped, so the driver holds no episode it has handed out
                    yield done.popleft()
                if sched.stuck():  # pragma: no cover - defensive
                    raise RuntimeError("Ray executor has queued episodes but no worker to run them")
        finally:
            sched.cancel_all()

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


class _Scheduler:
    """The driver's state for one `RayExecutor.run`: queued, in flight, lost, and workers down.

    New jobs go to the live worker with the fewest in flight (up to
    `concurrency_per_worker`), each on the least-loaded server. A worker that
    loses episodes (its process or node died) is marked down: new work goes to
    the others while a `pid` probe waits for Ray to restart it; one that is
    dead for good, or not back within REVIVE_WAIT_S, is replaced. Lost episodes
    are re-submitted ahead of new ones.
    """

    def __init__(self, executor: RayExecutor, jobs: Iterable[Job]) -> None:
        self.ray = _ray()
        self.ex = executor
        cfg = executor.config
        self.per_worker = cfg.ray.concurrency_per_worker
        self.max_lost = cfg.ray.max_restarts + 3  # losses of one episode before it counts as failed
        self.lost_errors = _lost_errors(self.ray)
        self.jobs = iter(jobs)
        self.queue: list[Job] = []  # a stack: lost episodes are pushed, and popped first
        self.in_flight: dict[Any, tuple[Job, int, float]] = {}  # ref -> (job, worker, start)
        self.load = [0] * len(executor.workers)
        self.server_load = [0] * len(executor.urls)
        self.attempts: dict[str, int] = {}
        self.down: set[int] = set()  # workers not given new work until their probe answers
        self.probes: dict[Any, tuple[int, float]] = {}  # pid ref -> (worker, down since)
        self.limit = (cfg.episode_timeout_s or 0) * (cfg.episode_retries + 1) + TIMEOUT_GRACE_S
        self.enforce_limit = cfg.episode_timeout_s is not None

    def queued(self) -> bool:
        """Whether any job waits, pulling the next one from the iterable if need be."""
        if not self.queue:
            job = next(self.jobs, None)
            if job is None:
                return False
            self.queue.append(job)
        return True

    def busy(self) -> bool:
        # A worker still restarting at the end waits for the next batch.
        return bool(self.in_flight) or (bool(self.probes) and self.queued())

    def stuck(self) -> bool:
        return not self.in_flight and not self.probes and self.queued()

    def refs(self) -> list[Any]:
        return [*self.in_flight, *self.probes]

    def submit(self) -> None:
        live = [i for i in range(len(self.ex.workers)) if i not in self.down]
        while live:
            w = min(live, key=self.load.__getitem__)
            if self.load[w] >= self.per_worker or not self.queued():
                return
            job = self.queue.pop()
            s = min(range(len(self.ex.urls)), key=self.server_load.__getitem__)
            job = Job(job.task_id, job.sample, job.task, job.seed, server=s)
            ref = self.ex.workers[w].run.remote(job, self.ex.policy_version)
            self.in_flight[ref] = (job, w, time.monotonic())
            self.load[w] += 1
            self.server_load[s] += 1

    def _forget(self, ref: Any) -> tuple[Job, int]:
        job, w, _ = self.in_flight.pop(ref)
        self.load[w] -= 1
        if job.server is not None:
            self.server_load[job.server] -= 1
        return job, w

    def _probe(self, w: int, since: float) -> None:
        self.down.add(w)
        self.probes[self.ex.workers[w].pid.remote()] = (w, since)

    def _check_probe(self, ref: Any) -> None:
        w, since = self.probes.pop(ref)
        try:
            self.ray.get(ref)
            self.down.discard(w)  # alive, possibly restarted by Ray: back in the pool
        except self.ray.exceptions.ActorUnavailableError:  # restarting: ask again
            self._probe(w, since)
        except Exception as exc:  # dead for good: restarts used up, or killed for good
            self.ex._replace(w, exc)
            self._probe(w, time.monotonic())

    def settle_all(self, ready: list[Any]) -> list[Episode]:
        """The finished episodes among `ready` refs (probes and lost episodes give none)."""
        episodes = (self.settle(ref) for ref in ready)
        return [episode for episode in episodes if episode is not None]

    def settle(self, ref: Any) -> Episode | None:
        """A ready ref: the finished episode, or None (a probe, or a lost episode queued again)."""
        if ref in self.probes:
            self._check_probe(ref)
            return None
        job, w = self._forget(ref)
        try:
            episode: Episode = self.ray.get(ref)
            return episode
        except self.lost_errors as exc:
            tries = self.attempts[job.uid] = self.attempts.get(job.uid, 0) + 1
            logger.warning("worker %d lost episode %s (%s); re-submitting", w, job.uid, type(exc).__name__)
            if tries > self.max_lost:
                return _failed(job, f"worker lost {tries} times: {type(exc).__name__}")
            if w not in self.down:
                self._probe(w, time.monotonic())
            self.queue.append(job)  # popped first: lost episodes go before new ones
            self.ex.resubmitted += 1
            return None
        except Exception as exc:  # the worker's own code failed
            return _failed(job, f"{type(exc).__name__}: {exc}")

    def expire(self, now: float) -> list[Episode]:
        """Replace workers not back in time; fail episodes past their limit on a worker."""
        for ref, (w, since) in list(self.probes.items()):
            if now - since > REVIVE_WAIT_S:  # e.g. no resources left to restart it on
                del self.probes[ref]
                self.ex._replace(w, TimeoutError(f"not back after {REVIVE_WAIT_S:.0f} s"))
                self._probe(w, now)
        expired: list[Episode] = []
        if self.enforce_limit:
            for ref, (job, _, started) in list(self.in_flight.items()):
                if now - started > self.limit:
                    self.ray.cancel(ref)
                    self._forget(ref)
                    reason = f"episode exceeded {self.limit:.0f} s on its worker"
                    expired.append(_failed(job, reason, EpisodeStatus.TIMEOUT))
        return expired

    def cancel_all(self) -> None:
        for ref in self.in_flight:
            self.ray.cancel(ref)


def _failed(job: Job, reason: str, status: EpisodeStatus = EpisodeStatus.ERROR) -> Episode:
    return Episode(task_id=job.task_id, sample=job.sample, task=job.task, status=status, error=reason)
