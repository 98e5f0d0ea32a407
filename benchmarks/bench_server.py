"""Throughput of the embedded server on loopback, relative to a trivial baseline.

Prints ONE JSON line: requests/s and completion tokens/s of the chat route
and of vLLM's token route (``/inference/v1/generate``) at concurrency 1, 16
and 64, each next to the same load against a bare aiohttp handler that
returns a fixed 16-token completion (served the same way: its own process,
same host). The ratios are what to compare across machines; absolute
numbers swing with the CPU. Where /proc exists (Linux) each row also gives
the server processes' CPU time per request, which a shared, loaded machine
disturbs far less than throughput.

    python benchmarks/bench_server.py [--requests-per-level 400] [--max-tokens 16]
"""

from __future__ import annotations

import argparse
import asyncio
import functools
import json
import os
import platform
import subprocess
import sys
import time
from typing import Any

import aiohttp
from aiohttp import web

LEVELS = (1, 16, 64)


def _baseline_app(max_tokens: int) -> web.Application:
    """Fixed chat completion: the cost of HTTP + JSON, with no sampling."""
    body = json.dumps({
        "id": "chatcmpl-baseline", "object": "chat.completion", "created": 0, "model": "tiny",
        "choices": [{"index": 0, "message": {"role": "assistant", "content": "7" * max_tokens},
                     "finish_reason": "length", "token_ids": [22] * max_tokens}],
        "usage": {"prompt_tokens": 8, "completion_tokens": max_tokens, "total_tokens": 8 + max_tokens},
        "weight_version": 0,
    }).encode()  # fmt: skip

    async def handler(request: web.Request) -> web.Response:
        await request.read()
        return web.Response(body=body, content_type="application/json")

    app = web.Application()
    app.router.add_post("/v1/chat/completions", handler)
    app.router.add_post("/inference/v1/generate", handler)
    return app


async def _serve_baseline(max_tokens: int) -> None:
    runner = web.AppRunner(_baseline_app(max_tokens), access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0, backlog=4096)
    await site.start()
    port = next(a[1] for a in runner.addresses if isinstance(a, tuple))
    print(f"baseline listening on http://127.0.0.1:{port}/v1", flush=True)
    await asyncio.Event().wait()


def _spawn(args: list[str]) -> tuple[subprocess.Popen[str], str]:
    """Start a server process and read the base URL it prints."""
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    env = {
        **os.environ,
        "PYTHONPATH": os.pathsep.join(filter(None, [root, os.environ.get("PYTHONPATH")])),
    }
    proc = subprocess.Popen([sys.executable, *args], stdout=subprocess.PIPE, text=True, env=env)
    assert proc.stdout is not None
    line = proc.stdout.readline()
    url = next((w for w in line.split() if w.startswith("http://")), None)
    if url is None:
        proc.kill()
        raise RuntimeError(f"server did not start: {line!r}")
    return proc, url


def _chat(i: int, max_tokens: int) -> tuple[str, dict[str, Any]]:
    return "/v1/chat/completions", {
        "model": "tiny", "messages": [{"role": "user", "content": f"q{i}"}],
        "max_tokens": max_tokens, "seed": i, "ignore_eos": True,
    }  # fmt: skip


@functools.cache
def _prompt_ids(i: int) -> list[int]:
    from rollout.embedded import ChatTemplate

    return ChatTemplate().render(_chat(i, 1)[1]["messages"])


def _generate(i: int, max_tokens: int) -> tuple[str, dict[str, Any]]:
    """The same prompt as ``_chat(i)``, as the chat template's token ids."""
    return "/inference/v1/generate", {
        "model": "tiny", "token_ids": _prompt_ids(i),
        "sampling_params": {"max_tokens": max_tokens, "seed": i, "ignore_eos": True},
    }  # fmt: skip


async def _load(
    root: str, route: Any, concurrency: int, count: int, max_tokens: int
) -> dict[str, float]:
    """``count`` requests built by ``route`` with at most ``concurrency`` in flight."""
    connector = aiohttp.TCPConnector(limit=concurrency)
    tokens = 0
    queue: asyncio.Queue[int] = asyncio.Queue()
    for i in range(count):
        queue.put_nowait(i)
    async with aiohttp.ClientSession(connector=connector) as session:

        async def worker() -> None:
            nonlocal tokens
            while not queue.empty():
                i = queue.get_nowait()
                path, payload = route(i, max_tokens)
                async with session.post(root + path, json=payload) as resp:
                    resp.raise_for_status()
                    tokens += (await resp.json())["usage"]["completion_tokens"]

        start = time.perf_counter()
        await asyncio.gather(*(worker() for _ in range(concurrency)))
        elapsed = time.perf_counter() - start
    return {"rps": count / elapsed, "tokens_per_s": tokens / elapsed}


def _cpu_s(pid: int) -> float | None:
    """User + system CPU seconds of a process, from /proc (None where there is none)."""
    try:
        with open(f"/proc/{pid}/stat") as fh:
            fields = fh.read().rsplit(")", 1)[1].split()
    except OSError:
        return None
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


async def _measured(
    pid: int, root: str, route: Any, concurrency: int, count: int, max_tokens: int
) -> dict[str, float | None]:
    """Throughput of one load, and the serving process's CPU microseconds per request."""
    before = _cpu_s(pid)
    out: dict[str, float | None] = dict(await _load(root, route, concurrency, count, max_tokens))
    after = _cpu_s(pid)
    out["cpu_us"] = None if before is None or after is None else (after - before) / count * 1e6
    return out


async def _bench(
    embedded: str, baseline: str, pids: tuple[int, int], per_level: int, max_tokens: int
) -> list[dict[str, Any]]:
    for route in (_chat, _generate):  # warm up imports, caches, connections
        await _load(embedded, route, 8, 50, max_tokens)
    await _load(baseline, _chat, 8, 50, max_tokens)
    rows = []
    for i in range(max(per_level, 64)):
        _prompt_ids(i)  # the client's own tokenizing stays out of the timings
    for c in LEVELS:
        count = max(c, per_level // 2 if c == 1 else per_level)
        base = await _measured(pids[1], baseline, _chat, c, count, max_tokens)
        row: dict[str, Any] = {"concurrency": c, "requests": count,
                               "baseline_rps": _round(base["rps"]),
                               "baseline_cpu_us_per_request": _round(base["cpu_us"])}  # fmt: skip
        for name, route in (("chat", _chat), ("generate", _generate)):
            emb = await _measured(pids[0], embedded, route, c, count, max_tokens)
            row[f"{name}_rps"] = _round(emb["rps"])
            row[f"{name}_tokens_per_s"] = _round(emb["tokens_per_s"])
            row[f"{name}_ratio_vs_baseline"] = _ratio(emb["rps"], base["rps"])
            row[f"{name}_cpu_us_per_request"] = _round(emb["cpu_us"])
            row[f"{name}_cpu_vs_baseline"] = _ratio(emb["cpu_us"], base["cpu_us"])
        rows.append(row)
    return rows


def _round(x: float | None) -> float | None:
    return None if x is None else round(x, 1)


def _ratio(a: float | None, b: float | None) -> float | None:
    return None if a is None or not b else round(a / b, 3)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--requests-per-level", type=int, default=400)
    p.add_argument("--max-tokens", type=int, default=16)
    p.add_argument("--baseline-server", action="store_true", help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.baseline_server:
        asyncio.run(_serve_baseline(args.max_tokens))
        return 0
    emb_proc, emb_url = _spawn(["-m", "rollout.cli", "serve", "--port", "0"])
    base_proc, base_url = _spawn(
        [__file__, "--baseline-server", "--max-tokens", str(args.max_tokens)]
    )
    load_before = os.getloadavg()[0]  # other work on the box moves throughput; CPU per request less
    emb_root, base_root = (url.removesuffix("/v1") for url in (emb_url, base_url))
    try:
        rows = asyncio.run(_bench(emb_root, base_root, (emb_proc.pid, base_proc.pid),
                                  args.requests_per_level, args.max_tokens))  # fmt: skip
    finally:
        for proc in (emb_proc, base_proc):
            proc.terminate()
            proc.wait(timeout=10)
    print(json.dumps({
        "benchmark": "embedded_server", "max_tokens": args.max_tokens, "stream": False,
        "cpus": os.cpu_count(), "python": platform.python_version(), "loadavg_1m_before": round(load_before, 2),
        "levels": rows,
    }))  # fmt: skip
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
