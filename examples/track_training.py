"""Watch a training run in wandb, MLflow and TensorBoard (all offline), then plot it from its events.

    pip install 'rollout-compat[trackers]' tensorboard matplotlib
    python examples/track_training.py [--iterations 12] [--png docs/tracking_run.png]
    tensorboard --logdir runs/tracking/tensorboard      # or: mlflow ui --backend-store-uri sqlite:///runs/tracking/mlflow.db
                                                        # or: wandb sync runs/tracking/wandb/offline-run-*

Trains the embedded policy as `rollout train` does (the same as
`rollout train tracking.trackers=[wandb,mlflow,tensorboard]`), then reads the
TensorBoard event files back with TensorBoard's own EventAccumulator and
draws the PNG that the README shows.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from rollout.training import train


def plot(log_dir: Path, png: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    acc = EventAccumulator(str(log_dir), size_guidance={"scalars": 0})
    acc.Reload()

    def series(tag: str) -> tuple[list[int], list[float]]:
        events = acc.Scalars(tag)
        return [e.step for e in events], [e.value for e in events]

    fig, axes = plt.subplots(1, 3, figsize=(11, 3.2))
    steps, mean = series("train/mean_reward")
    _, std = series("train/reward_std")
    axes[0].plot(steps, mean, marker="o", ms=3)
    axes[0].fill_between(
        steps,
        [m - s for m, s in zip(mean, std, strict=True)],
        [m + s for m, s in zip(mean, std, strict=True)],
        alpha=0.2,
    )
    axes[0].set(title="train/mean_reward (± std)", xlabel="iteration", ylim=(-0.05, 1.05))
    for tag, label in (
        ("collect/calls_as_tokens", "as token ids"),
        ("collect/calls_as_messages", "as messages"),
    ):
        axes[1].plot(*series(tag), marker="o", ms=3, label=label)
    axes[1].set(title="calls per batch", xlabel="iteration")
    axes[1].legend(fontsize=8)
    phases = ("collect_s", "export_s", "loss_s", "step_s", "push_s")
    bottom = [0.0] * len(steps)
    for phase in phases:
        s, v = series(f"train/{phase}")
        values = dict(zip(s, v, strict=True))
        heights = [values.get(i, 0.0) for i in steps]
        axes[2].bar(steps, heights, bottom=bottom, label=phase.removesuffix("_s"))
        bottom = [b + h for b, h in zip(bottom, heights, strict=True)]
    axes[2].set(title="seconds per iteration", xlabel="iteration")
    axes[2].legend(fontsize=7, ncol=2)
    for ax in axes:
        ax.grid(alpha=0.3)
    fig.suptitle(f"run {log_dir.name}, read back from its TensorBoard events", fontsize=9)
    fig.tight_layout()
    png.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(png, dpi=80)
    print(f"wrote {png}")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--iterations", type=int, default=12)
    parser.add_argument("--dir", default="runs/tracking", help="every tracker's local files")
    parser.add_argument("--run-name", default="train-tiny")
    parser.add_argument("--png", default="runs/tracking_run.png")
    args = parser.parse_args(argv)
    tracking = {
        "trackers": ["wandb", "mlflow", "tensorboard"],
        "dir": args.dir,
        "run_name": args.run_name,
    }
    history = train(iterations=args.iterations, target=None, tracking=tracking)
    print(f"mean reward {history[0]['mean_reward']:.3f} -> {history[-1]['mean_reward']:.3f}")
    plot(Path(args.dir) / "tensorboard" / args.run_name, Path(args.png))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
