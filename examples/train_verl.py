"""Train a real transformer with verl's own update on recorded episodes, offline, end to end.

    python examples/train_verl.py [--config configs/train_verl.yaml] [key=value ...]
    rollout train --trainer verl     # the same, from the CLI

Needs torch, transformers and verl (docs/training.md: `pip install -e ".[train]"`
and verl's CPU recipe). Each iteration: the unchanged arithmetic agent collects
a batch on the embedded server, which serves a tiny Qwen3 (random init, CPU);
`to_verl` exports it; verl's GRPO advantage and PPO policy loss (imported from
verl) give the update; AdamW steps; the weights go back through the server's
/update_weights. Every iteration checks the recorded logprobs against the
model's recomputed ones and every call's version against the one pushed.
Writes the reward curve (PNG, needs matplotlib) and the per-iteration stats (JSON).
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import sys
from pathlib import Path

from rollout.demo import TASKS, TRAIN_VERL_CONFIG


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--config", default=str(TRAIN_VERL_CONFIG))
    parser.add_argument("--plot", default="runs/train_verl.png", help="PNG of the reward curve")
    parser.add_argument("--history", default="runs/train_verl.json", help="per-iteration stats")
    parser.add_argument("overrides", nargs="*", help="key=value, e.g. trainer.iterations=10")
    args = parser.parse_args(argv)
    missing = [m for m in ("torch", "transformers", "verl") if importlib.util.find_spec(m) is None]
    if missing:
        print(f"examples/train_verl.py needs {', '.join(missing)}: pip install -e '.[train]', "
              "then verl (docs/training.md)", file=sys.stderr)  # fmt: skip
        return 2
    from rollout.training import load_train_config, train_verl

    config = load_train_config(args.config, args.overrides)
    Path(args.history).parent.mkdir(parents=True, exist_ok=True)
    history = train_verl(config, plot=args.plot, tasks=config.collect.tasks or str(TASKS))
    Path(args.history).write_text(json.dumps(history, indent=1))
    first, last = history[0]["mean_reward"], history[-1]["mean_reward"]
    print(f"mean reward {first:.3f} -> {last:.3f} in {len(history)} iterations "
          f"({sum(h['total_s'] for h in history):.0f} s)")  # fmt: skip
    target = config.trainer.target
    return 0 if target is None or last >= target else 1


if __name__ == "__main__":
    raise SystemExit(main())
