"""Recording cost: time overhead vs the bare openai client, and bytes per recorded token.

    python benchmarks/bench_record.py [--calls 120] [--repeats 24] [--mem-calls 4000]

Prints ONE JSON line.

Overhead: the real openai SDK over an in-process httpx2 `MockTransport` whose
handler returns PRE-BUILT bytes (a vLLM-format reply: `prompt_token_ids`,
`choices[0].token_ids`, 256 completion tokens with logprobs), so the server
side costs ~nothing and the ratio measures SDK + recorder vs SDK alone. Bare and
wrapped clients run in the same process, in short interleaved repeats whose
order alternates (bare first, then wrapped first); `ratio` is the median over
the (bare, wrapped) pairs of their wall-time ratio, `cpu_ratio` the same in
process CPU time (blind to other processes' load). Wrapped calls run in episodes of `--per-episode`
calls (8, a typical multi-turn agent). A third figure puts all calls of a repeat
in ONE episode, to expose per-call costs that grow with episode length.
Each figure is measured twice: as a user runs (`ratio`, the garbage collector
on) and with automatic collection paused inside the timed repeats
(`gc_paused.ratio`). On this SDK call a full collection of the process heap
costs tens of milliseconds and falls into a repeat or not by chance, so the
paused figure is the steady one; the difference between the two is GC.
`sync_stream` streams the same reply, one chunk per token (vLLM's layout: each
chunk's id and logprob, the prompt ids on the first, a usage chunk at the end).
Target: ratio <= 1.05 (sync and async). `sync_floor` is the least any recorder
pays: the bare call plus copying the reply's prompt ids, completion ids and
logprobs out of the SDK's objects into numpy arrays, nothing else.

Memory: `mem_calls` wrapped calls (default 4000 x 256 completion tokens, ~1 M
completion tokens, plus 256 prompt tokens each) recorded into episodes under
tracemalloc; responses are dropped and the garbage collected before reading
the retained size. Bytes are reported per recorded token with prompt tokens
counted (`bytes_per_token_all`) and per completion token only
(`bytes_per_completion_token`); the baseline is the same ids / logprobs / versions
held as lists of Python ints and floats, measured the same way. Target <= 12.
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import json
import os
import random
import statistics
import sys
import time
import tracemalloc
from collections.abc import Callable
from operator import attrgetter
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import httpx2
import numpy as np
from openai import AsyncOpenAI, OpenAI

from rollout import Recorder

PROMPT_TOKENS = 256
COMPLETION_TOKENS = 256
MESSAGES = [{"role": "system", "content": "You are a careful solver."},
            {"role": "user", "content": "Solve 12 * 34 and explain."}]


def build_body(seed: int = 0) -> bytes:
    rng = random.Random(seed)
    prompt = [rng.randrange(1000, 150_000) for _ in range(PROMPT_TOKENS)]
    ids = [rng.randrange(1000, 150_000) for _ in range(COMPLETION_TOKENS)]
    content = [{"token": f"t{t}", "logprob": -rng.random() * 4, "bytes": None, "top_logprobs": []}
               for t in ids]
    body = {
        "id": "chatcmpl-bench",
        "object": "chat.completion",
        "created": 1_700_000_000,
        "model": "bench",
        "prompt_token_ids": prompt,
        "choices": [{
            "index": 0,
            "message": {"role": "assistant", "content": " ".join(f"w{t}" for t in ids[:64])},
            "finish_reason": "stop",
            "logprobs": {"content": content},
            "token_ids": ids,
        }],
        "usage": {"prompt_tokens": PROMPT_TOKENS, "completion_tokens": COMPLETION_TOKENS,
                  "total_tokens": PROMPT_TOKENS + COMPLETION_TOKENS},
        "weight_version": 3,
    }
    return json.dumps(body).encode()


def build_stream(seed: int = 0) -> bytes:
    """The same reply as server-sent events, as vLLM streams it: one chunk per token (its id
    and logprob), the prompt ids on the first, then a usage chunk."""
    body = json.loads(build_body(seed))
    choice = body["choices"][0]
    events: list[dict[str, Any]] = []
    for j, (t, entry) in enumerate(zip(choice["token_ids"], choice["logprobs"]["content"], strict=True)):
        delta = {"content": f"w{t} "} if j else {"role": "assistant", "content": f"w{t} "}
        last = j == len(choice["token_ids"]) - 1
        events.append({"id": body["id"], "object": "chat.completion.chunk", "created": body["created"],
                       "model": "bench", "choices": [{"index": 0, "delta": delta, "logprobs": {"content": [entry]},
                                                      "finish_reason": "stop" if last else None, "token_ids": [t]}]})  # fmt: skip
    events[0]["prompt_token_ids"] = body["prompt_token_ids"]
    events.append({"id": body["id"], "object": "chat.completion.chunk", "created": body["created"], "model": "bench",
                   "choices": [], "usage": body["usage"]})  # fmt: skip
    return b"".join(b"data: " + json.dumps(e).encode() + b"\n\n" for e in events) + b"data: [DONE]\n\n"


BODY = build_body()
STREAM = build_stream()
HEADERS = {"content-type": "application/json"}
STREAM_HEADERS = {"content-type": "text/event-stream"}


def handler(request: httpx2.Request) -> httpx2.Response:
    if b'"stream":true' in request.content or b'"stream": true' in request.content:
        return httpx2.Response(200, content=STREAM, headers=STREAM_HEADERS)
    return httpx2.Response(200, content=BODY, headers=HEADERS)


def clients() -> tuple[OpenAI, AsyncOpenAI]:
    transport = httpx2.MockTransport(handler)
    kw: dict[str, Any] = {"api_key": "bench", "base_url": "http://bench.test/v1", "max_retries": 0}
    return (OpenAI(**kw, http_client=httpx2.Client(transport=transport)),
            AsyncOpenAI(**kw, http_client=httpx2.AsyncClient(transport=transport)))


# ---------------------------------------------------------------- overhead


def _clock() -> tuple[float, float]:
    return time.perf_counter(), time.process_time()


def time_floor(client: Any, calls: int) -> tuple[float, float]:
    """(wall, CPU) seconds per call of the bare client plus the least any recorder does: copy the
    reply's prompt ids, completion ids and logprobs into numpy arrays. No record, no checks."""
    lp = attrgetter("logprob")
    t0, c0 = _clock()
    for _ in range(calls):
        reply = client.chat.completions.create(model="bench", messages=MESSAGES, logprobs=True)
        choice = reply.choices[0]
        ids, prompt, entries = choice.token_ids, reply.prompt_token_ids, choice.logprobs.content
        np.fromiter(ids, np.int32, len(ids)), np.fromiter(prompt, np.int32, len(prompt))
        np.fromiter(map(lp, entries), np.float32, len(entries))
    t1, c1 = _clock()
    return (t1 - t0) / calls, (c1 - c0) / calls


def time_stream(client: Any, calls: int, rec: Recorder | None = None) -> tuple[float, float]:
    """(wall, CPU) seconds per streamed call, its 256 chunks read to the end."""
    t0, c0 = _clock()
    for i in range(calls):
        if rec is None:
            for _ in client.chat.completions.create(model="bench", messages=MESSAGES, logprobs=True, stream=True):
                pass
        else:
            with rec.episode(f"stream-{i}"):
                for _ in client.chat.completions.create(model="bench", messages=MESSAGES, logprobs=True, stream=True):
                    pass
    t1, c1 = _clock()
    return (t1 - t0) / calls, (c1 - c0) / calls


def time_sync(client: Any, calls: int, rec: Recorder | None = None, per_episode: int = 8) -> tuple[float, float]:
    """(wall, CPU) seconds per call; with `rec`, calls run inside episodes of `per_episode` calls."""
    t0, c0 = _clock()
    if rec is None:
        for _ in range(calls):
            client.chat.completions.create(model="bench", messages=MESSAGES, logprobs=True)
    else:
        for start in range(0, calls, per_episode):
            with rec.episode(f"task-{start}"):
                for _ in range(min(per_episode, calls - start)):
                    client.chat.completions.create(model="bench", messages=MESSAGES, logprobs=True)
    t1, c1 = _clock()
    return (t1 - t0) / calls, (c1 - c0) / calls


async def time_async(
    client: Any, calls: int, rec: Recorder | None = None, per_episode: int = 8
) -> tuple[float, float]:
    t0, c0 = _clock()
    if rec is None:
        for _ in range(calls):
            await client.chat.completions.create(model="bench", messages=MESSAGES, logprobs=True)
    else:
        for start in range(0, calls, per_episode):
            async with rec.episode(f"task-{start}"):
                for _ in range(min(per_episode, calls - start)):
                    await client.chat.completions.create(model="bench", messages=MESSAGES, logprobs=True)
    t1, c1 = _clock()
    return (t1 - t0) / calls, (c1 - c0) / calls


def summary(bare: list[tuple[float, float]], wrapped: list[tuple[float, float]]) -> dict[str, Any]:
    """Per-call medians, and the median of the ratios of adjacent (bare, wrapped) repeats.

    Pairing adjacent repeats cancels most of a shared machine's load drift;
    `cpu_ratio` (process CPU time) is also blind to other processes' load.
    """
    return {
        "bare_us": round(statistics.median(b[0] for b in bare) * 1e6, 1),
        "wrapped_us": round(statistics.median(w[0] for w in wrapped) * 1e6, 1),
        "ratio": round(statistics.median(w[0] / b[0] for b, w in zip(bare, wrapped, strict=True)), 4),
        "cpu_ratio": round(statistics.median(w[1] / b[1] for b, w in zip(bare, wrapped, strict=True)), 4),
    }


Timer = Callable[[], tuple[float, float]]


def interleaved(bare: Timer, wrapped: Timer, repeats: int, *, gc_paused: bool = False) -> dict[str, Any]:
    """Bare and wrapped repeats, alternating which goes first; with `gc_paused`,
    automatic garbage collection is off inside each timed repeat (each starts
    from a full collection either way)."""
    bare_t: list[tuple[float, float]] = []
    wrap_t: list[tuple[float, float]] = []
    for i in range(repeats):
        for is_wrapped in (False, True) if i % 2 == 0 else (True, False):
            gc.collect()
            if gc_paused:
                gc.disable()
            try:
                (wrap_t if is_wrapped else bare_t).append(wrapped() if is_wrapped else bare())
            finally:
                gc.enable()
    return summary(bare_t, wrap_t)


def overhead(calls: int, repeats: int, per_episode: int) -> dict[str, Any]:
    sync, async_ = clients()
    rec = Recorder()
    wsync, wasync = rec.wrap(sync), rec.wrap(async_)
    loop = asyncio.new_event_loop()  # one loop for every async repeat: start-up is in no figure

    def drained(timing: tuple[float, float]) -> tuple[float, float]:
        rec.drain()
        return timing

    timers: dict[str, tuple[Timer, Timer]] = {
        "sync": (
            lambda: time_sync(sync, calls),
            lambda: drained(time_sync(wsync, calls, rec, per_episode)),
        ),
        "async": (
            lambda: loop.run_until_complete(time_async(async_, calls)),
            lambda: drained(loop.run_until_complete(time_async(wasync, calls, rec, per_episode))),
        ),
        # Streamed: one chunk per token (fewer calls: each is about 30x a plain one).
        "sync_stream": (
            lambda: time_stream(sync, max(1, calls // 12)),
            lambda: drained(time_stream(wsync, max(1, calls // 12), rec)),
        ),
        # The floor: the bare call plus copying its token arrays, what no recorder can avoid.
        "sync_floor": (lambda: time_sync(sync, calls), lambda: time_floor(sync, calls)),
        # One long episode (all calls in it): exposes per-call costs that grow with episode length.
        "sync_one_episode_of_all_calls": (
            lambda: time_sync(sync, calls),
            lambda: drained(time_sync(wsync, calls, rec, per_episode=calls)),
        ),
    }
    out: dict[str, Any] = {}
    for name, (bare, wrapped) in timers.items():
        bare(), wrapped()  # warm up
        n = repeats if name in ("sync", "async", "sync_floor") else max(4, repeats // 3)
        out[name] = interleaved(bare, wrapped, n)
        out[name]["gc_paused"] = interleaved(bare, wrapped, n, gc_paused=True)
    loop.close()
    return out


# ---------------------------------------------------------------- memory


def retained_by_recorder(calls: int, per_episode: int = 8) -> int:
    sync, _ = clients()
    rec = Recorder()
    w = rec.wrap(sync)
    with rec.episode("warm"):
        w.chat.completions.create(model="bench", messages=MESSAGES, logprobs=True)
    rec.drain()
    gc.collect()
    tracemalloc.start()
    before = tracemalloc.get_traced_memory()[0]
    done = 0
    while done < calls:
        with rec.episode(f"task-{done}"):
            for _ in range(min(per_episode, calls - done)):
                reply = w.chat.completions.create(model="bench", messages=MESSAGES, logprobs=True)
                done += 1
    del reply
    gc.collect()
    after = tracemalloc.get_traced_memory()[0]
    tracemalloc.stop()
    episodes = rec.episodes()
    assert sum(len(e.calls) for e in episodes) == calls
    assert all(c.exact and len(c.choices[0].ids) == COMPLETION_TOKENS for e in episodes for c in e.calls)
    return after - before


def retained_by_lists(calls: int) -> int:
    """The same tokens as Python lists: prompt ids, completion ids, logprobs, versions."""
    body = json.loads(BODY)
    prompt = body["prompt_token_ids"]
    ids = body["choices"][0]["token_ids"]
    lps = [e["logprob"] for e in body["choices"][0]["logprobs"]["content"]]
    gc.collect()
    tracemalloc.start()
    before = tracemalloc.get_traced_memory()[0]
    # Fresh int / float objects per call, as parsing each reply would create them.
    kept = [([int(str(t)) for t in prompt], [int(str(t)) for t in ids],
             [float(repr(x)) for x in lps], [int(str(3000 + 3)) for _ in ids])
            for _ in range(calls)]
    gc.collect()
    after = tracemalloc.get_traced_memory()[0]
    tracemalloc.stop()
    assert len(kept) == calls
    return after - before


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--calls", type=int, default=120, help="calls per timing repeat")
    ap.add_argument("--repeats", type=int, default=24)
    ap.add_argument("--mem-calls", type=int, default=4000)
    ap.add_argument("--per-episode", type=int, default=8, help="calls per episode (wrapped runs)")
    args = ap.parse_args()

    result: dict[str, Any] = {"bench": "record", "python": sys.version.split()[0],
                              "prompt_tokens_per_call": PROMPT_TOKENS,
                              "completion_tokens_per_call": COMPLETION_TOKENS,
                              "reply_bytes": len(BODY)}
    result["calls_per_episode"] = args.per_episode
    result["loadavg_1m_before"] = round(os.getloadavg()[0], 2)  # ratios of process CPU move with load
    result["overhead"] = overhead(args.calls, args.repeats, args.per_episode)
    result["overhead_target_met"] = all(
        result["overhead"][k]["ratio"] <= 1.05 for k in ("sync", "async")
    )

    rec_bytes = retained_by_recorder(args.mem_calls, args.per_episode)
    list_bytes = retained_by_lists(args.mem_calls)
    completion = args.mem_calls * COMPLETION_TOKENS
    total = args.mem_calls * (PROMPT_TOKENS + COMPLETION_TOKENS)
    result["memory"] = {
        "calls": args.mem_calls,
        "completion_tokens": completion,
        "tokens_incl_prompt": total,
        "stored_per_completion_token": "id int32 + logprob float32 + run-length version",
        "recorder_bytes": rec_bytes,
        "bytes_per_token_all": round(rec_bytes / total, 2),
        "bytes_per_completion_token": round(rec_bytes / completion, 2),
        "python_lists_bytes": list_bytes,
        "python_lists_bytes_per_token_all": round(list_bytes / total, 2),
        "python_lists_bytes_per_completion_token": round(list_bytes / completion, 2),
        "counted_as": "bytes_per_token_all counts prompt + completion tokens",
    }
    result["memory_target_met"] = rec_bytes / total <= 12
    print(json.dumps(result))


if __name__ == "__main__":
    main()
