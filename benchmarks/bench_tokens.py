"""Token mode (issue 11): exactness on the main job, tokens per episode, client CPU, training.

Prints ONE JSON line with a section per part (`--parts`, default all):

- `main_job`: `configs/local.yaml` (192 episodes of the arithmetic demo agent
  on the embedded server) collected with `backend.token_mode` auto and off in
  the same run; per mode the concat samples, drift and merged turns (what
  `rollout inspect` prints), how calls were sent, and tokens per episode:
  `stored` = prompt + sampled ids held in the records, `exported` = the sum
  of the training rows' lengths (the non-pad tokens of `to_verl`; `padded`:
  its rows x (P + R)) for concat and individual assembly.
  Targets: token mode drift 0 and samples == episodes.
- `cpu`: client-process CPU per recorded call against the plain openai SDK
  (`AsyncOpenAI.chat.completions.create`, no recording; default httpx
  transport, and the aiohttp one that collection uses), the server in its
  own process. Each episode makes 3 calls, each prompt extending the last,
  so with token mode on calls 2 and 3 go as token ids. Calls run one at a
  time and each call's CPU is attributed to it (process CPU is not spent
  while waiting for the server), so `later_turns.tokens` is exactly the
  token-mode calls; `concurrent` repeats the comparison with
  `--concurrency` episodes at once (total CPU / calls, first calls included).
  Every new user turn is unique, so each token-mode call makes all three
  requests (/tokenize, generate, derender); `tokens_repeated` sends the same
  "Again." each turn, which token mode's bridge cache renders once.
  `tokens_all` is token_mode "all": first calls too go as render + generate
  (`all_turns_vs_sdk`: client CPU per call with first calls included).
  `sync_*`: the same later turns through the sync `OpenAI` client, plain and
  wrapped (token mode's sync requests go through the client's own httpx client).
  Runners are interleaved after a warm-up and medians are reported.
  Target: tokens / sdk <= 0.5.
- `train`: `rollout train` (the numpy trainer on the shipped
  train_tiny.yaml) for `--train-iterations` iterations without a reward
  target, token mode auto and off: the max |recorded - recomputed| logprob
  (target <= 1e-5), training rows per episode and how calls were sent; then
  one iteration of the same with the main job's `max_tokens: 4`, where
  messages mode splits episodes into several rows.

    python benchmarks/bench_tokens.py [--parts main_job,cpu,train] [--cpu-episodes 150]
        [--concurrency 64] [--repeats 5] [--train-iterations 3] [--profile FILE]

Collection efficiency at 20 ms / 64 concurrent, token mode and off, is in
bench_collect.py (`efficiency`, `efficiency_token_mode_off`).
"""

from __future__ import annotations

import argparse
import asyncio
import cProfile
import io
import json
import os
import platform
import pstats
import statistics
import sys
import time
import warnings
from collections.abc import Callable
from typing import Any

from _common import ROOT, TURNS, make_tasks, messages_for, server_process

MAIN_CONFIG = os.path.join(ROOT, "configs", "local.yaml")


# --- main job: exactness and tokens per episode -------------------------------------------


def _tokens_per_episode(episodes: list[Any]) -> dict[str, Any]:
    from rollout.export import to_verl
    from rollout.sample import assemble

    n = len(episodes)
    stored = sum(
        len(call.prompt_ids) + sum(len(c.ids) for c in call.choices)
        for ep in episodes
        for call in ep.calls
    )
    out: dict[str, Any] = {"stored": round(stored / n, 2)}
    for mode in ("concat", "individual"):
        result = assemble(episodes, mode=mode)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # to_verl's note on episodes spanning rows
            batch = to_verl(result)
        rows, width = batch["tensors"]["input_ids"].shape
        out[mode] = {
            "rows": len(result),
            "exported": round(sum(len(s) for s in result) / n, 2),
            "to_verl_nonpad": round(int(batch["tensors"]["attention_mask"].sum()) / n, 2),
            "to_verl_padded": round(rows * width / n, 2),
            "trainable": round(sum(s.num_sampled for s in result) / n, 2),
        }
    return out


def main_job(token_mode: str) -> dict[str, Any]:
    from rollout.collection import collect
    from rollout.sample import assemble

    t0 = time.perf_counter()
    summary = collect(
        MAIN_CONFIG,
        overrides=[f"backend.token_mode={token_mode!r}", "output.path=null", "progress=false"],
    )
    wall = time.perf_counter() - t0
    episodes = summary.episodes
    result = assemble(episodes, mode="concat")
    calls = [c for ep in episodes for c in ep.calls]
    reasons: dict[str, int] = {}
    for c in calls:
        if c.sent_as != "tokens":
            key = c.fallback or "messages"
            reasons[key] = reasons.get(key, 0) + 1
    return {
        "episodes": len(episodes),
        "calls": len(calls),
        "samples": len(result),
        "drift": result.num_drift,
        "merged_turns": result.num_merged,
        "sent_as_tokens": sum(c.sent_as == "tokens" for c in calls),
        "sent_as_messages": reasons,
        "tokens_per_episode": _tokens_per_episode(episodes),
        "wall_s": round(wall, 3),
    }


def part_main_job(args: argparse.Namespace) -> dict[str, Any]:
    on, off = main_job("auto"), main_job("off")
    return {
        "config": "configs/local.yaml",
        "token_mode": on,
        "off": off,
        "drift_target_met": on["drift"] == 0 and on["samples"] == on["episodes"],
        "exported_concat_ratio_vs_off": round(
            on["tokens_per_episode"]["concat"]["exported"] / off["tokens_per_episode"]["concat"]["exported"], 4
        ),
        "stored_ratio_vs_off": round(
            on["tokens_per_episode"]["stored"] / off["tokens_per_episode"]["stored"], 4
        ),
    }


# --- client CPU per call ------------------------------------------------------------------


def _sdk_client(url: str, aiohttp: bool) -> Any:
    import openai

    extra: dict[str, Any] = {"http_client": openai.DefaultAioHttpClient()} if aiohttp else {}
    return openai.AsyncOpenAI(base_url=url, api_key="unused", max_retries=0, timeout=120, **extra)


def _kwargs(messages: list[dict[str, Any]], seed: int, recorded: bool) -> dict[str, Any]:
    """The same request either way; the recorder adds logprobs and return_token_ids itself."""
    kw: dict[str, Any] = {"model": "tiny", "messages": messages, "max_tokens": 2,
                          "temperature": 1.0, "seed": seed}  # fmt: skip
    if not recorded:
        kw["logprobs"] = True
        kw["extra_body"] = {"return_token_ids": True}
    return kw


def _unique(task: dict[str, Any], turn: int, replies: list[str]) -> list[dict[str, Any]]:
    """`messages_for`, with every new user turn unique ("Again (t7, 1)."), so token mode's
    bridge cache never hits: the server renders every bridge."""
    msgs = messages_for(task, turn, replies)
    for k, m in enumerate(msgs[1:]):
        if m["role"] == "user":
            msgs[k + 1] = {"role": "user", "content": f"Again ({task['id']}, {k // 2 + 1})."}
    return msgs


async def _run(url: str, runner: str, tasks: list[dict[str, Any]], concurrency: int) -> dict[str, Any]:
    """One pass: per-turn CPU (when sequential) and the total, for one runner."""
    from rollout import Recorder

    recorder = None
    if runner in ("sdk", "sdk_aiohttp"):
        client = _sdk_client(url, aiohttp=runner == "sdk_aiohttp")
    else:
        from rollout.embedded import ClientTemplate

        recorder = Recorder(request_token_ids=True, request_logprobs=True, keep_finished=False,
                            token_mode={"messages": "off", "tokens_all": "all", "tokens_local": "all"}.get(runner, "auto"),
                            local_template=ClientTemplate() if runner == "tokens_local" else None)  # fmt: skip
        client = recorder.wrap(_sdk_client(url, aiohttp=True))  # as collection does
    build = messages_for if runner == "tokens_repeated" else _unique
    per_turn = [0.0] * TURNS
    sent: dict[str, int] = {}
    sem = asyncio.Semaphore(concurrency)

    async def episode(task: dict[str, Any], k: int) -> None:
        async with sem:
            replies: list[str] = []
            scope = recorder.episode(task_id=task["id"], sample=k) if recorder is not None else None
            ep = await scope.__aenter__() if scope is not None else None
            for turn in range(TURNS):
                kw = _kwargs(build(task, turn, replies), k * 10 + turn, recorder is not None)
                c0 = time.process_time()
                resp = await client.chat.completions.create(**kw)
                per_turn[turn] += time.process_time() - c0
                replies.append(resp.choices[0].message.content or "")
            if scope is not None and ep is not None:
                await scope.__aexit__(None, None, None)
                for call in ep.calls:
                    sent[call.sent_as] = sent.get(call.sent_as, 0) + 1

    c0 = time.process_time()
    try:
        await asyncio.gather(*(episode(t, k) for k, t in enumerate(tasks)))
    finally:
        if recorder is not None:
            await recorder.aclose()
        await client.close()
    return {"total": time.process_time() - c0, "per_turn": per_turn, "sent": sent}


def _run_sync(url: str, runner: str, tasks: list[dict[str, Any]]) -> list[float]:
    """The sync twin, sequential: per-turn CPU of `OpenAI.chat.completions.create`, plain
    ("sdk") or wrapped with token mode on ("tokens", over the client's own httpx client)."""
    import openai

    from rollout import Recorder

    client = openai.OpenAI(base_url=url, api_key="unused", max_retries=0, timeout=120)
    recorder = None
    if runner == "tokens":
        recorder = Recorder(request_token_ids=True, request_logprobs=True, keep_finished=False)
        client = recorder.wrap(client)
    per_turn = [0.0] * TURNS
    try:
        for k, task in enumerate(tasks):
            replies: list[str] = []
            scope = recorder.episode(task_id=task["id"], sample=k) if recorder is not None else None
            if scope is not None:
                scope.__enter__()
            for turn in range(TURNS):
                kw = _kwargs(_unique(task, turn, replies), k * 10 + turn, recorder is not None)
                c0 = time.process_time()
                resp = client.chat.completions.create(**kw)
                per_turn[turn] += time.process_time() - c0
                replies.append(resp.choices[0].message.content or "")
            if scope is not None:
                scope.__exit__(None, None, None)
    finally:
        if recorder is not None:
            recorder.close()
        client.close()
    return per_turn


def part_cpu(args: argparse.Namespace) -> dict[str, Any]:
    runners = ("sdk", "sdk_aiohttp", "messages", "tokens", "tokens_all", "tokens_repeated", "tokens_local")
    tasks = make_tasks(args.cpu_episodes)
    n = len(tasks)
    seq: dict[str, list[dict[str, Any]]] = {r: [] for r in runners}
    conc: dict[str, list[float]] = {r: [] for r in runners}
    sent: dict[str, dict[str, int]] = {}
    with server_process(0.0) as (url, _):
        for r in runners:  # warm-up: imports, connection pools, server caches
            asyncio.run(_run(url, r, make_tasks(20), 1))
            asyncio.run(_run(url, r, make_tasks(args.concurrency), args.concurrency))
        sync: dict[str, list[float]] = {"sdk": [], "tokens": []}
        for r in sync:
            _run_sync(url, r, make_tasks(20))
        for rep in range(args.repeats):
            order = runners if rep % 2 == 0 else runners[::-1]
            for r in order:
                out = asyncio.run(_run(url, r, tasks, 1))
                seq[r].append(out)
                sent[r] = out["sent"]
                conc[r].append(asyncio.run(_run(url, r, tasks, args.concurrency))["total"])
            for r in sync:
                sync[r].append(sum(_run_sync(url, r, tasks)[1:]))
        if args.profile:
            prof = cProfile.Profile()
            prof.enable()
            asyncio.run(_run(url, "tokens", tasks, args.concurrency))
            prof.disable()
            prof.dump_stats(args.profile)
            buf = io.StringIO()
            pstats.Stats(prof, stream=buf).sort_stats("tottime").print_stats(30)
            print(buf.getvalue(), file=sys.stderr)

    def ms(values: list[float], calls: int) -> float:
        return round(1000 * statistics.median(values) / calls, 4)

    later = {r: ms([sum(o["per_turn"][1:]) for o in v], n * (TURNS - 1)) for r, v in seq.items()}
    first = {r: ms([o["per_turn"][0] for o in v], n) for r, v in seq.items()}
    every = {r: ms([sum(o["per_turn"]) for o in v], n * TURNS) for r, v in seq.items()}
    concurrent = {r: ms(v, n * TURNS) for r, v in conc.items()}
    sync_later = {r: ms(v, n * (TURNS - 1)) for r, v in sync.items()}
    return {
        "episodes": n,
        "turns": TURNS,
        "max_tokens": 2,
        "server": "embedded, separate process (multiprocessing spawn), latency 0",
        "repeats": args.repeats,
        "sent_as": sent,
        "sequential_ms_per_call": {"later_turns": later, "first_turn": first, "all_turns": every},
        "tokens_vs_sdk": round(later["tokens"] / later["sdk"], 4),
        "tokens_vs_sdk_aiohttp": round(later["tokens"] / later["sdk_aiohttp"], 4),
        "tokens_vs_messages_recorded": round(later["tokens"] / later["messages"], 4),
        "tokens_repeated_vs_sdk": round(later["tokens_repeated"] / later["sdk"], 4),
        # First calls included (issue 23's figure): token_mode auto sends them through the
        # SDK as messages, token_mode all as render + generate.
        "all_turns_vs_sdk": {r: round(every[r] / every["sdk"], 4) for r in ("tokens", "tokens_all", "tokens_local")},
        "first_turn_vs_sdk": {r: round(first[r] / first["sdk"], 4) for r in ("tokens", "tokens_all", "tokens_local")},
        "concurrent_all_turns_vs_sdk": {r: round(concurrent[r] / concurrent["sdk"], 4) for r in ("tokens", "tokens_all", "tokens_local")},
        "target": 0.5,
        "concurrency": args.concurrency,
        "concurrent_ms_per_call": concurrent,
        "concurrent_tokens_vs_sdk": round(concurrent["tokens"] / concurrent["sdk"], 4),
        "sync_sequential_ms_per_call": {"later_turns": sync_later},
        "sync_tokens_vs_sdk": round(sync_later["tokens"] / sync_later["sdk"], 4),
    }


# --- training ------------------------------------------------------------------------------


def _train(mode: str, iterations: int, max_tokens: int | None) -> dict[str, Any]:
    """One `train()` run; how its calls were sent is read off each batch's version check."""
    from rollout.demo import TASKS
    from rollout.training import LOGPROB_TOLERANCE, reinforce, train

    sent: dict[str, int] = {}
    check = reinforce.check_versions

    def counting(episodes: list[Any], version: int) -> None:
        for ep in episodes:
            for call in ep.calls:
                sent[call.sent_as] = sent.get(call.sent_as, 0) + 1
        check(episodes, version)

    backend: dict[str, Any] = {"token_mode": mode}
    if max_tokens is not None:
        backend["sampling"] = {"temperature": 1.0, "max_tokens": max_tokens}
    reinforce.check_versions = counting  # type: ignore[assignment]
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # to_verl's note on episodes spanning rows
            history = train(iterations=iterations, target=None, log=lambda _: None, backend=backend,
                            tasks=str(TASKS))
    finally:
        reinforce.check_versions = check
    episodes = sum(h["episodes"] for h in history)
    rows = episodes + sum(h["drift_rows"] for h in history)
    worst = max(h["max_logprob_diff"] for h in history)
    return {
        "episodes": episodes,
        "rows": rows,
        "rows_per_episode": round(rows / episodes, 4),
        "sent_as": sent,
        "max_logprob_diff": worst,
        "within_tolerance": worst <= LOGPROB_TOLERANCE,
        "mean_reward_by_iteration": [round(h["mean_reward"], 4) for h in history],
    }


def part_train(args: argparse.Namespace) -> dict[str, Any]:
    """The shipped config (one-token answers), and the same with the main job's 4-token answers,
    where messages mode drifts into several rows per episode."""
    out: dict[str, Any] = {"config": "train_tiny.yaml (rollout train's default)", "tolerance": 1e-5}
    for label, max_tokens, iterations in (("max_tokens_1", None, args.train_iterations),
                                          ("max_tokens_4", 4, 1)):  # fmt: skip
        out[label] = {
            "iterations": iterations,
            "token_mode": _train("auto", iterations, max_tokens),
            "off": _train("off", iterations, max_tokens),
        }
    return out


PARTS: dict[str, Callable[[argparse.Namespace], dict[str, Any]]] = {
    "main_job": part_main_job,
    "cpu": part_cpu,
    "train": part_train,
}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--parts", default=",".join(PARTS))
    ap.add_argument("--cpu-episodes", type=int, default=150)
    ap.add_argument("--concurrency", type=int, default=64)
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--train-iterations", type=int, default=3)
    ap.add_argument("--profile", help="cProfile one concurrent token-mode pass of the cpu part here")
    args = ap.parse_args()
    report: dict[str, Any] = {"bench": "tokens"}
    load_before = os.getloadavg()[0]
    for name in args.parts.split(","):
        report[name] = PARTS[name](args)
    report.update(loadavg_1m_before=round(load_before, 2), python=platform.python_version(),
                  cpus=os.cpu_count())  # fmt: skip
    print(json.dumps(report))


if __name__ == "__main__":
    main()
