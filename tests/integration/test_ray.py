"""The Ray executor on a real 2-node cluster on this machine (`ray.cluster_utils.Cluster`).

One module-scoped cluster (head: 1 CPU, second node: 1 CPU; workers take 0.5
CPU each and are spread, so each node hosts one) and real embedded servers
with a little latency, so episodes are in flight when a fault is injected.

Covers: exactly-once output when a node is removed or workers are killed
mid-run (restart and replacement paths), same trajectories as the local
executor for the same seeds, sticky and balanced server routing, policy
version tagging and staleness, per-episode timeouts and the driver's
per-worker concurrency cap. No timing assertions.
"""

from __future__ import annotations

import asyncio
import gc
import logging
import os
import signal
import socket
import subprocess
import sys
import weakref
from collections import Counter
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from rollout.collection import Collector, collect
from rollout.embedded import EmbeddedServer, Policy, push_weights
from rollout.episode import Episode, EpisodeStatus

ray = pytest.importorskip("ray")

pytestmark = pytest.mark.ray

ROOT = str(Path(__file__).resolve().parents[2])
MB = 2**20
FINISHED = (EpisodeStatus.COMPLETED, EpisodeStatus.TRUNCATED)


# ------------------------------------------------------------------ agents
# Imported by the Ray workers as `tests.integration.test_ray:<name>` (PYTHONPATH = repo root).

_running = 0
_peak = 0


async def sleepy(task: dict[str, Any], model: Any) -> dict[str, Any]:
    """One model call, then sleep `task["sleep"]` s; reports this process's peak concurrency."""
    global _running, _peak
    _running += 1
    _peak = max(_peak, _running)
    try:
        await model.arun([{"role": "user", "content": f"task {task['id']}"}])
        await asyncio.sleep(task["sleep"])
        return {"reward": 1.0, "peak": _peak, "pid": os.getpid()}
    finally:
        _running -= 1


# ------------------------------------------------------------------ fixtures


@pytest.fixture(scope="module")
def cluster() -> Iterator[Any]:
    from ray.cluster_utils import Cluster

    if ray.is_initialized():
        ray.shutdown()
    c = Cluster(
        initialize_head=True,
        head_node_args={"num_cpus": 1, "object_store_memory": 80 * MB, "include_dashboard": False},
    )
    c.add_node(num_cpus=1, object_store_memory=80 * MB)
    c.wait_for_nodes()
    ray.init(
        address=c.address,
        runtime_env={"env_vars": {"PYTHONPATH": ROOT}},
        logging_level=logging.WARNING,
        log_to_driver=False,
    )
    try:
        yield c
    finally:
        ray.shutdown()
        c.shutdown()


@pytest.fixture
def server() -> Iterator[EmbeddedServer]:
    with EmbeddedServer(latency_s=0.05) as s:
        yield s


def tasks(n: int, **extra: Any) -> list[dict[str, Any]]:
    return [{"id": f"t{i}", "a": i, "b": 2, "answer": i + 2, **extra} for i in range(n)]


def settings(urls: list[str], executor: str = "ray", **over: Any) -> dict[str, Any]:
    base: dict[str, Any] = {
        "executor": executor,
        "seed": 7,
        "samples_per_task": 1,
        "concurrency": 8,
        "episode_timeout_s": 60,
        "backend": {
            "kind": "remote",
            "urls": urls,
            "sampling": {"temperature": 1.0, "max_tokens": 4},
        },
        "ray": {"num_workers": 2, "concurrency_per_worker": 4, "num_cpus_per_worker": 0.5},
        "output": {"path": None},
        "progress": False,
    }
    return {**base, **over}


def collector(urls: list[str], agent: str = "examples.arithmetic:episode", **over: Any) -> Collector:
    """Not started: `with collector(...) as c` starts it."""
    return Collector(agent=agent, **settings(urls, **over))


def run_batch(
    c: Collector, task_list: list[dict[str, Any]], on: Callable[[int], None] | None = None
) -> list[Episode]:
    """All episodes of a batch; `on(n)` runs (blocking the driver loop) after the n-th arrives."""

    async def main() -> list[Episode]:
        out: list[Episode] = []
        async for ep in c.arun(c.jobs(task_list)):
            out.append(ep)
            if on is not None:
                on(len(out))
        return out

    return asyncio.run(main())


def assert_exactly_once(episodes: list[Episode], task_list: list[dict[str, Any]]) -> None:
    uids = [e.uid for e in episodes]
    assert len(uids) == len(task_list)
    assert set(uids) == {f"{t['id']}:0" for t in task_list}
    bad = [(e.uid, e.status.value, e.error) for e in episodes if e.status not in FINISHED]
    assert not bad, bad
    assert all(e.calls for e in episodes)


def call_versions(episode: Episode) -> set[int]:
    return {int(v) for call in episode.calls for ch in call.choices for v in ch.versions.to_array()}


def trajectories(episodes: list[Episode]) -> dict[str, tuple[Any, ...]]:
    return {
        e.uid: (
            e.status,
            e.reward,
            tuple(tuple(c.prompt_ids.tolist()) for c in e.calls),
            tuple(tuple(ch.ids.tolist()) for c in e.calls for ch in c.choices),
        )
        for e in episodes
    }


# ------------------------------------------------------------------ tests


def test_same_trajectories_as_local_executor(cluster: Any, server: EmbeddedServer) -> None:
    task_list = tasks(16)
    with Collector(agent="examples.arithmetic:episode", **settings([server.base_url], "local")) as c:
        local = c.run_batch(task_list)
    with collector([server.base_url]) as c:
        remote = c.run_batch(task_list)
    assert_exactly_once(remote, task_list)
    assert {e.metadata["worker"] for e in remote} == {0, 1}  # both workers took part
    assert trajectories(remote) == trajectories(local)
    assert sum(len(e.calls) for e in remote) > len(task_list)  # multi-turn episodes were compared


def test_routing_is_sticky_per_episode_and_balanced(cluster: Any) -> None:
    # Same policy on both servers, but each reports its own weight_version,
    # so every recorded call says which server produced it.
    with EmbeddedServer(latency_s=0.05) as a, EmbeddedServer(latency_s=0.05) as b:
        version = {a.base_url: 1000, b.base_url: 2000}
        a.set_weights(a.policy.get_weights(), 1000)
        b.set_weights(b.policy.get_weights(), 2000)
        task_list = tasks(40)
        with collector([a.base_url, b.base_url]) as c:
            episodes = c.run_batch(task_list)
        assert_exactly_once(episodes, task_list)
        for e in episodes:
            assert call_versions(e) == {version[e.metadata["server"]]}, e.uid
        per_server = Counter(e.metadata["server"] for e in episodes)
        assert set(per_server) == set(version)
        assert min(per_server.values()) >= len(task_list) // 4, per_server  # a fair share each
        # and routing changed nothing: the servers hold the same policy
        with collector([a.base_url]) as c:
            single = c.run_batch(task_list)
        assert trajectories(single) == trajectories(episodes)


def test_policy_version_hook_and_staleness(cluster: Any, server: EmbeddedServer) -> None:
    task_list = tasks(8)
    new_weights = Policy(seed=123).get_weights()
    pushed: list[int] = []

    def hook() -> None:
        pushed.append(push_weights(server.base_url, new_weights, 1))

    with collector([server.base_url], max_staleness=1, stale_action="flag") as c:
        first = c.run_batch(task_list)
        assert_exactly_once(first, task_list)
        assert all(call_versions(e) == {0} for e in first)

        c.set_policy_version(1, hook=hook)
        assert pushed == [1] and server.weight_version == 1
        second = c.run_batch(task_list)
        assert_exactly_once(second, task_list)
        assert all(call_versions(e) == {1} for e in second)
        assert not any(e.metadata.get("stale") for e in second)

        c.policy_version = 2  # one version behind: still within max_staleness
        assert not any(e.metadata.get("stale") for e in c.run_batch(task_list))
        c.policy_version = 3  # server still at 1: two behind -> stale
        flagged = c.run_batch(task_list)
        assert len(flagged) == len(task_list)
        assert all(e.metadata.get("stale") is True for e in flagged)

    with collector([server.base_url], max_staleness=1, stale_action="drop") as c:
        c.policy_version = 3
        assert c.run_batch(task_list) == []
        assert c.dropped_stale == len(task_list)
        c.policy_version = 1
        kept = c.run_batch(task_list)
        assert len(kept) == len(task_list) and c.dropped_stale == len(task_list)


def test_episode_timeout_and_per_worker_concurrency_cap(cluster: Any, server: EmbeddedServer) -> None:
    task_list = tasks(12, sleep=1.0)
    for t in task_list[:2]:
        t["sleep"] = 600  # far past the episode timeout
    with collector(
        [server.base_url],
        agent="tests.integration.test_ray:sleepy",
        episode_timeout_s=3,
        ray={"num_workers": 2, "concurrency_per_worker": 3, "num_cpus_per_worker": 0.5},
    ) as c:
        episodes = c.run_batch(task_list)
    by_uid = {e.uid: e for e in episodes}
    assert len(episodes) == len(by_uid) == len(task_list)
    for t in task_list:
        e = by_uid[f"{t['id']}:0"]
        expected = (EpisodeStatus.TIMEOUT,) if t["sleep"] == 600 else FINISHED
        assert e.status in expected, (e.uid, e.status, e.error)
    done = [e for e in episodes if e.status in FINISHED]
    peaks = {e.metadata["pid"]: e.metadata["peak"] for e in done}
    assert len(peaks) == 2  # both workers ran episodes
    assert max(peaks.values()) == 3  # the driver keeps each worker's queue full...
    assert all(p <= 3 for p in peaks.values())  # ...and never past concurrency_per_worker


def test_killed_workers_lose_no_episode(cluster: Any) -> None:
    with EmbeddedServer(latency_s=0.2) as s, collector([s.base_url]) as c:
        ex = c.executor
        pids = ray.get([w.pid.remote() for w in ex.workers])
        task_list = tasks(36)

        def fault(n: int) -> None:
            if n == 3:  # Ray restarts it (max_restarts)
                ray.kill(ex.workers[0], no_restart=False)
            elif n == 10:  # a crash from outside Ray: SIGKILL its process
                os.kill(pids[1], signal.SIGKILL)
            elif n == 18:  # dead for good: the executor must start a replacement
                ray.kill(ex.workers[0], no_restart=True)

        episodes = run_batch(c, task_list, on=fault)
        assert_exactly_once(episodes, task_list)
        assert ex.resubmitted >= 1
        assert ex.replaced >= 1
        assert ray.get([w.pid.remote() for w in ex.workers])  # a working pool remains
        # and the next batch runs normally on the revived pool
        again = c.run_batch(tasks(6))
        assert_exactly_once(again, tasks(6))


def test_streamed_episodes_are_not_kept_in_the_driver(
    cluster: Any, server: EmbeddedServer, tmp_path: Path
) -> None:
    refs: list[weakref.ref[Episode]] = []
    alive: list[int] = []
    n = 40

    def note(episode: Episode) -> None:
        refs.append(weakref.ref(episode))
        if len(refs) == n:
            gc.collect()
            alive.append(sum(r() is not None for r in refs[:-1]))

    summary = collect(
        agent="examples.arithmetic:episode",
        tasks=tasks(n),
        on_episode=note,
        **{**settings([server.base_url]), "output": {"path": str(tmp_path / "eps.jsonl")}},
    )
    assert summary.finished == n and summary.failed == 0
    assert alive == [0]


# ------------------------------------------------------------------ connecting
# Subprocesses, as a user runs them: they never touch the module's cluster.


def collect_cli(*overrides: str, env: dict[str, str], timeout: float = 240) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "rollout.cli", "collect", "--config", "configs/ray.yaml",
         "limit=2", "samples_per_task=1", "progress=false", *overrides],
        cwd=ROOT, capture_output=True, text=True, timeout=timeout, env=env,
    )  # fmt: skip


@pytest.fixture
def dead_address() -> Iterator[str]:
    """host:port where no Ray cluster answers: a port nothing listens on."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    yield f"127.0.0.1:{port}"


@pytest.fixture
def silent_address() -> Iterator[str]:
    """host:port that accepts connections and never answers (a hung head node)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        sock.listen(64)
        yield f"127.0.0.1:{sock.getsockname()[1]}"


def test_address_null_starts_a_new_local_cluster_whatever_ray_address_names(
    dead_address: str, tmp_path: Path
) -> None:
    """A dead cluster named by RAY_ADDRESS (or Ray's session files) is not joined."""
    env = {**os.environ, "RAY_ADDRESS": dead_address, "PYTHONPATH": ROOT}
    proc = collect_cli(f"output.path={tmp_path}/o.jsonl", env=env)
    assert proc.returncode == 0, proc.stderr[-3000:]
    rows = dict(line.rsplit(None, 1) for line in proc.stdout.splitlines() if line.strip())
    assert rows["finished"] == "2" and rows.get("  completed", "0") != "0"


@pytest.mark.parametrize("which", ["dead_address", "silent_address"])
def test_an_unreachable_address_fails_fast_with_a_clear_error(
    which: str, request: pytest.FixtureRequest, tmp_path: Path
) -> None:
    address = request.getfixturevalue(which)
    env = {**os.environ, "PYTHONPATH": ROOT}
    env.pop("RAY_ADDRESS", None)
    proc = collect_cli(
        f"ray.address={address}", "ray.connect_timeout_s=5", f"output.path={tmp_path}/o.jsonl",
        env=env, timeout=120,
    )  # fmt: skip
    assert proc.returncode == 2, proc.stderr[-3000:]
    assert address in proc.stderr and "ray.connect_timeout_s" in proc.stderr, proc.stderr[-3000:]
    assert "Traceback" not in proc.stderr and "TimeoutError" not in proc.stderr, proc.stderr[-3000:]
    assert not (tmp_path / "o.jsonl").exists()


def test_removing_a_node_mid_run_loses_no_episode(cluster: Any) -> None:
    """Last in the file: it takes the second node away."""
    head = cluster.head_node.node_id
    with EmbeddedServer(latency_s=0.2) as s, collector([s.base_url]) as c:
        ex = c.executor
        placed = ray.get([w.node_id.remote() for w in ex.workers])
        victims = [n for n in cluster.list_all_nodes() if n.node_id != head and n.node_id in placed]
        assert victims, f"no worker outside the head node: {placed}"
        task_list = tasks(40)

        def fault(n: int) -> None:
            if n == 4:
                cluster.remove_node(victims[0])

        episodes = run_batch(c, task_list, on=fault)
        assert_exactly_once(episodes, task_list)
        assert ex.resubmitted >= 1  # the node held episodes in flight
        nodes_after = {e.metadata["node_id"] for e in episodes[-8:]}
        assert victims[0].node_id not in nodes_after
