"""Train the embedded policy from recorded data, end to end, offline.

    python examples/train_tiny.py [--iterations 40] [--plot runs/reward.png]
    rollout train                       # the same, from the CLI

Each iteration collects a batch of arithmetic episodes on the embedded server,
exports it with `to_verl`, checks it is exactly on-policy (recorded logprobs
equal the trainer's recomputed ones; every call carries the pushed version),
takes a GRPO-style REINFORCE step from the exported arrays alone, and pushes
the new weights to the server. Mean reward climbs from ~0 to >= 0.8.
"""

from __future__ import annotations

import argparse

from rollout.demo import TASKS, TRAIN_CONFIG
from rollout.training import train


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--config", default=str(TRAIN_CONFIG))
    parser.add_argument("--iterations", type=int, default=40)
    parser.add_argument("--lr", type=float, default=12.5)
    parser.add_argument("--target", type=float, default=0.8, help="stop once mean reward reaches this")
    parser.add_argument("--plot", default="runs/train_tiny.png", help="PNG of the reward curve (needs matplotlib)")
    args = parser.parse_args(argv)
    history = train(args.config, iterations=args.iterations, lr=args.lr, target=args.target, plot=args.plot,
                    tasks=str(TASKS))  # the 48 arithmetic tasks (the config names none)
    first, last = history[0]["mean_reward"], history[-1]["mean_reward"]
    print(f"mean reward {first:.3f} -> {last:.3f} in {len(history)} iterations")
    return 0 if args.target is None or last >= args.target else 1


if __name__ == "__main__":
    raise SystemExit(main())
