"""Peak memory of `rollout collect` against the number of episodes, output streamed to disk.

Prints ONE JSON line. Each (executor, size) runs in a fresh process: the
`collect` of N one-call episodes (tasks from a JSONL file, written to a
JSONL journal) against the embedded server in its own process. The figures:

- peak_rss_mb: the collecting process's peak RSS (ru_maxrss); with Ray, also
  the largest peak RSS (VmHWM) a worker reported with its last episode.
- growth_mb: peak minus the RSS after a warm-up batch (imports, clients,
  Ray workers), so what the run itself added.
- bytes_per_episode: the slope of peak RSS between the smallest and the
  largest size. Flat memory is a slope near 0 (before the fix: about 11 KB,
  every finished episode was kept until the end).
- peak_ratio: peak at the largest size / peak at the smallest, measured in
  the same run (target <= 1.10).

    python benchmarks/bench_memory.py [--sizes 1000,10000,30000] [--executors local,ray]
        [--samples-per-task 4] [--concurrency 64]
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import platform
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from _common import ROOT, make_tasks, remote_backend, server_process, status_kb

AGENT = "benchmarks._common:one_call"


def child(args: argparse.Namespace) -> None:
    """One measurement in this fresh process: warm up, then collect N episodes to disk."""
    sys.path.insert(0, ROOT)
    from rollout.collection import collect

    work = Path(args.work)
    settings: dict[str, Any] = {
        "agent": AGENT,
        "executor": args.executor,
        "samples_per_task": args.samples_per_task,
        "concurrency": args.concurrency,
        "episode_retries": 0,
        "progress": False,
        "backend": remote_backend(args.url, 1),
        "ray": {"num_workers": 2, "concurrency_per_worker": args.concurrency // 2, "num_cpus_per_worker": 0.5},
    }
    if args.executor == "ray":
        import ray

        ray.init(
            num_cpus=2,
            object_store_memory=80 * 2**20,
            include_dashboard=False,
            runtime_env={"env_vars": {"PYTHONPATH": ROOT}},
            logging_level=logging.WARNING,
            log_to_driver=False,
        )
    warm = make_tasks(args.concurrency)
    collect(tasks=warm, output={"path": str(work / "warm.jsonl"), "resume": False}, **settings)
    base_kb = status_kb("self", "VmRSS")
    t0 = time.perf_counter()
    worker_peak_kb: dict[int, int] = {}  # Ray worker pid -> its latest reported peak RSS

    def note(episode: Any) -> None:
        if episode.metadata["pid"] != os.getpid():
            worker_peak_kb[episode.metadata["pid"]] = episode.metadata["peak_kb"]

    summary = collect(
        tasks=str(work / "tasks.jsonl"),
        output={"path": str(work / f"{args.executor}-{args.episodes}.jsonl"), "resume": False},
        on_episode=note,
        **settings,
    )
    wall = time.perf_counter() - t0
    if summary.finished != args.episodes or summary.failed:
        raise RuntimeError(f"run incomplete: {summary.finished}/{args.episodes}, {summary.statuses}")
    peak_kb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss  # KiB on Linux
    print(json.dumps({
        "peak_kb": peak_kb, "base_kb": base_kb, "worker_peak_kb": max(worker_peak_kb.values(), default=0),
        "wall_s": wall, "kept_in_summary": len(summary.episodes),
    }))  # fmt: skip


def measure(executor: str, n: int, url: str, work: Path, args: argparse.Namespace) -> dict[str, Any]:
    tasks = make_tasks(n // args.samples_per_task)
    (work / "tasks.jsonl").write_text("".join(json.dumps(t) + "\n" for t in tasks))
    cmd = [
        sys.executable, __file__, "--child", "--executor", executor, "--episodes", str(n),
        "--url", url, "--work", str(work), "--samples-per-task", str(args.samples_per_task),
        "--concurrency", str(args.concurrency),
    ]  # fmt: skip
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [ROOT, os.environ.get("PYTHONPATH")]))}
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env, check=False)
    if proc.returncode != 0:
        raise RuntimeError(f"{executor} {n}: exit {proc.returncode}\n{proc.stderr[-3000:]}")
    out = json.loads(proc.stdout.strip().splitlines()[-1])
    for f in (work / f"{executor}-{n}.jsonl", work / "warm.jsonl"):
        f.unlink(missing_ok=True)
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--sizes", default="1000,10000,30000")
    ap.add_argument("--executors", default="local,ray")
    ap.add_argument("--samples-per-task", type=int, default=4)
    ap.add_argument("--concurrency", type=int, default=64)
    ap.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    ap.add_argument("--executor", help=argparse.SUPPRESS)
    ap.add_argument("--episodes", type=int, help=argparse.SUPPRESS)
    ap.add_argument("--url", help=argparse.SUPPRESS)
    ap.add_argument("--work", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.child:
        child(args)
        return

    sizes = [int(x) for x in args.sizes.split(",")]
    report: dict[str, Any] = {"bench": "memory", "sizes": sizes, "samples_per_task": args.samples_per_task}
    load_before = os.getloadavg()[0]
    with server_process(0.0) as (url, _), tempfile.TemporaryDirectory() as tmp:
        for executor in args.executors.split(","):
            runs = [measure(executor, n, url, Path(tmp), args) for n in sizes]
            mb = [r["peak_kb"] / 1024 for r in runs]
            row: dict[str, Any] = {
                "peak_rss_mb": [round(m, 1) for m in mb],
                "growth_mb": [round((r["peak_kb"] - r["base_kb"]) / 1024, 1) for r in runs],
                "bytes_per_episode": round((mb[-1] - mb[0]) * 2**20 / (sizes[-1] - sizes[0])),
                "peak_ratio": round(mb[-1] / mb[0], 3),
                "episodes_per_s": [round(n / r["wall_s"], 1) for n, r in zip(sizes, runs, strict=True)],
            }
            if executor == "ray":
                w = [r["worker_peak_kb"] / 1024 for r in runs]
                row["worker_peak_rss_mb"] = [round(x, 1) for x in w]
                row["worker_bytes_per_episode"] = round((w[-1] - w[0]) * 2**20 / (sizes[-1] - sizes[0]))
            report[executor] = row
    report.update({
        "peak_ratio_target": 1.10, "loadavg_1m_before": round(load_before, 2),
        "python": platform.python_version(), "cpus": os.cpu_count(),
    })  # fmt: skip
    print(json.dumps(report))


if __name__ == "__main__":
    main()
