"""The `rollout` command: collect, train, serve, inspect, export.

    rollout collect [--config configs/local.yaml] [key=value ...]
    rollout train [--iterations 40] [--trainer numpy|verl] [--rollout collector|agent_loop] [--save policy.npz]
    rollout serve [--port 8000] [--weights policy.npz ...]
    rollout inspect runs/local.jsonl [--episode 0]
    rollout export runs/local.jsonl --to areal|rllm|verl|hf --out FILE
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import sys
import threading
import time
import warnings
from pathlib import Path
from typing import Any

import numpy as np

from rollout import demo


def _cmd_collect(args: argparse.Namespace) -> int:
    """Exit 0; 2 for a bad config or no tasks; 1 for a run with nothing to train; 130 on Ctrl-C."""
    from rollout.collection import ConfigError, collect
    from rollout.collection.config import apply_overrides, validate_config
    from rollout.errors import NoTrainableDataError, OutputLockedError

    overrides = [*args.overrides, *(["output.retry_failed=true"] if args.retry_failed else [])]
    try:
        if args.config is None:  # the shipped demo: the arithmetic agent on its 48 tasks
            config: Any = validate_config(apply_overrides(dict(demo.COLLECT), overrides))
            overrides = []
        else:
            config = args.config
        summary = collect(config, overrides=overrides)
    except (ConfigError, OutputLockedError) as exc:
        print(f"rollout collect: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        # Every finished episode is already a complete line in the journal.
        print("rollout collect: interrupted; run the same command again to resume", file=sys.stderr)
        return 130
    print(summary.table())
    try:
        summary.check()
    except NoTrainableDataError as exc:
        print(f"rollout collect: {exc}", file=sys.stderr)
        return 1
    return 0


def _cmd_serve(args: argparse.Namespace) -> int:
    """The embedded server in the foreground until Ctrl-C; prints its base URL once it listens."""
    from rollout.embedded import EmbeddedServer, Limits, Policy

    try:
        policy = Policy.load(args.weights) if args.weights else Policy(seed=args.seed)
    except (OSError, ValueError, KeyError) as exc:
        print(f"rollout serve: cannot load --weights {args.weights}: {exc}", file=sys.stderr)
        return 2
    given = {
        "max_body_bytes": args.max_body_mb and int(args.max_body_mb * 2**20),
        "max_generated_tokens": args.max_generated_tokens,
        "max_reply_bytes": args.max_reply_mb and int(args.max_reply_mb * 2**20),
        "read_timeout_s": args.read_timeout_s,
    }
    limits = Limits(**{k: v for k, v in given.items() if v is not None})
    server = EmbeddedServer(
        policy,
        host=args.host,
        port=args.port,
        api_key=args.api_key,
        model_name=args.model,
        latency_s=args.latency_ms / 1000,
        latency_per_token_s=args.latency_per_token_ms / 1000,
        seed=args.seed,
        limits=limits,
    )
    try:
        server.start()
    except OSError as exc:
        print(f"rollout serve: cannot serve on {args.host}:{args.port}: {exc}", file=sys.stderr)
        return 1
    if threading.current_thread() is threading.main_thread():  # SIGTERM stops it like Ctrl-C
        signal.signal(signal.SIGTERM, signal.default_int_handler)
    auth = "on" if args.api_key else "off"
    print(f"embedded server listening on {server.base_url} (model {args.model!r}, auth {auth})",
          flush=True)  # fmt: skip
    try:
        while True:  # short sleeps: signals are handled even where a blocked wait is not woken
            time.sleep(0.5)
    except KeyboardInterrupt:
        pass
    finally:
        server.stop()
    return 0


def _cmd_train(args: argparse.Namespace) -> int:
    """Exit 0 when the target is reached; 1 when not (or off-policy data); 2 for a bad config."""
    from rollout.errors import ConfigError, OffPolicyError

    try:
        if args.trainer == "verl":
            history, target = _train_verl(args)
        else:
            if args.rollout is not None:
                raise ConfigError("--rollout chooses how --trainer verl collects; the numpy trainer has one way")
            from rollout.training import train

            target = 0.8 if args.target is None else args.target
            history = train(
                args.config or str(demo.TRAIN_CONFIG), iterations=args.iterations or 40,
                tasks=None if args.config else str(demo.TASKS),
                lr=12.5 if args.lr is None else args.lr, target=target,
                plot=args.plot or "runs/train_tiny.png", overrides=args.overrides, save=args.save,
            )  # fmt: skip
    except ConfigError as exc:
        print(f"rollout train: {exc}", file=sys.stderr)
        return 2
    except OffPolicyError as exc:
        print(f"rollout train: {exc}", file=sys.stderr)
        return 1
    first, last = history[0]["mean_reward"], history[-1]["mean_reward"]
    print(f"mean reward {first:.3f} -> {last:.3f} in {len(history)} iterations")
    return 0 if target is None or last >= target else 1


def _train_verl(args: argparse.Namespace) -> tuple[list[dict[str, Any]], float | None]:
    """verl's update on the torch policy; flags override the config's `trainer` section."""
    from rollout.errors import ConfigError

    try:
        from rollout.training.verl_trainer import load_train_config, train_verl
    except ImportError as exc:
        raise ConfigError(
            f"--trainer verl needs torch, transformers and verl ({exc}); see docs/training.md"
        ) from None
    if args.save:
        raise ConfigError("--save writes the numpy policy; --trainer verl does not take it")
    flags = {"iterations": args.iterations, "lr": args.lr, "target": args.target, "rollout": args.rollout}
    config = load_train_config(
        args.config, args.overrides, **{k: v for k, v in flags.items() if v is not None}
    )
    tasks = None if args.config else str(demo.TASKS)
    history = train_verl(config, plot=args.plot or "runs/train_verl.png", tasks=tasks)
    return history, config.trainer.target


class UsageError(Exception):
    """A bad argument or input file: `main` prints it as one line and exits 2."""


def _load(path: str) -> list[Any]:
    """The episodes of a JSONL journal or Parquet file/folder; UsageError for anything else."""
    from rollout.errors import CorruptLineWarning, RolloutError
    from rollout.export import read_jsonl, read_parquet

    p = Path(path)
    if not p.exists():
        raise UsageError(f"{p} does not exist")
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always", CorruptLineWarning)
        try:
            if p.is_dir() or p.suffix == ".parquet":
                parts = sorted(p.glob("part-*.parquet")) if p.is_dir() else [p]
                episodes = [ep for part in parts for ep in read_parquet(part)]
            else:
                episodes = read_jsonl(p)
        except (RolloutError, ValueError, OSError) as exc:
            raise UsageError(f"{p} is not a file of rollout episodes: {exc}") from None
    if not episodes:
        why = f" ({caught[0].message})" if caught else ""
        raise UsageError(
            f"{p} holds no rollout episodes{why}; give a JSONL journal or Parquet "
            "written by `rollout collect`"
        )
    for w in caught:  # a journal with a damaged line still loads; say which line was skipped
        warnings.showwarning(w.message, w.category, w.filename, w.lineno)
    return episodes


def _cmd_inspect(args: argparse.Namespace) -> int:
    from rollout.inspect import show_episode, summarize

    episodes = _load(args.file)
    print(summarize(episodes))
    if episodes and args.episode is not None:
        if not 0 <= args.episode < len(episodes):
            print(f"rollout inspect: --episode must be in [0, {len(episodes)})", file=sys.stderr)
            return 2
        print()
        print(show_episode(episodes[args.episode], args.tokens))
    if args.html:
        from rollout.inspect import write_html

        write_html(episodes, args.html, index=args.episode or 0)
        print(f"wrote {args.html}")
    return 0


EXPORT_SUFFIXES = {"areal": (".npz",), "verl": (".npz",), "rllm": (".json", ".jsonl")}
"""What `rollout export --to X` writes: numpy arrays (.npz), or rLLM's episode dicts as a
JSON array (.json) or one per line (.jsonl). Any other --out is refused, not renamed.
`--to hf` writes a `datasets` directory (save_to_disk)."""


def _cmd_export(args: argparse.Namespace) -> int:
    from rollout.export import to_areal, to_rllm, to_verl, write_verl
    from rollout.export.rows import json_default

    out = Path(args.out)
    suffixes = EXPORT_SUFFIXES.get(args.to)  # hf writes a directory
    if suffixes is not None and out.suffix.lower() not in suffixes:
        print(f"rollout export: --to {args.to} writes {' or '.join(suffixes)}; "
              f"--out {out} has another extension", file=sys.stderr)  # fmt: skip
        return 2
    episodes = _load(args.file)
    out.parent.mkdir(parents=True, exist_ok=True)
    if args.to == "hf":
        from rollout.export.hf import write_hf

        try:
            n_rows = write_hf(episodes, out)
        except ImportError as exc:
            print(f"rollout export: {exc}", file=sys.stderr)
            return 2
        print(f"wrote {out} (hf datasets, {n_rows} training samples from {len(episodes)} episodes)")
        return 0
    if args.to == "rllm":
        rows = to_rllm(episodes)
        if out.suffix.lower() == ".jsonl":
            out.write_text("".join(json.dumps(r, default=json_default) + "\n" for r in rows))
        else:
            out.write_text(json.dumps(rows, default=json_default))
    elif args.to == "areal":
        areal: dict[str, Any] = to_areal(episodes)
        with out.open("wb") as f:  # a path would get ".npz" appended by numpy
            np.savez(f, **areal)
    else:
        write_verl(to_verl(episodes), out)  # DataProto.from_dict(**read_verl(out)) loads it
    print(f"wrote {out} ({args.to}, {len(episodes)} episodes)")
    return 0


TRAIN_OVERRIDE_EXAMPLES = {"numpy": "samples_per_task=8", "verl": "trainer.lr=0.003"}
"""The overrides `rollout train --help` shows, one per trainer (tests check each config takes its own)."""


def _positive(kind: type[float] | type[int]) -> Any:
    """An argparse type: a number of ``kind`` above zero."""

    def parse(text: str) -> float | int:
        value = kind(text)
        if value <= 0:
            raise argparse.ArgumentTypeError(f"must be > 0, got {text}")
        return value

    parse.__name__ = kind.__name__  # argparse names the type in its errors
    return parse


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="rollout", description=__doc__.split("\n\n")[0])
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("collect", help="collect episodes (the main job)")
    p.add_argument("--config", help="YAML config (see configs/); default: the arithmetic demo")
    p.add_argument("overrides", nargs="*", help="key=value overrides, e.g. concurrency=8")
    p.add_argument(
        "--retry-failed",
        action="store_true",
        help="on resume, run again the episodes that failed (output.retry_failed=true)",
    )
    p.set_defaults(fn=_cmd_collect)

    p = sub.add_parser("serve", help="run the embedded OpenAI-compatible server",
                       description="Serve the embedded policy in vLLM's wire format.")  # fmt: skip
    p.add_argument("--host", default="127.0.0.1", help="interface to bind (default 127.0.0.1)")
    p.add_argument("--port", type=int, default=8000, help="port to bind; 0 picks a free one")
    p.add_argument("--api-key", default=os.environ.get("ROLLOUT_API_KEY"),
                   help="require 'Authorization: Bearer KEY' (default: $ROLLOUT_API_KEY)")  # fmt: skip
    p.add_argument("--model", default="tiny", help="served model name (default tiny)")
    p.add_argument("--weights", help="policy .npz: `rollout train --save PATH` writes one")
    p.add_argument("--latency-ms", type=float, default=0.0, help="fixed delay per request")
    p.add_argument("--latency-per-token-ms", type=float, default=0.0,
                   help="delay per decode step")  # fmt: skip
    p.add_argument("--seed", type=int, default=0, help="policy init and default sampling seed")
    # Limits (rollout.embedded.Limits; None keeps its default).
    p.add_argument("--max-body-mb", type=_positive(float),
                   help="largest JSON request body, MiB (default 24; 413 above)")  # fmt: skip
    p.add_argument("--max-generated-tokens", type=_positive(int),
                   help="n x max_tokens over a request's prompts (default 65536; 400 above)")  # fmt: skip
    p.add_argument("--max-reply-mb", type=_positive(float),
                   help="largest reply, bounded before sampling, MiB (default 16; 400 above)")  # fmt: skip
    p.add_argument("--read-timeout-s", type=_positive(float),
                   help="for a request to arrive and a stream's reader to keep up (default 30)")  # fmt: skip
    p.set_defaults(fn=_cmd_serve)

    p = sub.add_parser("train", help="train the embedded policy from recorded data (proof it trains)")
    p.add_argument("--trainer", choices=["numpy", "verl"], default="numpy",
                   help="numpy: REINFORCE on the numpy policy; verl: verl's GRPO and PPO loss "
                        "on a tiny transformer (needs torch, transformers, verl)")  # fmt: skip
    p.add_argument("--rollout", choices=["collector", "agent_loop"],
                   help="verl: collect with our collector (default) or through verl's own "
                        "AgentLoopWorker running the agent as its agent loop")  # fmt: skip
    p.add_argument("--config", help="default: the shipped train_tiny.yaml / train_verl.yaml")
    p.add_argument("--iterations", type=_positive(int), help="default 40 / the config's")
    p.add_argument("--lr", type=_positive(float), help="default 12.5 / the config's")
    p.add_argument("--target", type=float, help="stop at this mean reward (default 0.8 / the config's)")
    p.add_argument("--plot", help="reward curve PNG (default runs/train_tiny.png / runs/train_verl.png)")
    p.add_argument("--save", metavar="PATH",
                   help="write the trained numpy policy here (.npz), for `rollout serve --weights`")  # fmt: skip
    p.add_argument("overrides", nargs="*",
                   help=f"key=value config overrides, e.g. {TRAIN_OVERRIDE_EXAMPLES['numpy']} "
                        f"(--trainer verl: {TRAIN_OVERRIDE_EXAMPLES['verl']})")  # fmt: skip
    p.set_defaults(fn=_cmd_train)

    p = sub.add_parser("inspect", help="summarize a file of episodes and show one")
    p.add_argument("file")
    p.add_argument("--episode", type=int, default=0, help="which episode to show (default 0)")
    p.add_argument("--tokens", type=int, default=64, help="token rows to show per sample")
    p.add_argument("--html", help="also write a static HTML view to this path")
    p.set_defaults(fn=_cmd_inspect)

    p = sub.add_parser("export", help="convert episodes for a trainer")
    p.add_argument("file")
    p.add_argument("--to", choices=["areal", "rllm", "verl", "hf"], required=True)
    p.add_argument("--out", required=True,
                   help="the file to write: .npz for areal/verl; .json or .jsonl for rllm; "
                        "a directory for hf (datasets' save_to_disk)")  # fmt: skip
    p.set_defaults(fn=_cmd_export)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("default")
            code = int(args.fn(args))
        sys.stdout.flush()  # here, so a closed pipe is caught below, not at exit
        return code
    except UsageError as exc:
        print(f"rollout {args.command}: {exc}", file=sys.stderr)
        return 2
    except BrokenPipeError:
        # `rollout inspect ... | head`: the reader has gone, which is no error. Point stdout at
        # /dev/null so the interpreter's last flush at exit does not complain either.
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 128 + signal.SIGPIPE


if __name__ == "__main__":
    raise SystemExit(main())
