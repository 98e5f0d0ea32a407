"""What experiment tracking costs a collection run. Prints ONE JSON line.

Two measures:

- `update_us_per_episode`: rollout's own work per finished episode when
  trackers are on (`CollectLog.update`: counts, the drift check, the sample
  reservoir), timed on recorded episodes with no tracker behind it; compare
  `collect_ms_per_episode`, the wall time per episode of the same run.
- `ratio_<trackers>`: collection throughput with the trackers on over with
  none (1.0 = free), for each tracker alone and all three, at the default
  `interval_s` (10 s) and at `interval_s: 0` (a log after every episode, the
  worst case). Trackers start before the clock (mlflow's first start builds
  its sqlite store: seconds). wandb's core runs in its own process; its CPU
  is not in this process's. Runs interleave after a warm-up; medians.

    python benchmarks/bench_tracking.py [--episodes 256] [--repeats 3]
    (needs the trackers: pip install 'rollout-compat[trackers]')
"""

from __future__ import annotations

import argparse
import json
import statistics
import tempfile
import time
import warnings
from typing import Any

from rollout import collect
from rollout.tracking import CollectLog, Tracker, TrackingSpec

MODES: dict[str, list[str]] = {
    "off": [],
    "tensorboard": ["tensorboard"],
    "mlflow": ["mlflow"],
    "wandb": ["wandb"],
    "all": ["wandb", "mlflow", "tensorboard"],
}


def run(
    episodes: int, trackers: list[str], interval_s: float, root: str
) -> tuple[float, list[Any]]:
    keep: list[Any] = []
    summary = collect(
        limit=episodes // 8, samples_per_task=8, progress=False, output={"path": None},
        on_episode=keep.append if not trackers else None,
        tracking={"trackers": trackers, "dir": root, "interval_s": interval_s},
    )  # fmt: skip
    return summary.wall_s, keep


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--episodes", type=int, default=256)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args(argv)
    warnings.simplefilter("ignore")
    walls: dict[str, list[float]] = {}
    recorded: list[Any] = []
    with tempfile.TemporaryDirectory() as root:
        run(32, ["wandb", "mlflow", "tensorboard"], 10.0, root)  # warm-up: imports, mlflow's store
        for _ in range(args.repeats):
            for interval in (10.0, 0.0):
                for mode, trackers in MODES.items():
                    if mode == "off" and interval == 0.0:
                        continue
                    wall, eps = run(args.episodes, trackers, interval, root)
                    recorded = eps or recorded
                    walls.setdefault(mode if mode == "off" else f"{mode}@{interval:g}s", []).append(
                        wall
                    )
    off = statistics.median(walls["off"])
    log = CollectLog(Tracker(TrackingSpec()), TrackingSpec(trackers=["tensorboard"]))
    start = time.perf_counter()
    for episode in recorded:
        log._update(episode)  # the work behind update(), which skips it once no tracker is left
    update_us = (time.perf_counter() - start) / len(recorded) * 1e6
    out = {
        "bench": "tracking",
        "episodes": args.episodes,
        "repeats": args.repeats,
        "collect_ms_per_episode": round(off / args.episodes * 1e3, 3),
        "update_us_per_episode": round(update_us, 1),
        **{
            f"ratio_{k.replace('@', '_at_')}": round(off / statistics.median(v), 3)
            for k, v in walls.items()
            if k != "off"
        },
    }
    print(json.dumps(out))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
