"""`rollout.collection` through its Python API: real embedded server, real openai SDK, loopback only.

Covers in-memory and journal outputs, streaming with `acollect`, GRPO groups,
sync and dict-returning agents, determinism across runs and concurrency,
resume, failures from a fault-injecting proxy (5xx, dropped connections,
hangs) and config validation.
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import json
import threading
import weakref
from collections import Counter
from collections.abc import Iterator
from decimal import Decimal
from fractions import Fraction
from pathlib import Path
from typing import Any

import aiohttp
import numpy as np
import pytest
from aiohttp import web

from rollout.call_record import TokenSource
from rollout.collection import (
    Collector,
    CollectSummary,
    ConfigError,
    acollect,
    collect,
    load_config,
)
from rollout.collection.output import done_uids
from rollout.collection.runner import apply_result
from rollout.embedded import EmbeddedServer
from rollout.episode import Episode, EpisodeStatus
from rollout.errors import RewardError
from rollout.export import read_jsonl

FAST = {"output": {"path": None}, "progress": False}


def tasks(n: int) -> list[dict[str, Any]]:
    return [{"id": f"t{i}", "a": i, "b": 2, "answer": i + 2} for i in range(n)]


def run(
    agent: Any, task_list: list[dict[str, Any]], **settings: Any
) -> tuple[CollectSummary, list[Episode]]:
    """collect() with episodes gathered through on_episode (independent of summary.episodes)."""
    seen: list[Episode] = []
    summary = collect(agent=agent, tasks=task_list, on_episode=seen.append, **{**FAST, **settings})
    return summary, seen


async def one_turn(task: dict[str, Any], model: Any) -> float:
    reply = await model.arun(
        [{"role": "user", "content": f"{task['id']}: what is {task['a']}+{task['b']}?"}]
    )
    return 1.0 if reply.choices[0].message.content == str(task["answer"]) else 0.0


async def two_turns(task: dict[str, Any], model: Any) -> dict[str, Any]:
    messages: list[dict[str, Any]] = [{"role": "user", "content": f"task {task['id']}"}]
    for _ in range(2):
        reply = await model.arun(messages)
        messages += [
            {"role": "assistant", "content": reply.choices[0].message.content or ""},
            {"role": "user", "content": "again"},
        ]
    return {"reward": 0.5, "label": task["id"], "turns": 2}


def completions(episodes: list[Episode]) -> dict[str, list[list[int]]]:
    return {e.uid: [c.choices[0].ids.tolist() for c in e.calls] for e in episodes}


def assert_exact(episode: Episode) -> None:
    """Every id is the server's: the first prompt as it rendered it, each later
    prompt sent as tokens (token mode), extending the previous call's prompt and
    sampled ids exactly."""
    assert episode.calls, episode.uid
    for i, call in enumerate(episode.calls):
        assert len(call.prompt_ids) > 0
        if i == 0:
            assert call.prompt_source == TokenSource.VLLM and call.sent_as == "messages"
        else:
            prev = episode.calls[i - 1]
            assert call.prompt_source == TokenSource.TOKEN_IN and call.sent_as == "tokens", call.fallback
            head = np.concatenate([prev.prompt_ids, prev.choices[0].ids])
            assert call.prompt_ids[: len(head)].tolist() == head.tolist()
        for choice in call.choices:
            assert choice.source == TokenSource.VLLM
            assert len(choice.ids) > 0
            assert choice.versions.to_array().tolist() == [0] * len(choice.ids)
    assert episode.exact


# ------------------------------------------------------------------- outputs


def test_collect_keeps_episodes_in_memory_when_no_path() -> None:
    summary, seen = run(one_turn, tasks(3), samples_per_task=2)
    assert summary.requested == summary.finished == 6
    assert summary.output is None
    assert sorted(e.uid for e in summary.episodes) == sorted(e.uid for e in seen)
    assert len(summary.episodes) == 6
    for e in summary.episodes:
        assert e.status in (EpisodeStatus.COMPLETED, EpisodeStatus.TRUNCATED)
        assert_exact(e)


def test_collect_with_path_writes_journal_and_keeps_nothing(tmp_path: Path) -> None:
    out = tmp_path / "eps.jsonl"
    summary, seen = run(one_turn, tasks(3), output={"path": str(out)})
    assert summary.output == str(out)
    assert summary.episodes == []  # streamed to disk, not accumulated
    on_disk = read_jsonl(out)
    assert sorted(e.uid for e in on_disk) == sorted(e.uid for e in seen) == ["t0:0", "t1:0", "t2:0"]
    for e in on_disk:
        assert_exact(e)
    assert summary.tokens == sum(e.num_tokens for e in on_disk)


def alive_during_run(settings: dict[str, Any], n: int) -> int:
    """Run n episodes; at the last one, how many of the others are still in memory somewhere."""
    refs: list[weakref.ref[Episode]] = []
    alive: list[int] = []

    def note(episode: Episode) -> None:
        refs.append(weakref.ref(episode))
        if len(refs) == n:
            gc.collect()
            alive.append(sum(r() is not None for r in refs[:-1]))

    collect(agent=one_turn, tasks=tasks(n), on_episode=note, concurrency=2, progress=False, **settings)
    return alive[0]


def test_streamed_episodes_are_not_kept_in_memory(tmp_path: Path) -> None:
    """With an output path, memory stays flat: finished episodes are dropped as they are written.

    Not all at once: a cancelled asyncio timer (a call's timeout) keeps the
    context it was made in, with the episode in it, until the loop purges
    cancelled timers (when they are over half of at least 100 scheduled). So a
    bounded few linger, whatever the run's length.
    """
    n = 150
    alive = alive_during_run({"output": {"path": str(tmp_path / "eps.jsonl")}}, n)
    assert alive < n // 3, alive
    alive = alive_during_run({"output": {"path": None}}, n)  # in memory by request
    assert alive == n - 1


def test_resume_skips_episodes_already_in_the_journal(tmp_path: Path) -> None:
    out = str(tmp_path / "eps.jsonl")
    first, _ = run(one_turn, tasks(2), samples_per_task=2, output={"path": out})
    assert first.finished == 4 and first.skipped == 0
    second, ran = run(one_turn, tasks(3), samples_per_task=2, output={"path": out})
    assert second.requested == 6 and second.skipped == 4 and second.finished == 2
    assert sorted(e.uid for e in ran) == ["t2:0", "t2:1"]
    uids = [e.uid for e in read_jsonl(out)]
    assert len(uids) == len(set(uids)) == 6
    # resume off: the journal is rewritten from scratch
    third, ran = run(one_turn, tasks(1), output={"path": out, "resume": False})
    assert third.skipped == 0 and [e.uid for e in read_jsonl(out)] == ["t0:0"]


def test_acollect_yields_episodes_as_they_finish(tmp_path: Path) -> None:
    out = tmp_path / "eps.jsonl"

    async def agent(task: dict[str, Any], model: Any) -> float:
        if task["id"] == "t0":
            await asyncio.sleep(0.5)  # started first, finishes last
        return await one_turn(task, model)

    async def main() -> list[tuple[str, set[str]]]:
        order = []
        async for ep in acollect(
            agent=agent, tasks=tasks(4), concurrency=4, progress=False, output={"path": str(out)}
        ):
            order.append((ep.uid, done_uids(out)))  # already on disk when yielded
        return order

    order = asyncio.run(main())
    assert [u for u, _ in order][-1] == "t0:0"
    assert sorted(u for u, _ in order) == ["t0:0", "t1:0", "t2:0", "t3:0"]
    for uid, on_disk in order:
        assert uid in on_disk


def test_acollect_fills_a_summary() -> None:
    summary = CollectSummary()

    async def main() -> list[str]:
        return [
            ep.uid async for ep in acollect(agent=one_turn, tasks=tasks(2), summary=summary, **FAST)
        ]

    assert sorted(asyncio.run(main())) == ["t0:0", "t1:0"]
    assert summary.finished == 2 and summary.requested == 2 and summary.wall_s > 0


# -------------------------------------------------------------------- agents


def test_samples_per_task_makes_grpo_groups() -> None:
    _, seen = run(one_turn, tasks(3), samples_per_task=4, concurrency=5)
    groups: dict[str, list[int]] = {}
    for e in seen:
        groups.setdefault(e.task_id, []).append(e.sample)
    assert {k: sorted(v) for k, v in groups.items()} == {f"t{i}": [0, 1, 2, 3] for i in range(3)}
    # each sample of a group gets its own seed
    seeds = {e.calls[0].request.get("seed") for e in seen if e.task_id == "t0"}
    assert len(seeds) == 4


def test_sync_agent_by_import_path() -> None:
    summary, seen = run("examples.arithmetic:sync_episode", tasks(3))
    assert summary.finished == 3 and summary.failed == 0
    for e in seen:
        assert len(e.calls) == 1 and e.reward in (0.0, 1.0)
        assert_exact(e)


def test_multi_turn_example_agent_and_dict_result() -> None:
    _, seen = run("examples.arithmetic:episode", tasks(2), backend={"sampling": {"max_tokens": 4}})
    for e in seen:
        assert e.reward in (0.0, 1.0) and e.metadata["turns"] in (1, 2, 3)
        assert len(e.calls) == e.metadata["turns"]
        assert_exact(e)
    _, seen = run(two_turns, tasks(2))
    for e in seen:
        assert e.reward == 0.5
        assert e.metadata["label"] == e.task_id and e.metadata["turns"] == 2
        assert "reward" not in e.metadata
        assert len(e.calls) == 2
        # turn 2's prompt extends turn 1's prompt + sampled ids
        first, second = e.calls
        head = first.prompt_ids.tolist() + first.choices[0].ids.tolist()
        assert second.prompt_ids.tolist()[: len(first.prompt_ids)] == first.prompt_ids.tolist()
        assert len(second.prompt_ids) > len(head) - 1


async def plain_openai_agent(task: dict[str, Any], model: Any) -> float:
    """Agent code written against the bare openai SDK, not the compat model."""
    from openai import AsyncOpenAI

    client = model.async_client
    assert isinstance(client, AsyncOpenAI)
    reply = await client.chat.completions.create(
        model="tiny", messages=[{"role": "user", "content": f"{task['id']}?"}], max_tokens=3
    )
    return float(len(reply.choices[0].message.content or "") > 0)


def test_plain_openai_agent_is_recorded_through_model_async_client() -> None:
    summary, seen = run(plain_openai_agent, tasks(3))
    assert summary.finished == 3
    for episode in seen:
        assert len(episode.calls) == 1
        assert_exact(episode)
        assert episode.calls[0].request["max_tokens"] == 3


def test_agent_returning_nothing_or_bad_type() -> None:
    async def none_agent(task: Any, model: Any) -> None:
        await model.arun([{"role": "user", "content": "hi"}])

    async def bad_agent(task: Any, model: Any) -> str:
        await model.arun([{"role": "user", "content": "hi"}])
        return "not a reward"

    _, seen = run(none_agent, tasks(1))
    assert seen[0].reward is None and seen[0].status != EpisodeStatus.ERROR
    _, seen = run(bad_agent, tasks(1))
    assert seen[0].status == EpisodeStatus.ERROR and "str" in (seen[0].error or "")


def test_agent_exception_and_timeout_are_recorded_the_rest_complete() -> None:
    async def agent(task: dict[str, Any], model: Any) -> float:
        if task["id"] == "t1":
            raise KeyError("missing-field")
        if task["id"] == "t2":
            await asyncio.sleep(30)
        return await one_turn(task, model)

    summary, seen = run(agent, tasks(4), episode_timeout_s=5, concurrency=4)  # ample on a loaded box
    by = {e.task_id: e for e in seen}
    assert summary.finished == summary.requested == 4
    assert by["t1"].status == EpisodeStatus.ERROR and "missing-field" in (by["t1"].error or "")
    assert "KeyError" in (by["t1"].error or "")
    assert by["t2"].status == EpisodeStatus.TIMEOUT and "timeout" in (by["t2"].error or "")
    for k in ("t0", "t3"):
        assert by[k].status in (EpisodeStatus.COMPLETED, EpisodeStatus.TRUNCATED)
    assert summary.failed == 2
    assert summary.statuses.get("error") == 1 and summary.statuses.get("timeout") == 1


def test_an_agent_raising_cancelled_error_fails_only_its_episode() -> None:
    async def agent(task: dict[str, Any], model: Any) -> float:
        if task["id"] == "t1":
            raise asyncio.CancelledError("the agent gave up")
        return await one_turn(task, model)

    summary, seen = run(agent, tasks(3), concurrency=3)
    by = {e.task_id: e for e in seen}
    assert summary.finished == summary.requested == 3
    assert by["t1"].status == EpisodeStatus.ERROR
    assert "CancelledError" in (by["t1"].error or "") and "gave up" in (by["t1"].error or "")
    for k in ("t0", "t2"):
        assert by[k].status in (EpisodeStatus.COMPLETED, EpisodeStatus.TRUNCATED)


def test_closing_the_stream_still_cancels_the_episodes_in_flight() -> None:
    """The run being cancelled is not an episode failure: nothing more is yielded."""
    started: list[str] = []
    cancelled: list[str] = []

    async def agent(task: dict[str, Any], model: Any) -> float:
        if task["id"] != "t0":
            started.append(task["id"])
            try:
                await asyncio.sleep(30)
            except asyncio.CancelledError:
                cancelled.append(task["id"])
                raise
        return await one_turn(task, model)

    async def main() -> list[Episode]:
        stream = acollect(agent=agent, tasks=tasks(3), concurrency=3, **FAST)
        first = [await stream.__anext__()]
        await stream.aclose()
        return first

    first = asyncio.run(main())
    assert [e.task_id for e in first] == ["t0"]
    assert sorted(started) == sorted(cancelled) == ["t1", "t2"]


@pytest.mark.parametrize(
    ("reward", "expected"),
    [
        (np.float32(0.5), 0.5),
        (np.float64(0.25), 0.25),
        (np.int64(1), 1.0),
        (np.bool_(True), 1.0),
        ({"reward": np.float32(0.75), "n": 1}, 0.75),
        (Decimal("1.5"), 1.5),  # as `Episode.reward = Decimal("1.5")` takes it: one rule
        (Fraction(1, 4), 0.25),
    ],
)
def test_numpy_scalar_rewards_are_accepted(reward: Any, expected: float) -> None:
    async def agent(task: dict[str, Any], model: Any) -> Any:
        await one_turn(task, model)
        return reward

    _, seen = run(agent, tasks(1))
    assert seen[0].status in (EpisodeStatus.COMPLETED, EpisodeStatus.TRUNCATED), seen[0].error
    assert seen[0].reward == expected and type(seen[0].reward) is float


def test_an_agents_bad_reward_is_the_rewarderror_a_direct_assignment_raises() -> None:
    for bad in ("1.0", [1.0], float("nan")):
        with pytest.raises(RewardError) as direct:
            Episode(task_id="t").reward = bad
        with pytest.raises(RewardError) as returned:
            apply_result(Episode(task_id="t"), bad)
        assert str(direct.value) in str(returned.value)  # the same rule, the same words


@pytest.mark.parametrize(
    "reward", [float("nan"), np.float32("nan"), float("inf"), -np.inf, {"reward": float("nan")}]
)
def test_a_non_finite_reward_fails_its_episode_not_the_run(reward: Any) -> None:
    async def agent(task: dict[str, Any], model: Any) -> Any:
        await one_turn(task, model)
        return reward if task["id"] == "t0" else 1.0

    summary, seen = run(agent, tasks(2))
    by = {e.task_id: e for e in seen}
    assert summary.finished == 2
    assert by["t0"].status == EpisodeStatus.ERROR
    assert "finite" in (by["t0"].error or ""), by["t0"].error
    assert by["t0"].calls  # what was recorded is kept
    assert by["t1"].status in (EpisodeStatus.COMPLETED, EpisodeStatus.TRUNCATED)
    assert by["t1"].reward == 1.0


# -------------------------------------------------------------- determinism


def test_same_seed_same_tokens_regardless_of_concurrency() -> None:
    task_list = tasks(6)
    a = completions(run(two_turns, task_list, samples_per_task=2, concurrency=1)[1])
    b = completions(run(two_turns, task_list, samples_per_task=2, concurrency=8)[1])
    c = completions(run(two_turns, task_list, samples_per_task=2, concurrency=8)[1])
    assert len(a) == 12
    assert a == b == c
    # samples of one task differ (they are not the same seed replayed)
    assert len({json.dumps(a[f"t0:{k}"]) for k in range(2)} | {json.dumps(a["t1:0"])}) > 1
    d = completions(run(two_turns, task_list, samples_per_task=2, concurrency=8, seed=1)[1])
    assert d.keys() == a.keys() and d != a


# ------------------------------------------------------ fault-injecting proxy


class FaultProxy:
    """An aiohttp proxy to an EmbeddedServer that misbehaves for marked requests.

    The marker is the episode's task id inside the request's messages:
    `fail500` always answers 500, `flaky500` answers 500 on its first request,
    `drop` always closes the connection mid-response, `flakydrop` does so once,
    `reset` closes the connection before any reply, `hang` never answers.
    Everything else is forwarded unchanged.
    """

    def __init__(self, server: str) -> None:
        self.server = server
        self.hits: Counter[str] = Counter()
        self.port = 0
        self._loop: asyncio.AbstractEventLoop | None = None
        self._runner: web.AppRunner | None = None
        self._session: aiohttp.ClientSession | None = None

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.port}/v1"

    async def _handle(self, request: web.Request) -> web.StreamResponse:
        raw = await request.read()
        text = json.dumps(json.loads(raw).get("messages", []))
        marker = next(
            (m for m in ("flaky500", "fail500", "flakydrop", "drop", "reset", "hang") if m in text),
            "ok",
        )
        self.hits[marker] += 1
        n = self.hits[marker]
        if marker == "fail500" or (marker == "flaky500" and n == 1):
            return web.json_response(
                {"error": {"message": "injected fault", "type": "server_error"}}, status=500
            )
        if marker == "drop" or (marker == "flakydrop" and n == 1):
            resp = web.StreamResponse(status=200, headers={"Content-Type": "application/json"})
            resp.content_length = 4096
            await resp.prepare(request)
            await resp.write(b'{"id": "chatcmpl-x", "choi')
            assert request.transport is not None
            request.transport.close()  # the connection drops mid-body
            return resp
        if marker == "reset":
            assert request.transport is not None
            request.transport.close()  # no status line, no headers: the server went away
            return web.Response()
        if marker == "hang":
            await asyncio.sleep(60)
        assert self._session is not None
        async with self._session.post(
            f"{self.server}/chat/completions",
            data=raw,
            headers={"Content-Type": "application/json"},
        ) as up:
            body = await up.read()
            return web.Response(body=body, status=up.status, content_type="application/json")

    def __enter__(self) -> FaultProxy:
        ready = threading.Event()

        async def start() -> None:
            self._session = aiohttp.ClientSession()
            app = web.Application()
            app.router.add_post("/v1/chat/completions", self._handle)
            self._runner = web.AppRunner(app, shutdown_timeout=0.1)
            await self._runner.setup()
            site = web.TCPSite(self._runner, "127.0.0.1", 0)
            await site.start()
            self.port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]

        def main() -> None:
            loop = asyncio.new_event_loop()
            self._loop = loop
            loop.run_until_complete(start())
            ready.set()
            loop.run_forever()
            loop.close()

        self._thread = threading.Thread(target=main, daemon=True)
        self._thread.start()
        assert ready.wait(10)
        return self

    def __exit__(self, *exc: Any) -> None:
        assert self._loop is not None and self._runner is not None and self._session is not None

        async def stop() -> None:
            assert self._runner is not None and self._session is not None
            await self._session.close()
            await self._runner.cleanup()

        with contextlib.suppress(Exception):
            asyncio.run_coroutine_threadsafe(stop(), self._loop).result(timeout=5)
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(timeout=5)


@pytest.fixture
def proxy(server: EmbeddedServer) -> Iterator[FaultProxy]:
    with FaultProxy(server.base_url) as p:
        yield p


def remote(url: str, **backend: Any) -> dict[str, Any]:
    spec = {"kind": "remote", "urls": [url], "model": "tiny", "max_retries": 0, "timeout_s": 5}
    spec.update(backend)
    spec["sampling"] = {"temperature": 1.0, "max_tokens": 4}
    return spec


def test_remote_backend_on_an_embedded_server(server: EmbeddedServer) -> None:
    summary, seen = run(two_turns, tasks(4), samples_per_task=2, backend=remote(server.base_url))
    assert summary.finished == 8 and summary.failed == 0
    for e in seen:
        assert e.metadata["server"] == server.base_url
        assert_exact(e)


def async_client_factory(url: str, model: str, api_key: str | None) -> Any:
    """A `backend.client_factory`: the user's own AsyncOpenAI (its create is decorated)."""
    from openai import AsyncOpenAI

    return AsyncOpenAI(base_url=url, api_key=api_key or "unused", max_retries=0)


def test_an_async_client_from_a_factory_is_used_as_async(server: EmbeddedServer) -> None:
    """It is `model.async_client` (not mistaken for a sync client), so plain SDK code works."""
    factory = "tests.integration.test_collect:async_client_factory"
    for agent in (one_turn, plain_openai_agent):
        summary, seen = run(agent, tasks(2), backend=remote(server.base_url, client_factory=factory))
        assert summary.finished == 2 and summary.failed == 0, summary.first_error
        for e in seen:
            assert_exact(e)


def test_faults_are_recorded_and_nothing_is_lost(proxy: FaultProxy) -> None:
    task_list = [
        {"id": name, "a": 1, "b": 1, "answer": 2}
        for name in ("ok1", "fail500", "drop", "hang", "ok2")
    ]
    summary, seen = run(
        one_turn,
        task_list,
        backend=remote(proxy.base_url),
        episode_retries=1,
        episode_timeout_s=1.5,
        concurrency=5,
    )
    by = {e.task_id: e for e in seen}
    assert summary.finished == summary.requested == 5 and len(seen) == 5
    assert by["fail500"].status == EpisodeStatus.ERROR
    assert "500" in (by["fail500"].error or "") or "InternalServerError" in (
        by["fail500"].error or ""
    )
    assert by["drop"].status == EpisodeStatus.ERROR
    assert (
        "connection" in (by["drop"].error or "").lower()
        or "disconnect" in (by["drop"].error or "").lower()
    )
    assert by["hang"].status == EpisodeStatus.TIMEOUT
    assert "timeout" in (by["hang"].error or "").lower()
    for k in ("ok1", "ok2"):
        assert by[k].status in (EpisodeStatus.COMPLETED, EpisodeStatus.TRUNCATED)
        assert_exact(by[k])
    # transport failures were retried once on a fresh episode; a timeout is not a transport failure
    assert len(by["fail500"].metadata.get("failed_attempts", [])) == 1
    assert len(by["drop"].metadata.get("failed_attempts", [])) == 1
    assert "failed_attempts" not in by["hang"].metadata
    assert summary.statuses == {**Counter(e.status.value for e in seen)}


def test_transient_faults_are_retried_and_succeed(proxy: FaultProxy) -> None:
    task_list = [
        {"id": name, "a": 1, "b": 1, "answer": 2} for name in ("flaky500", "flakydrop", "ok")
    ]
    summary, seen = run(one_turn, task_list, backend=remote(proxy.base_url), episode_retries=2)
    by = {e.task_id: e for e in seen}
    assert summary.finished == 3 and summary.failed == 0
    for name in ("flaky500", "flakydrop"):
        ep = by[name]
        assert ep.status in (EpisodeStatus.COMPLETED, EpisodeStatus.TRUNCATED), ep.error
        assert len(ep.calls) == 1  # the failed attempt's episode is not mixed in
        assert_exact(ep)
        assert proxy.hits[name] == 2  # the failure, then the episode retry that succeeded


def test_retry_budget_is_bounded(proxy: FaultProxy) -> None:
    """An always-failing request is tried (episode_retries + 1) x (client retries + 1) times."""
    run(
        one_turn,
        [{"id": "fail500", "a": 1, "b": 1, "answer": 2}],
        backend=remote(proxy.base_url, max_retries=1),
        episode_retries=1,
    )
    assert proxy.hits["fail500"] == 4, proxy.hits


def test_unreachable_server_is_an_error_not_a_crash() -> None:
    summary, seen = run(
        one_turn, tasks(2), backend=remote("http://127.0.0.1:9/v1"), episode_retries=0
    )
    assert summary.finished == 2 and summary.failed == 2
    for e in seen:
        assert e.status == EpisodeStatus.ERROR and "connect" in (e.error or "").lower()


def faulty_episode(
    proxy: FaultProxy, agent: Any, marker: str, *, call_timeout_s: float, episode_timeout_s: float
) -> tuple[EpisodeStatus, str]:
    """Status and error of one episode whose calls meet the proxy's `marker` fault."""
    _, seen = run(
        agent,
        [{"id": marker, "a": 1, "b": 1, "answer": 2}],
        backend=remote(proxy.base_url, timeout_s=call_timeout_s),
        episode_timeout_s=episode_timeout_s,
        episode_retries=0,
    )
    failed = "; ".join(f["error"] for f in seen[0].metadata.get("failed_calls", []))
    return seen[0].status, f"{seen[0].error or ''} | failed calls: {failed}"


def test_a_call_timeout_is_not_reported_as_the_episode_timeout(proxy: FaultProxy) -> None:
    status, error = faulty_episode(proxy, one_turn, "hang", call_timeout_s=0.5, episode_timeout_s=30)
    assert status == EpisodeStatus.TIMEOUT
    assert "30" not in error and "timed out" in error.lower(), error


def sync_one_turn(task: dict[str, Any], model: Any) -> float:
    reply = model.run([{"role": "user", "content": f"{task['id']}: what is {task['a']}+{task['b']}?"}])
    return 1.0 if reply.choices[0].message.content == str(task["answer"]) else 0.0


@pytest.mark.parametrize("agent", [one_turn, sync_one_turn], ids=["async", "sync"])
def test_a_dropped_connection_is_recorded_as_such_not_as_a_timeout(
    proxy: FaultProxy, agent: Any
) -> None:
    """The SDK's aiohttp transport reports a closed connection as a connect *timeout*."""
    status, error = faulty_episode(proxy, agent, "reset", call_timeout_s=30, episode_timeout_s=60)
    assert status == EpisodeStatus.ERROR, error
    assert "timed out" not in error.lower() and "timeout" not in error.lower(), error
    assert "connection" in error.lower() or "disconnect" in error.lower(), error


# -------------------------------------------------------------------- configs


def write(tmp_path: Path, text: str) -> Path:
    p = tmp_path / "c.yaml"
    p.write_text(text)
    return p


@pytest.mark.parametrize(
    ("yaml_text", "overrides", "needle"),
    [
        ("agnet: x\n", [], "agnet"),
        ("backend: {smapling: {}}\n", [], "backend.smapling"),
        ("", ["backend.smapling.temperature=1"], "backend.smapling"),
        ("", ["output.paht=x"], "output.paht"),
        ("concurrency: 0\n", [], "concurrency"),
        ("", ["concurrency=0"], "concurrency"),
        ("", ["executor=foo"], "executor"),
        ("backend: {kind: remote}\n", [], "backend.urls"),
        ("", ["backend.urls=[localhost:8000]"], "localhost:8000"),
        ("", ["episode_timeout_s=-1"], "episode_timeout_s"),
        ("", ["samples_per_task=abc"], "samples_per_task"),
        ("", ["limit"], "limit"),
        ("", ["=3"], "=3"),
        ("", ["concurrency.x=1"], "concurrency"),
        ("- a\n- b\n", [], "mapping"),
        ("a: [1, 2\n", [], "YAML"),
    ],
)
def test_bad_configs_raise_config_error_naming_the_key(
    tmp_path: Path, yaml_text: str, overrides: list[str], needle: str
) -> None:
    with pytest.raises(ConfigError, match=r"(?s).*") as info:
        load_config(write(tmp_path, yaml_text), overrides)
    assert needle in str(info.value)


def test_missing_config_file(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="does not exist"):
        load_config(tmp_path / "nope.yaml")


def test_collect_reports_config_errors_before_running(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"backend\.smapling"):
        collect(write(tmp_path, "backend: {smapling: {}}\n"))
    with pytest.raises(ConfigError, match="concurrency"):
        collect(agent=one_turn, tasks=tasks(1), concurrency=0, **FAST)
    with pytest.raises(ConfigError, match="does not exist"):
        collect(agent=one_turn, tasks=str(tmp_path / "missing.jsonl"), **FAST)
    with pytest.raises(ConfigError, match="duplicate task id"):
        collect(agent=one_turn, tasks=[{"id": 1}, {"id": 1}], **FAST)
    with pytest.raises(ConfigError, match="no tasks"):
        collect(agent=one_turn, tasks=[], **FAST)
    (tmp_path / "blank.jsonl").write_text("\n\n")
    with pytest.raises(ConfigError, match="no tasks"):
        collect(agent=one_turn, tasks=str(tmp_path / "blank.jsonl"), **FAST)


def test_the_library_asks_for_the_agent_and_tasks_it_runs(tmp_path: Path) -> None:
    """No demo defaults: without tasks (or agent) a run is a ConfigError, not the 48
    arithmetic tasks on the user's agent."""
    ran: list[Any] = []

    async def mine(task: Any, model: Any) -> float:
        ran.append(task)
        return 0.0

    with pytest.raises(ConfigError, match="no tasks: set `tasks:`"):
        collect(agent=mine, **FAST)
    with pytest.raises(ConfigError, match="no agent: set `agent:"):
        collect(tasks=tasks(1), **FAST)
    with pytest.raises(ConfigError, match="no tasks"), Collector(agent=mine, **FAST) as c:
        c.run_batch()
    assert ran == []
    assert load_config().agent is None and load_config().tasks is None


def test_bad_agent_path_is_a_config_error() -> None:
    with pytest.raises(ConfigError, match="nope"):
        collect(agent="examples.arithmetic:nope", tasks=tasks(1), **FAST)
    with pytest.raises(ConfigError, match="no_such_module"):
        collect(agent="no_such_module:episode", tasks=tasks(1), **FAST)


def test_the_shipped_configs_load() -> None:
    cfg = load_config("configs/local.yaml", ["limit=2", "backend.embedded.latency_ms=5"])
    assert cfg.backend.kind == "embedded" and cfg.limit == 2
    assert cfg.backend.embedded.latency_ms == 5 and cfg.backend.sampling["max_tokens"] == 4
    assert load_config("configs/vllm.yaml").backend.kind == "remote"


def test_keyword_settings_merge_into_sections() -> None:
    eps: list[Episode] = []
    collect(
        "configs/local.yaml",
        agent=one_turn,
        tasks=tasks(1),
        samples_per_task=1,
        backend={"embedded": {"latency_ms": 1}},
        on_episode=eps.append,
        **FAST,
    )
    assert eps[0].calls[0].request["max_tokens"] == 4  # configs/local.yaml's sampling survives


def test_a_config_object_keeps_its_values_under_overrides() -> None:
    cfg = load_config("configs/local.yaml", ["output.path=null", "progress=false"])
    summary = CollectSummary()

    async def main() -> list[Episode]:
        return [
            ep async for ep in acollect(cfg, overrides=["limit=2"], agent=one_turn, summary=summary)
        ]

    eps = asyncio.run(main())
    # samples_per_task: 4 and the in-memory output come from cfg; limit from the override
    assert len(eps) == 8 and summary.output is None
