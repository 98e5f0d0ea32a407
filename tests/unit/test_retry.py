"""The one retry policy (compat/retry.py): a server's Retry-After is honoured,
bounded, and retries stop after the caller's budget (issue 12.19)."""

from __future__ import annotations

import asyncio
import email.utils
import time
from typing import Any

import httpx2
import pytest

import compat.retry
from compat import ModelCallError, OpenAICompatibleModel
from compat.retry import CALL_RETRY, RetryPolicy, retry_after_s
from tests.fakes import WireServer, openai_clients

MESSAGES = [{"role": "user", "content": "hi"}]


class Throttled(httpx2.HTTPStatusError):
    """An error shaped like the SDK's: it carries the response and its headers."""

    def __init__(self, headers: dict[str, str]) -> None:
        request = httpx2.Request("POST", "http://x.test/v1/chat/completions")
        super().__init__("429", request=request, response=httpx2.Response(429, headers=headers, request=request))


@pytest.mark.parametrize(
    ("headers", "expected"),
    [
        ({"retry-after": "5"}, 5.0),
        ({"retry-after": "0.5"}, 0.5),
        ({"retry-after-ms": "1500"}, 1.5),
        ({"retry-after-ms": "250", "retry-after": "9"}, 0.25),  # the finer one wins
        ({"retry-after": "-3"}, 0.0),
        ({"retry-after": "soon"}, None),  # neither seconds nor a date: ignored
        ({}, None),
    ],
)
def test_retry_after_is_read_from_the_response(headers: dict[str, str], expected: float | None) -> None:
    assert retry_after_s(Throttled(headers)) == expected


def test_retry_after_as_an_http_date() -> None:
    when = email.utils.formatdate(time.time() + 30, usegmt=True)
    wait = retry_after_s(Throttled({"retry-after": when}))
    assert wait is not None and 25 <= wait <= 31


def test_waits_follow_the_server_capped_else_back_off_exponentially(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(compat.retry, "SLEEP_SCALE", 1.0)
    policy = RetryPolicy(base_s=0.25, cap_s=8.0, max_wait_s=60.0)
    assert policy.wait_s(0, Throttled({"retry-after": "5"})) == 5.0
    assert policy.wait_s(0, Throttled({"retry-after": "86400"})) == 60.0  # a hostile ask is bounded
    for attempt in range(8):  # jittered in [half, full] of min(cap, base * 2**attempt)
        full = min(8.0, 0.25 * 2**attempt)
        assert full / 2 <= policy.wait_s(attempt, Throttled({})) <= full


class RateLimited(WireServer):
    """Answers the first `limited` requests with 429 and a Retry-After."""

    def __init__(self, limited: int, retry_after: str) -> None:
        super().__init__()
        self.limited = limited
        self.retry_after = retry_after

    def __call__(self, request: httpx2.Request) -> httpx2.Response:
        if self.limited:
            self.limited -= 1
            self.requests.append({})
            return httpx2.Response(
                429, headers={"retry-after": self.retry_after}, json={"error": {"message": "slow down"}}
            )
        return super().__call__(request)


@pytest.mark.parametrize("mode", ["sync", "async"])
def test_a_429_is_retried_after_the_wait_the_server_asked_for(mode: str, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(compat.retry, "SLEEP_SCALE", 1.0)
    waits: list[float] = []

    async def fake_asleep(seconds: float) -> None:
        waits.append(seconds)

    monkeypatch.setattr(compat.retry.time, "sleep", waits.append)
    monkeypatch.setattr(compat.retry.asyncio, "sleep", fake_asleep)
    server = RateLimited(limited=2, retry_after="5")
    sync, async_ = openai_clients(server, max_retries=0)
    model = OpenAICompatibleModel("m", client=sync, async_client=async_, max_retries=3)
    reply: Any = model.run(MESSAGES) if mode == "sync" else asyncio.run(model.arun(MESSAGES))
    assert reply.choices[0].message.content
    assert len(server.requests) == 3
    assert waits == [5.0, 5.0]  # not 0-0.5 s apart: what the server asked for


def test_retries_stop_at_the_budget(monkeypatch: pytest.MonkeyPatch) -> None:
    waits: list[float] = []
    monkeypatch.setattr(compat.retry.time, "sleep", waits.append)
    server = RateLimited(limited=100, retry_after="1")
    sync, async_ = openai_clients(server, max_retries=0)
    model = OpenAICompatibleModel("m", client=sync, async_client=async_, max_retries=2)
    with pytest.raises(ModelCallError) as err:
        model.run(MESSAGES)
    assert err.value.status_code == 429 and err.value.attempts == 3
    assert len(server.requests) == 3 and len(waits) == 2
    assert CALL_RETRY.max_wait_s == 60.0


_THROTTLING: list[RateLimited] = []


def throttled_client(url: str, model: str, api_key: str | None) -> Any:
    """A `backend.client_factory`: clients of the test's rate-limiting server."""
    return openai_clients(_THROTTLING[-1], max_retries=0)[1]


def test_an_episode_retry_waits_what_the_server_asked_for(monkeypatch: pytest.MonkeyPatch) -> None:
    """The call's retries are spent on a 429 with Retry-After: 2; the episode's retry then
    waits 2 s too (it waited 0.25-0.5 s: the SDK's response sat under the model's error)."""
    from rollout.collection.backend import Backend
    from rollout.collection.config import BackendSpec
    from rollout.collection.runner import Job, run_episode
    from rollout.episode import EpisodeStatus
    from rollout.recorder import Recorder

    waits: list[float] = []

    async def fake_asleep(seconds: float) -> None:
        waits.append(seconds)

    monkeypatch.setattr(compat.retry, "SLEEP_SCALE", 1.0)
    monkeypatch.setattr(compat.retry.asyncio, "sleep", fake_asleep)
    _THROTTLING.append(RateLimited(limited=2, retry_after="2"))
    spec = BackendSpec(kind="remote", client_factory=f"{__name__}:throttled_client", max_retries=1,
                       token_mode="off", request_token_ids=False)  # fmt: skip
    backend = Backend(spec, [], Recorder())

    async def agent(task: Any, model: Any) -> float:
        await model.arun(MESSAGES)
        return 1.0

    episode = asyncio.run(run_episode(Job("t", 0, {}), agent, backend, timeout_s=None, retries=1))
    assert episode.status == EpisodeStatus.COMPLETED and episode.reward == 1.0
    assert len(episode.metadata["failed_attempts"]) == 1  # the first attempt: two 429s
    assert waits == [2.0, 2.0]  # the call's retry, then the episode's: both as asked
