"""Setup shared by the collection benchmarks: the server process, the agents, tasks, CPU time.

Imported as `_common` by the scripts next to it, and as `benchmarks._common`
by Ray workers (the scripts put the repository root on PYTHONPATH for them).
"""

from __future__ import annotations

import multiprocessing as mp
import os
import time
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TURNS = 3


def messages_for(task: dict[str, Any], turn: int, replies: list[str]) -> list[dict[str, Any]]:
    """The prompt of `turn`: the task, then each earlier reply followed by "Again."."""
    msgs: list[dict[str, Any]] = [
        {"role": "user", "content": f"Task {task['id']}: add {task['a']} and {task['b']}."}
    ]
    for reply in replies[:turn]:
        msgs += [{"role": "assistant", "content": reply}, {"role": "user", "content": "Again."}]
    return msgs


async def three_turns(task: dict[str, Any], model: Any) -> float:
    """Deterministic agent: exactly TURNS calls, each prompt extending the last."""
    replies: list[str] = []
    for turn in range(TURNS):
        response = await model.arun(messages_for(task, turn, replies))
        replies.append(response.choices[0].message.content or "")
    return 0.0


async def one_call(task: dict[str, Any], model: Any) -> dict[str, Any]:
    """The shortest real episode: one recorded call. Reports where it ran and that process's peak RSS."""
    await model.arun(messages_for(task, 0, []))
    return {"reward": 0.0, "pid": os.getpid(), "peak_kb": status_kb("self", "VmHWM")}


async def noop(task: dict[str, Any], model: Any) -> float:
    """No call at all: what an episode costs the executor alone."""
    return 0.0


def make_tasks(n: int, offset: int = 0) -> list[dict[str, Any]]:
    return [{"id": f"t{offset + i}", "a": i, "b": i % 7} for i in range(n)]


def remote_backend(url: str, max_tokens: int) -> dict[str, Any]:
    """Backend settings for a server we started: no retries, small completions."""
    return {
        "kind": "remote",
        "urls": [url],
        "model": "tiny",
        "max_retries": 0,
        "sampling": {"temperature": 1.0, "max_tokens": max_tokens},
    }


def _serve(queue: Any, latency_s: float) -> None:
    """Server process: the embedded server on a free port until terminated."""
    from rollout.embedded import EmbeddedServer, Policy

    server = EmbeddedServer(policy=Policy(seed=0), model_name="tiny", latency_s=latency_s, seed=0)
    server.start()
    queue.put(server.base_url)
    while True:
        time.sleep(3600)


@contextmanager
def server_process(latency_s: float) -> Iterator[tuple[str, int]]:
    """(base URL, pid) of an embedded server in its own process, so its CPU and memory are its own."""
    ctx = mp.get_context("spawn")
    queue = ctx.Queue()
    proc = ctx.Process(target=_serve, args=(queue, latency_s), daemon=True)
    proc.start()
    try:
        yield queue.get(timeout=60), proc.pid or 0
    finally:
        proc.terminate()
        proc.join(timeout=10)


def status_kb(pid: int | str, field: str) -> int:
    """A `VmRSS` / `VmHWM` line of /proc/PID/status, in KiB (Linux; 0 elsewhere)."""
    try:
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                if line.startswith(field + ":"):
                    return int(line.split()[1])
    except (OSError, ValueError):
        pass
    return 0


def cpu_s(pid: int) -> float:
    """User + system CPU seconds of a process (Linux /proc; 0.0 elsewhere)."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            fields = f.read().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
    except (OSError, IndexError, ValueError):
        return 0.0
