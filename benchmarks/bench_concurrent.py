"""Latency under many concurrent calls on one recorded client, next to the same client unrecorded.

Prints ONE JSON line. `--calls` chat calls (default 2000) start at once on one
`AsyncOpenAI` client on the SDK's aiohttp transport (what collection uses),
each in its own episode when recorded, against the embedded server in its own
process with a fixed latency (`--latency-ms`, default 500). Each call's wall
time is taken from its own start; the figures are p50 / p90 of those times for
the bare client and the recorded one (interleaved repeats, medians), and their
ratios to the bare client's and to the server's fixed latency. Target (issue
23): recorded p50 <= 1.5x raw.

    python benchmarks/bench_concurrent.py [--calls 2000] [--latency-ms 500] [--repeats 3]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import statistics
import sys
import time
from typing import Any

from _common import ROOT, server_process

sys.path.insert(0, ROOT)


async def _pass(url: str, calls: int, recorded: bool) -> list[float]:
    """Each call's latency (s), all `calls` started together."""
    import openai

    from rollout import Recorder

    client: Any = openai.AsyncOpenAI(base_url=url, api_key="unused", max_retries=0, timeout=600,
                                     http_client=openai.DefaultAioHttpClient())  # fmt: skip
    recorder = Recorder(request_token_ids=True, request_logprobs=True, keep_finished=False) if recorded else None
    if recorder is not None:
        client = recorder.wrap(client)
    extra = {} if recorded else {"logprobs": True, "extra_body": {"return_token_ids": True}}

    async def one(k: int) -> float:
        t0 = time.perf_counter()
        messages = [{"role": "user", "content": f"What is {k} + 1?"}]
        if recorder is None:
            await client.chat.completions.create(model="tiny", messages=messages, max_tokens=2, seed=k, **extra)
        else:
            async with recorder.episode(task_id=f"t{k}"):
                await client.chat.completions.create(model="tiny", messages=messages, max_tokens=2, seed=k)
        return time.perf_counter() - t0

    try:
        return list(await asyncio.gather(*(one(k) for k in range(calls))))
    finally:
        if recorder is not None:
            await recorder.aclose()
        await client.close()


def _quantiles(values: list[float]) -> dict[str, float]:
    cuts = statistics.quantiles(values, n=10)
    return {"p50": statistics.median(values), "p90": cuts[8]}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--calls", type=int, default=2000)
    ap.add_argument("--latency-ms", type=float, default=500.0)
    ap.add_argument("--repeats", type=int, default=3)
    args = ap.parse_args()
    load = os.getloadavg()[0]
    runs: dict[str, list[dict[str, float]]] = {"bare": [], "recorded": []}
    with server_process(args.latency_ms / 1000) as (url, _):
        url = f"{url}/v1" if not url.endswith("/v1") else url
        asyncio.run(_pass(url, 50, False))  # warm-up: imports, server caches
        asyncio.run(_pass(url, 50, True))
        for rep in range(args.repeats):
            for name in (("bare", "recorded") if rep % 2 == 0 else ("recorded", "bare")):
                runs[name].append(_quantiles(asyncio.run(_pass(url, args.calls, name == "recorded"))))
    med = {n: {q: round(statistics.median(r[q] for r in rs), 4) for q in ("p50", "p90")} for n, rs in runs.items()}
    raw = args.latency_ms / 1000
    print(json.dumps({
        "bench": "concurrent",
        "calls": args.calls,
        "latency_ms": args.latency_ms,
        "repeats": args.repeats,
        "seconds": med,
        "recorded_p50_vs_bare_p50": round(med["recorded"]["p50"] / med["bare"]["p50"], 4),
        "recorded_p50_vs_server_latency": round(med["recorded"]["p50"] / raw, 4),
        "bare_p50_vs_server_latency": round(med["bare"]["p50"] / raw, 4),
        "target": 1.5,
        "loadavg_1m_before": round(load, 2),
        "cpus": os.cpu_count(),
    }))


if __name__ == "__main__":
    main()
