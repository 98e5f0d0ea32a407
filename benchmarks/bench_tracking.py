"""What experiment tracking costs a collection run. Prints ONE JSON line.

Measured piece by piece, since end-to-end wall ratios on a shared 2-core
machine swing by more than the cost itself:

- `collect_ms_per_episode`: wall time per episode of the demo collection
  with no tracker (the unit everything is compared to).
- `update_us_per_episode`: rollout's own work per finished episode when
  trackers are on (`CollectLog.update`: counts, the drift check, the sample
  reservoir), on the recorded episodes, with no tracker behind it.
- `log_ms_<tracker>`: one progress log (the ~20 `collect/...` metrics of
  that run) through each tracker's SDK, median of many; `table_ms_<tracker>`:
  the end-of-run sample table (8 episodes). wandb's core runs in a child
  process: `wandb_core_cpu_ms_per_log` is its CPU per log.
- `overhead_share_at_<interval>`: the fraction of collection time all three
  trackers add, from the above: (update + logs per episode) / collect time
  per episode, at the default `interval_s` (10 s) and at 0 (a log after every
  episode, the worst case).
- `wall_ratio_all_at_10s`: the end-to-end check, off / with all three
  (1.0 = free; medians of interleaved runs; noisy here).

    python benchmarks/bench_tracking.py [--episodes 256] [--repeats 3] [--logs 100]
    (needs the trackers: pip install 'rollout-compat[trackers]')
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import tempfile
import time
import warnings
from pathlib import Path
from typing import Any

from rollout import collect
from rollout.tracking import CollectLog, EpisodeStats, Tracker, TrackingSpec
from rollout.tracking.metrics import COLUMNS, sample_rows

TRACKERS = ("tensorboard", "mlflow", "wandb")
TICK = os.sysconf("SC_CLK_TCK")


def children_cpu(pid: int = os.getpid()) -> float:
    """CPU seconds of every live descendant process (Linux /proc)."""
    total = 0.0
    for task in Path(f"/proc/{pid}/task").iterdir():
        try:
            kids = (task / "children").read_text().split()
        except OSError:
            continue
        for kid in map(int, kids):
            try:
                fields = Path(f"/proc/{kid}/stat").read_text().rsplit(")", 1)[1].split()
            except OSError:
                continue
            total += (int(fields[11]) + int(fields[12])) / TICK + children_cpu(kid)
    return total


def wall(episodes: int, trackers: list[str], root: str, keep: list[Any] | None = None) -> float:
    summary = collect(
        limit=episodes // 8, samples_per_task=8, progress=False, output={"path": None},
        on_episode=keep.append if keep is not None else None,
        tracking={"trackers": trackers, "dir": root},
    )  # fmt: skip
    return summary.wall_s


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--episodes", type=int, default=256)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--logs", type=int, default=100)
    args = parser.parse_args(argv)
    warnings.simplefilter("ignore")
    out: dict[str, Any] = {"bench": "tracking", "episodes": args.episodes}
    with tempfile.TemporaryDirectory() as root:
        recorded: list[Any] = []
        wall(args.episodes, [], root, recorded)  # warm-up, and the episodes to replay
        wall(32, list(TRACKERS), root)  # warm-up: imports, mlflow's store
        off, on = [], []
        for _ in range(args.repeats):
            off.append(wall(args.episodes, [], root))
            on.append(wall(args.episodes, list(TRACKERS), root))
        per_episode_s = statistics.median(off) / args.episodes
        out["collect_ms_per_episode"] = round(per_episode_s * 1e3, 3)

        log = CollectLog(Tracker(TrackingSpec()), TrackingSpec(trackers=["tensorboard"]))
        start = time.perf_counter()
        for episode in recorded:
            log._update(episode)  # the work behind update(), which skips it once no tracker is left
        update_s = (time.perf_counter() - start) / len(recorded)
        out["update_us_per_episode"] = round(update_s * 1e6, 1)

        stats = EpisodeStats()
        for episode in recorded:
            stats.update(episode)
        metrics = stats.metrics("collect", rates=True)
        rows = [r for ep in recorded[:8] for r in sample_rows(ep, 1000)]
        log_s = 0.0
        for name in TRACKERS:
            spec = TrackingSpec(trackers=[name], dir=root, run_name=f"bench-{name}")
            with Tracker(spec, kind="bench") as tracker:
                times = []
                cpu0 = children_cpu()
                for step in range(args.logs):
                    start = time.perf_counter()
                    tracker.log(metrics, step=step)
                    times.append(time.perf_counter() - start)
                if name == "wandb":
                    time.sleep(1.0)  # let its core catch up before reading its CPU
                    out["wandb_core_cpu_ms_per_log"] = round(
                        (children_cpu() - cpu0) / args.logs * 1e3, 3
                    )
                start = time.perf_counter()
                tracker.table("collect/samples", COLUMNS, rows, step=args.logs)
                out[f"table_ms_{name}"] = round((time.perf_counter() - start) * 1e3, 2)
            out[f"log_ms_{name}"] = round(statistics.median(times) * 1e3, 3)
            log_s += statistics.median(times)
        log_s += out.get("wandb_core_cpu_ms_per_log", 0.0) / 1e3
    for interval in (10.0, 0.0):
        logs_per_episode = 1.0 if interval == 0 else per_episode_s / interval
        share = (update_s + logs_per_episode * log_s) / per_episode_s
        out[f"overhead_share_at_{interval:g}s"] = round(share, 4)
    out["wall_ratio_all_at_10s"] = round(statistics.median(off) / statistics.median(on), 3)
    print(json.dumps(out))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
