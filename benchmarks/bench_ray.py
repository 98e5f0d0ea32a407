"""Collection efficiency of the Ray executor, next to the local executor on the same work.

Prints ONE JSON line. The workload: N episodes of a deterministic agent that
always makes exactly 3 chat calls (max_tokens small), W Ray workers with C
episodes each in flight, against the embedded server with a fixed latency L.

- efficiency = ideal / ray_time, ideal = N * 3 * L / (W * C): the time if
  clients, recording and Ray cost nothing and the server answered in exactly L.
- ray_vs_local = ray_time / local_time, the local executor running the same
  jobs at concurrency W * C in this (driver) process.
- overhead_ms_per_episode = (ray_time - local_time) / N at latency L, and at
  zero latency the wall time per episode of each executor (CPU-bound: what an
  episode costs end to end); noop_ms_per_episode is an agent that makes no
  call at all, so it is the Ray round trip (submit, run, pickle, ray.wait) alone.

The servers run in their own processes (multiprocessing, spawn), so their CPU
does not compete with the driver under the GIL. cpu_ms_per_call splits the CPU of each run
(/proc) between driver, Ray workers and server; cpu_demand_cores is what the
ideal call rate would need. Ray start-up and worker
creation are excluded: each collector is warmed up with one batch first;
runs are interleaved (local, ray, ...) and medians of the repeats reported.

    python benchmarks/bench_ray.py [--episodes 480] [--workers 2] [--per-worker 4]
        [--latency-ms 20] [--repeats 3] [--max-tokens 2] [--profile]
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import platform
import statistics
import sys
import time
from typing import Any

from _common import ROOT, TURNS, cpu_s, make_tasks, remote_backend, server_process


def settings(executor: str, url: str, args: argparse.Namespace) -> dict[str, Any]:
    return {
        "executor": executor,
        "concurrency": args.workers * args.per_worker,
        "episode_timeout_s": 120,
        "backend": remote_backend(url, args.max_tokens),
        "ray": {"num_workers": args.workers, "concurrency_per_worker": args.per_worker, "num_cpus_per_worker": 0.5},
        "output": {"path": None},
        "progress": False,
    }


def timed(collector: Any, n: int, offset: int, pids: dict[str, list[int]] | None = None) -> tuple[float, dict[str, float]]:
    """(wall s, CPU s per process group) for one batch of n episodes; checks they all completed."""
    pids = pids or {}
    before = {k: sum(cpu_s(p) for p in v) for k, v in pids.items()}
    driver, start = time.process_time(), time.perf_counter()
    episodes = collector.run_batch(make_tasks(n, offset))
    wall = time.perf_counter() - start
    cpu = {"driver": time.process_time() - driver, **{k: sum(cpu_s(p) for p in v) - before[k] for k, v in pids.items()}}
    bad = [e for e in episodes if e.status.value not in ("completed", "truncated")]
    if len(episodes) != n or bad:
        raise RuntimeError(f"{len(episodes)}/{n} episodes, {len(bad)} failed: {bad[:1]}")
    return wall, cpu


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    p.add_argument("--episodes", type=int, default=480)
    p.add_argument("--workers", type=int, default=2)
    p.add_argument("--per-worker", type=int, default=4)
    p.add_argument("--latency-ms", type=float, default=20.0)
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--max-tokens", type=int, default=2)
    p.add_argument("--profile", action="store_true", help="cProfile the driver in one Ray run (stderr)")
    args = p.parse_args(argv)
    load_before = os.getloadavg()[0]  # other work on the box moves the wall-time ratios
    sys.path.insert(0, ROOT)
    os.environ["PYTHONPATH"] = os.pathsep.join(filter(None, [ROOT, os.environ.get("PYTHONPATH")]))

    import ray

    from rollout.collection import Collector

    agent = "benchmarks._common:three_turns"
    n = args.episodes
    total = args.workers * args.per_worker
    t0 = time.perf_counter()
    ray.init(
        num_cpus=2,
        object_store_memory=80 * 2**20,
        include_dashboard=False,
        runtime_env={"env_vars": {"PYTHONPATH": os.environ["PYTHONPATH"]}},
        logging_level=logging.WARNING,
        log_to_driver=False,
    )
    result: dict[str, Any] = {"benchmark": "ray_collect", "loadavg_1m_before": round(load_before, 2)}
    try:
        with server_process(args.latency_ms / 1000) as (url, server_pid), server_process(0.0) as (url0, _):
            with Collector(agent=agent, **settings("ray", url, args)) as ray_c, \
                    Collector(agent=agent, **settings("local", url, args)) as local_c:  # fmt: skip
                timed(ray_c, total * 2, 10**6)  # warm up: workers imported, connections open
                timed(local_c, total * 2, 10**6)
                startup_s = time.perf_counter() - t0
                worker_pids = ray.get([w.pid.remote() for w in ray_c.executor.workers])
                ray_pids = {"server": [server_pid], "workers": worker_pids}
                ray_runs, local_runs = [], []
                for r in range(args.repeats):
                    local_runs.append(timed(local_c, n, r * n, {"server": [server_pid]}))
                    ray_runs.append(timed(ray_c, n, r * n, ray_pids))
                if args.profile:
                    import cProfile
                    import pstats

                    prof = cProfile.Profile()
                    prof.enable()
                    timed(ray_c, n, 10**7)
                    prof.disable()
                    pstats.Stats(prof, stream=sys.stderr).sort_stats("cumulative").print_stats(25)
            zero: dict[str, float] = {}
            for executor in ("local", "ray"):
                with Collector(agent=agent, **settings(executor, url0, args)) as c:
                    timed(c, total * 2, 10**6)
                    zero[executor] = statistics.median(timed(c, n, r * n)[0] for r in range(args.repeats))
            with Collector(agent="benchmarks._common:noop", **settings("ray", url0, args)) as c:
                timed(c, total * 2, 10**6)
                noop_s = statistics.median(timed(c, n, r * n)[0] for r in range(args.repeats))
    finally:
        ray.shutdown()

    ray_s = statistics.median(w for w, _ in ray_runs)
    local_s = statistics.median(w for w, _ in local_runs)
    ideal = n * TURNS * (args.latency_ms / 1000) / total
    result.update({
        "episodes": n, "turns": TURNS, "workers": args.workers, "per_worker": args.per_worker,
        "total_concurrency": total, "latency_ms": args.latency_ms, "max_tokens": args.max_tokens,
        "ideal_s": round(ideal, 3), "ray_s": round(ray_s, 3), "local_s": round(local_s, 3),
        "efficiency": round(ideal / ray_s, 3), "local_efficiency": round(ideal / local_s, 3),
        "ray_vs_local": round(ray_s / local_s, 3),
        "overhead_ms_per_episode": round((ray_s - local_s) / n * 1000, 3),
        "cpu_ms_per_call": {
            name: {k: round(statistics.median(c[k] for _, c in runs) / (n * TURNS) * 1000, 3) for k in runs[0][1]}
            for name, runs in (("ray", ray_runs), ("local", local_runs))
        },
        # CPU the ideal call rate would need (all processes): above the machine's
        # cores, the run is CPU-bound and efficiency measures the box, not Ray.
        "cpu_demand_cores": round(
            n * TURNS / ideal * statistics.median(sum(c.values()) for _, c in ray_runs) / (n * TURNS), 2
        ),
        "zero_latency_ms_per_episode": {k: round(v / n * 1000, 3) for k, v in zero.items()},
        "noop_ms_per_episode": round(noop_s / n * 1000, 3),
        "startup_excluded_s": round(startup_s, 2), "target_efficiency": 0.75,
        "server": "own process (multiprocessing spawn)", "cpus": os.cpu_count(),
        "python": platform.python_version(), "ray": ray.__version__,
    })  # fmt: skip
    print(json.dumps(result))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
