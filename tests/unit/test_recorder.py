"""Recorder and episodes: scoping under asyncio / threads, status, parents, rewards, secrets.

All calls go through the REAL openai SDK over `tests.fakes.WireServer`.
"""

from __future__ import annotations

import asyncio
import dataclasses
import random
import re
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np
import openai
import pytest

from rollout import Episode, EpisodeStatus, Recorder, RewardError, UnscopedCallError
from rollout.export import read_jsonl, write_jsonl
from tests.fakes import API_KEY, ENC, WireServer, openai_clients, render_prompt


def user(text: str) -> dict[str, Any]:
    return {"role": "user", "content": text}


def echo_responder(messages: list[dict[str, Any]], body: dict[str, Any]) -> str:
    """Replies name the last user message, so a reply can be traced to its request."""
    return f"re: {messages[-1]['content']}"


def setup(dialect: str = "vllm", **recorder_kwargs: Any) -> tuple[WireServer, Recorder, Any, Any]:
    server = WireServer(dialect=dialect, responder=echo_responder)
    rec = Recorder(request_token_ids=True, request_logprobs=True, **recorder_kwargs)
    sync, async_ = openai_clients(server)
    return server, rec, rec.wrap(sync), rec.wrap(async_)


class LengthServer(WireServer):
    """Every reply stops at the length limit."""

    def completion(self, body: dict[str, Any]) -> dict[str, Any]:
        out = super().completion(body)
        for c in out["choices"]:
            c["finish_reason"] = "length"
        return out


# ---------------------------------------------------------------- scoping


def test_sync_episode_context_manager() -> None:
    _, rec, client, _ = setup()
    with rec.episode("task-1", sample=3, task={"q": 1}, metadata={"k": "v"}) as ep:
        assert rec.current() is ep
        client.chat.completions.create(model="m", messages=[user("a")])
        client.chat.completions.create(model="m", messages=[user("b")])
    assert rec.current() is None
    assert ep.task_id == "task-1" and ep.sample == 3 and ep.uid == "task-1:3"
    assert ep.task == {"q": 1} and ep.metadata == {"k": "v"}
    assert [c.index for c in ep.calls] == [0, 1]
    assert [c.choices[0].message["content"] for c in ep.calls] == ["re: a", "re: b"]
    assert ep.status == EpisodeStatus.COMPLETED and ep.error is None
    assert rec.episodes() == [ep]
    assert rec.drain() == [ep] and rec.episodes() == []


def test_async_episode_and_nested_tasks_inherit_it() -> None:
    _, rec, _, client = setup()

    async def sub(tag: str) -> None:
        await asyncio.sleep(0)
        await client.chat.completions.create(model="m", messages=[user(tag)])

    async def go() -> Any:
        async with rec.episode("t") as ep:
            await client.chat.completions.create(model="m", messages=[user("top")])
            await asyncio.gather(sub("child-1"), sub("child-2"))
            await asyncio.create_task(sub("task"))
        return ep

    ep = asyncio.run(go())
    contents = sorted(c.request["messages"][0]["content"] for c in ep.calls)
    assert contents == ["child-1", "child-2", "task", "top"]
    assert rec.unscoped.calls == []


def test_200_interleaved_async_episodes_on_one_client() -> None:
    _, rec, _, client = setup()
    rng = random.Random(0)
    turns = {i: 1 + i % 4 for i in range(200)}

    async def agent(i: int) -> Any:
        async with rec.episode(f"task-{i}", sample=i % 8) as ep:
            for j in range(turns[i]):
                await asyncio.sleep(rng.random() * 0.002)
                await client.chat.completions.create(model="m", messages=[user(f"task {i} turn {j}")])
        return ep

    async def go() -> list[Any]:
        return await asyncio.gather(*(agent(i) for i in range(200)))

    episodes = asyncio.run(go())
    assert len(rec.episodes()) == 200
    for i, ep in enumerate(episodes):
        assert ep.task_id == f"task-{i}"
        assert len(ep.calls) == turns[i]
        for j, call in enumerate(ep.calls):
            asked = f"task {i} turn {j}"
            assert call.request["messages"] == [user(asked)]
            assert call.choices[0].message["content"] == f"re: {asked}"
            assert call.choices[0].ids.tolist() == ENC.encode(f"re: {asked}")
            assert call.prompt_ids.tolist() == render_prompt([user(asked)])
            assert call.index == j
    assert rec.unscoped.calls == []


def test_threads_each_with_their_own_episode() -> None:
    _, rec, client, _ = setup()

    def agent(i: int) -> Any:
        with rec.episode(f"task-{i}") as ep:
            for j in range(3):
                client.chat.completions.create(model="m", messages=[user(f"thread task {i} turn {j}")])
        return ep

    with ThreadPoolExecutor(max_workers=16) as pool:
        episodes = list(pool.map(agent, range(64)))
    for i, ep in enumerate(episodes):
        assert [c.request["messages"][0]["content"] for c in ep.calls] == [
            f"thread task {i} turn {j}" for j in range(3)
        ]
        assert all(c.choices[0].message["content"] == f"re: thread task {i} turn {j}"
                   for j, c in enumerate(ep.calls))
    assert len(rec.episodes()) == 64
    assert rec.unscoped.calls == []


def test_unscoped_keep() -> None:
    _, rec, client, aclient = setup()
    client.chat.completions.create(model="m", messages=[user("loose")])
    asyncio.run(aclient.chat.completions.create(model="m", messages=[user("loose async")]))
    assert [c.request["messages"][0]["content"] for c in rec.unscoped.calls] == ["loose", "loose async"]
    assert rec.unscoped.calls[0].exact
    assert rec.episodes() == []


def test_unscoped_refuse_sends_nothing() -> None:
    server, rec, client, aclient = setup(unscoped="refuse")
    with pytest.raises(UnscopedCallError):
        client.chat.completions.create(model="m", messages=[user("x")])
    with pytest.raises(UnscopedCallError):
        asyncio.run(aclient.chat.completions.create(model="m", messages=[user("x")]))
    with pytest.raises(UnscopedCallError):
        list(client.chat.completions.create(model="m", messages=[user("x")], stream=True))
    assert server.requests == []
    assert rec.unscoped.calls == []
    with rec.episode("ok") as ep:  # inside an episode it works
        client.chat.completions.create(model="m", messages=[user("x")])
    assert len(ep.calls) == 1 and len(server.requests) == 1


def test_unscoped_mode_is_validated() -> None:
    with pytest.raises(ValueError):
        Recorder(unscoped="drop")  # type: ignore[arg-type]


# ---------------------------------------------------------------- status


def test_exception_marks_error_and_keeps_calls() -> None:
    _, rec, client, _ = setup()
    with pytest.raises(KeyError), rec.episode("t") as ep:
        client.chat.completions.create(model="m", messages=[user("a")])
        raise KeyError("tool broke")
    assert ep.status == EpisodeStatus.ERROR
    assert ep.error is not None and "KeyError" in ep.error and "tool broke" in ep.error
    assert len(ep.calls) == 1
    assert rec.episodes() == [ep]


def test_timeout_marks_timeout_sync_and_async() -> None:
    _, rec, client, aclient = setup()
    with pytest.raises(TimeoutError), rec.episode("t") as ep:
        client.chat.completions.create(model="m", messages=[user("a")])
        raise TimeoutError("too slow")
    assert ep.status == EpisodeStatus.TIMEOUT and "too slow" in (ep.error or "")
    assert len(ep.calls) == 1

    async def go() -> Any:
        holder: dict[str, Any] = {}

        async def agent() -> None:
            async with rec.episode("t2") as ep:
                holder["ep"] = ep
                await aclient.chat.completions.create(model="m", messages=[user("b")])
                await asyncio.sleep(10)

        with pytest.raises(TimeoutError):
            await asyncio.wait_for(agent(), 0.2)
        return holder["ep"]

    ep2 = asyncio.run(go())
    # wait_for cancels the agent: the scope sees CancelledError, then the caller TimeoutError.
    # (Today: ERROR "CancelledError: " -- the scope cannot tell an outer timeout from a cancel.)
    assert ep2.status in (EpisodeStatus.TIMEOUT, EpisodeStatus.ERROR)
    assert (ep2.error is not None and "Cancelled" in ep2.error) or ep2.status == EpisodeStatus.TIMEOUT
    assert len(ep2.calls) == 1
    assert ep2 in rec.episodes()


def test_timeout_inside_the_episode_marks_timeout() -> None:
    _, rec, _, aclient = setup()

    async def go() -> Any:
        with pytest.raises(TimeoutError):
            async with rec.episode("t") as ep, asyncio.timeout(0.1):
                await aclient.chat.completions.create(model="m", messages=[user("b")])
                await asyncio.sleep(10)
        return ep

    ep = asyncio.run(go())
    assert ep.status == EpisodeStatus.TIMEOUT
    assert len(ep.calls) == 1


def test_length_on_the_last_call_marks_truncated() -> None:
    server = LengthServer(dialect="vllm")
    rec = Recorder(request_token_ids=True)
    client = rec.wrap(openai_clients(server)[0])
    with rec.episode("t") as ep:
        client.chat.completions.create(model="m", messages=[user("a")])
    assert ep.calls[0].choices[0].finish_reason == "length"
    assert ep.status == EpisodeStatus.TRUNCATED
    # A length stop on an earlier call only does not truncate the episode.
    plain = rec.wrap(openai_clients(WireServer(dialect="vllm"))[0])
    with rec.episode("t2") as ep2:
        client.chat.completions.create(model="m", messages=[user("a")])
        plain.chat.completions.create(model="m", messages=[user("b")])
    assert ep2.status == EpisodeStatus.COMPLETED


def test_failed_call_in_an_episode_that_recovers() -> None:
    server, rec, client, _ = setup()
    server.fail_statuses = [500]
    with rec.episode("t") as ep:
        with pytest.raises(openai.InternalServerError):
            client.chat.completions.create(model="m", messages=[user("a")])
        client.chat.completions.create(model="m", messages=[user("a")])
    assert ep.status == EpisodeStatus.COMPLETED
    assert len(ep.calls) == 1
    (failure,) = ep.metadata["failed_calls"]
    assert "InternalServerError" in failure["error"] and "500" in failure["error"]


# ---------------------------------------------------------------- parents


def test_parent_links_follow_the_conversation() -> None:
    _, rec, client, _ = setup()
    system = {"role": "system", "content": "sys"}
    with rec.episode("t") as ep:
        m1 = [system, user("q1")]
        r1 = client.chat.completions.create(model="m", messages=m1)
        m2 = [*m1, {"role": "assistant", "content": r1.choices[0].message.content}, user("q2")]
        r2 = client.chat.completions.create(model="m", messages=m2)
        # The SDK's message object appended as is, as many agents do.
        m3 = [*m2, r2.choices[0].message, user("q3")]
        client.chat.completions.create(model="m", messages=m3)
        client.chat.completions.create(model="m", messages=[system, user("fresh")])
        # Same prefix but a reply that was never sampled: not a child.
        client.chat.completions.create(model="m", messages=[*m1, {"role": "assistant", "content": "forged"},
                                                              user("q2")])
    assert [c.parent for c in ep.calls] == [None, 0, 1, None, None]
    # Turn 2's prompt ids extend turn 1's prompt + completion exactly (same template).
    p1, c1, p2 = ep.calls[0].prompt_ids, ep.calls[0].choices[0].ids, ep.calls[1].prompt_ids
    assert p2[: len(p1)].tolist() == p1.tolist()
    assert p2[len(p1) : len(p1) + len(c1)].tolist() == c1.tolist()


# ---------------------------------------------------------------- rewards


def three_call_episode(rec: Recorder, client: Any) -> Any:
    with rec.episode("t") as ep:
        m: list[dict[str, Any]] = [user("q")]
        for k in range(3):
            r = client.chat.completions.create(model="m", messages=m)
            m = [*m, {"role": "assistant", "content": r.choices[0].message.content}, user(f"q{k}")]
    return ep


def test_set_rewards_and_areal_discount() -> None:
    _, rec, client, _ = setup()
    ep = three_call_episode(rec, client)
    assert [c.parent for c in ep.calls] == [None, 0, 1]
    assert ep.call_rewards() == [0.0, 0.0, 0.0]
    ep.set_last_reward(1.0)
    assert [c.reward for c in ep.calls] == [None, None, 1.0]
    out = ep.discount(0.9)
    assert out == pytest.approx([0.81, 0.9, 1.0])
    assert [c.reward for c in ep.calls] == pytest.approx([0.81, 0.9, 1.0])
    with pytest.raises(RewardError):
        ep.discount(0.9)
    with pytest.raises(RewardError):
        ep.discount(0.9, tree=True)


def test_set_reward_by_index_and_id() -> None:
    _, rec, client, _ = setup()
    ep = three_call_episode(rec, client)
    ep.set_reward(0, 0.5)
    ep.set_reward(ep.calls[1].id, 2)
    assert ep.call_rewards() == [0.5, 2.0, 0.0]
    with pytest.raises(KeyError):
        ep.set_reward("no-such-id", 1.0)
    assert ep.discount(0.5) == pytest.approx([0.5 + 0.5 * 2.0, 2.0, 0.0])


def test_episode_reward_lands_on_last_call_when_discounting() -> None:
    _, rec, client, _ = setup()
    ep = three_call_episode(rec, client)
    ep.reward = 1.0
    assert ep.discount(0.5) == pytest.approx([0.25, 0.5, 1.0])
    with pytest.raises(ValueError):
        three_call_episode(rec, client).discount(1.5)
    with rec.episode("empty") as empty:
        pass
    with pytest.raises(RewardError):
        empty.set_last_reward(1.0)


def test_tree_discount_keeps_branches_apart() -> None:
    _, rec, client, _ = setup()

    def turn(messages: list[dict[str, Any]]) -> list[dict[str, Any]]:
        r = client.chat.completions.create(model="m", messages=messages)
        return [*messages, {"role": "assistant", "content": r.choices[0].message.content}]

    with rec.episode("t") as ep:
        root = turn([user("root")])  # call 0
        a1 = turn([*root, user("branch A")])  # call 1, parent 0
        turn([*root, user("branch B")])  # call 2, parent 0 (inserted between A1 and A2)
        turn([*a1, user("A again")])  # call 3, parent 1
    assert [c.parent for c in ep.calls] == [None, 0, 0, 1]
    ep.set_reward(3, 1.0)
    # Rule: return_i = r_i + gamma * mean(return of i's children).
    #   A2 = 1;  A1 = 0 + 0.9 * 1 = 0.9;  B1 = 0 (a leaf);  root = 0.9 * (0.9 + 0) / 2 = 0.405
    assert ep.discount(0.9, tree=True) == pytest.approx([0.405, 0.9, 0.0, 1.0])
    assert ep.calls[2].reward == 0.0  # branch B got nothing from branch A
    # The insertion-order walk would have leaked A's reward into B.
    _, rec2, client2, _ = setup()
    with rec2.episode("t") as flat:
        for k in range(4):
            client2.chat.completions.create(model="m", messages=[user(f"x{k}")])
    flat.set_reward(3, 1.0)
    assert flat.discount(0.9)[2] == pytest.approx(0.9)


NUMPY_REWARDS = [np.float32(0.5), np.float64(0.25), np.int64(2), np.int32(-1), np.bool_(True)]


@pytest.mark.parametrize("value", NUMPY_REWARDS, ids=lambda v: type(v).__name__)
def test_numpy_scalar_rewards_are_accepted_as_floats(value: Any) -> None:
    _, rec, client, _ = setup()
    ep = three_call_episode(rec, client)
    ep.reward = value
    ep.set_reward(0, value)
    ep.set_reward(ep.calls[1].id, value)
    ep.set_last_reward(value)
    built = Episode(reward=value)
    for got in (ep.reward, built.reward, *(c.reward for c in ep.calls)):
        assert type(got) is float and got == float(value)
    assert ep.discount(1.0) == pytest.approx([3 * float(value), 2 * float(value), float(value)])


BAD_REWARDS = [float("nan"), float("inf"), -float("inf"), np.float32("nan"), np.float64("-inf"), "1.0", [1.0]]


@pytest.mark.parametrize("value", BAD_REWARDS, ids=repr)
def test_non_finite_or_non_numeric_rewards_raise_naming_the_value(value: Any) -> None:
    _, rec, client, _ = setup()
    ep = three_call_episode(rec, client)
    ep.reward = 1.0
    ep.set_reward(0, 0.5)
    shown = re.escape(repr(value))
    with pytest.raises(RewardError, match=shown):
        ep.reward = value
    with pytest.raises(RewardError, match=shown):
        ep.set_reward(0, value)
    with pytest.raises(RewardError, match=shown):
        ep.set_last_reward(value)
    with pytest.raises(RewardError, match=shown):
        Episode(reward=value)
    assert ep.reward == 1.0 and ep.call_rewards() == [0.5, 0.0, 0.0]  # nothing half-written
    assert issubclass(RewardError, ValueError)
    ep.reward = None  # unsetting stays possible


# ---------------------------------------------------------------- secrets


SECRET_PATTERN = re.compile(r"authorization|bearer|" + re.escape(API_KEY), re.IGNORECASE)


def test_credentials_never_stored_or_exported(tmp_path: Path) -> None:
    server, rec, client, aclient = setup()
    headers = {"Authorization": f"Bearer {API_KEY}", "X-Api-Key": API_KEY}
    server.fail_statuses = [401]
    with rec.episode("t", metadata={"note": "secrets test"}) as ep:
        with pytest.raises(openai.AuthenticationError):
            client.chat.completions.create(model="m", messages=[user("a")], extra_headers=headers)
        client.chat.completions.create(
            model="m", messages=[user("b")], extra_headers=headers,
            extra_body={"api_key": API_KEY, "Authorization": f"Bearer {API_KEY}", "top_k": 1},
            extra_query={"key": API_KEY},
        )
        for _ in client.chat.completions.create(model="m", messages=[user("c")], stream=True,
                                                extra_headers=headers, extra_body={"api_key": API_KEY}):
            pass

    async def go() -> None:
        async with rec.episode("t2"):
            await aclient.chat.completions.create(model="m", messages=[user("d")], extra_headers=headers,
                                                  extra_body={"secret_token": API_KEY})

    asyncio.run(go())
    # The key did reach the wire each time ...
    assert all(h.get("authorization") == f"Bearer {API_KEY}" for h in server.headers)
    episodes = rec.episodes()
    assert sum(len(e.calls) for e in episodes) == 3
    assert episodes[0] is ep and ep.metadata["failed_calls"]
    # ... but never the record nor the export.
    for e in episodes:
        dumped = repr(dataclasses.asdict(e))
        assert not SECRET_PATTERN.search(dumped), dumped
    path = tmp_path / "eps.jsonl"
    assert write_jsonl(episodes, path, append=False) == 2
    text = path.read_text()
    assert not SECRET_PATTERN.search(text)
    back = list(read_jsonl(path))
    assert [len(e.calls) for e in back] == [2, 1]
    assert np.array_equal(back[0].calls[0].choices[0].logprobs, ep.calls[0].choices[0].logprobs)
