"""Every way the SDK asks for a chat completion is recorded, against the embedded server over HTTP.

Frameworks call the SDK in ways the demo agents do not: LangChain's
`ChatOpenAI` makes every non-streamed call as
`client.with_raw_response.create(**payload)`, then `raw.parse()` and
`dict(raw.headers)` (langchain-openai 1.8.1, `chat_models/base.py`
`_generate` / `_stream`). Each shape below goes through the real openai SDK,
sync and async: one record per call made, later calls in token mode, and the
agent gets the object type it gets without the wrapper.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Any

import httpx2
import openai
import pytest
from openai._legacy_response import LegacyAPIResponse
from openai._response import APIResponse, AsyncAPIResponse
from openai.types.chat import ChatCompletion

from rollout import Episode, Recorder, assemble
from rollout.embedded import EmbeddedServer
from rollout.tokenmode import FIRST_CALL

SYSTEM = {"role": "system", "content": "Answer with the number only."}


def user(text: str) -> dict[str, Any]:
    return {"role": "user", "content": text}


def recorder_and_clients(server: EmbeddedServer, mode: str = "auto") -> tuple[Recorder, Any, Any]:
    rec = Recorder(request_token_ids=True, request_logprobs=True, token_mode=mode)  # type: ignore[arg-type]
    sync = rec.wrap(openai.OpenAI(base_url=server.base_url, api_key="unused", max_retries=0))
    async_ = rec.wrap(openai.AsyncOpenAI(base_url=server.base_url, api_key="unused", max_retries=0))
    return rec, sync, async_


# --- LangChain's way: with_raw_response.create, then parse() and headers -------------------------


def langchain_generate(completions: Any, payload: dict[str, Any]) -> tuple[Any, dict[str, str]]:
    """What langchain_openai's `_generate` touches on the raw response."""
    raw = completions.with_raw_response.create(**payload)
    response = raw.parse()
    assert raw.http_response is not None  # LangChain attaches it to exceptions
    return response, dict(raw.headers)


async def alangchain_generate(completions: Any, payload: dict[str, Any]) -> tuple[Any, dict[str, str]]:
    raw = await completions.with_raw_response.create(**payload)
    response = raw.parse()
    assert raw.http_response is not None
    return response, dict(raw.headers)


def langchain_stream(completions: Any, payload: dict[str, Any]) -> str:
    """`_stream` with `include_response_headers`: the raw response's parse() is used as a context manager."""
    raw = completions.with_raw_response.create(stream=True, **payload)
    assert "content-type" in dict(raw.headers)
    text = ""
    with raw.parse() as response:
        for chunk in response:
            data = chunk if isinstance(chunk, dict) else chunk.model_dump()
            text += "".join(c["delta"].get("content") or "" for c in data["choices"])
    return text


async def alangchain_stream(completions: Any, payload: dict[str, Any]) -> str:
    raw = await completions.with_raw_response.create(stream=True, **payload)
    assert "content-type" in dict(raw.headers)
    text = ""
    async with raw.parse() as response:
        async for chunk in response:
            data = chunk.model_dump()
            text += "".join(c["delta"].get("content") or "" for c in data["choices"])
    return text


@pytest.mark.parametrize("mode", ["auto", "off"])
@pytest.mark.parametrize("is_async", [False, True])
def test_langchain_style_raw_response_calls_are_recorded(server: EmbeddedServer, mode: str, is_async: bool) -> None:
    rec, sync, async_ = recorder_and_clients(server, mode)
    completions = (async_ if is_async else sync).chat.completions  # LangChain keeps `root.chat.completions`
    seen: list[tuple[Any, dict[str, str]]] = []
    texts: list[str] = []

    async def agent() -> Episode:
        async with rec.episode("lc") as ep:
            messages: list[Any] = [SYSTEM, user("What is 2 + 3?")]
            for turn in range(3):
                payload = {"model": "tiny", "messages": messages, "max_tokens": 4, "seed": turn}
                if is_async:
                    seen.append(await alangchain_generate(completions, payload))
                else:
                    seen.append(langchain_generate(completions, payload))
                messages = [*messages, seen[-1][0].choices[0].message.model_dump(), user("Again.")]
            payload = {"model": "tiny", "messages": messages, "max_tokens": 4, "seed": 9}
            texts.append(await alangchain_stream(completions, payload) if is_async
                         else langchain_stream(completions, payload))  # fmt: skip
        await rec.aclose()
        return ep

    ep = asyncio.run(agent())
    assert len(ep.calls) == 4 and not ep.metadata.get("failed_calls")
    for (reply, headers), call in zip(seen, ep.calls, strict=False):
        assert type(reply) is ChatCompletion
        assert reply.choices[0].message.content == call.choices[0].message["content"]
        assert headers["content-type"].startswith("application/json")
    assert texts[0] == ep.calls[3].choices[0].message["content"]
    if mode == "auto":
        assert [c.sent_as for c in ep.calls] == ["messages", "tokens", "tokens", "tokens"]
        assert ep.calls[0].fallback == FIRST_CALL
        assert [c.parent for c in ep.calls] == [None, 0, 1, 2]
        assert all(h.get("x-rollout-sent-as") == "tokens" for _, h in seen[1:])
        result = assemble([ep])
        assert len(result) == 1 and result.num_drift == 0  # one exact row
    else:
        assert {c.sent_as for c in ep.calls} == {"messages"}
        assert all("x-rollout-sent-as" not in h for _, h in seen)


# --- every raw shape: one record per call, the SDK's own types --------------------------------


def _raw_paths(client: Any) -> dict[str, Callable[..., Any]]:
    return {
        "completions.with_raw_response": client.chat.completions.with_raw_response.create,
        "chat.with_raw_response": client.chat.with_raw_response.completions.create,
        "client.with_raw_response": client.with_raw_response.chat.completions.create,
        "with_options().with_raw_response": client.with_options(timeout=30).chat.completions.with_raw_response.create,
        "copy().with_raw_response": client.copy().chat.completions.with_raw_response.create,
    }


@pytest.mark.parametrize("path", list(_raw_paths(openai.OpenAI(api_key="x", base_url="http://127.0.0.1:9/v1"))))
@pytest.mark.parametrize("mode", ["auto", "off"])
def test_every_with_raw_response_path_records_sync_and_async(server: EmbeddedServer, path: str, mode: str) -> None:
    rec, sync, async_ = recorder_and_clients(server, mode)
    messages = [SYSTEM, user("What is 1 + 1?")]

    def turns(first: Any) -> list[Any]:
        reply = first.parse()
        return [*messages, reply.choices[0].message.model_dump(exclude_none=True), user("Again.")]

    with rec.episode("sync") as ep_sync:
        create = _raw_paths(sync)[path]
        first = create(model="tiny", messages=messages, max_tokens=3, seed=1)
        second = create(model="tiny", messages=turns(first), max_tokens=3, seed=2)

    async def go() -> tuple[Episode, Any, Any]:
        async with rec.episode("async") as ep:
            create = _raw_paths(async_)[path]
            first = await create(model="tiny", messages=messages, max_tokens=3, seed=1)
            second = await create(model="tiny", messages=turns(first), max_tokens=3, seed=2)
        await rec.aclose()
        return ep, first, second

    ep_async, afirst, asecond = asyncio.run(go())
    for ep, replies in ((ep_sync, (first, second)), (ep_async, (afirst, asecond))):
        assert all(type(r) is LegacyAPIResponse for r in replies)
        assert all(isinstance(r.parse(), ChatCompletion) and r.parse() is r.parse() for r in replies)
        assert all(isinstance(r.http_response, httpx2.Response) and r.status_code == 200 for r in replies)
        assert len(ep.calls) == 2 and not ep.metadata.get("failed_calls")
        assert [c.sent_as for c in ep.calls] == (["messages", "tokens"] if mode == "auto" else ["messages"] * 2)
        assert ep.calls[1].parent == 0
        assert replies[1].parse().choices[0].message.content == ep.calls[1].choices[0].message["content"]


@pytest.mark.parametrize("stream", [False, True])
@pytest.mark.parametrize("mode", ["auto", "off"])
def test_with_streaming_response_is_recorded_sync_and_async(server: EmbeddedServer, stream: bool, mode: str) -> None:
    rec, sync, async_ = recorder_and_clients(server, mode)
    messages = [SYSTEM, user("What is 3 + 3?")]
    extra = {"stream": True} if stream else {}

    def read(parsed: Any) -> str:
        if stream:
            return "".join(c.choices[0].delta.content or "" for c in parsed if c.choices)
        return str(parsed.choices[0].message.content)

    async def aread(parsed: Any) -> str:
        if stream:
            return "".join([c.choices[0].delta.content or "" async for c in parsed if c.choices])
        return str(parsed.choices[0].message.content)

    texts: list[str] = []
    kinds: list[type] = []
    with rec.episode("sync") as ep_sync:
        history = list(messages)
        for turn in range(2):
            with sync.chat.completions.with_streaming_response.create(
                model="tiny", messages=history, max_tokens=3, seed=turn, **extra
            ) as response:
                kinds.append(type(response))
                assert response.headers["content-type"]
                texts.append(read(response.parse()))
            history = [*history, {"role": "assistant", "content": texts[-1]}, user("Again.")]

    async def go() -> Episode:
        async with rec.episode("async") as ep:
            history = list(messages)
            for turn in range(2):
                async with async_.chat.completions.with_streaming_response.create(
                    model="tiny", messages=history, max_tokens=3, seed=turn, **extra
                ) as response:
                    kinds.append(type(response))
                    texts.append(await aread(await response.parse()))
                history = [*history, {"role": "assistant", "content": texts[-1]}, user("Again.")]
        await rec.aclose()
        return ep

    ep_async = asyncio.run(go())
    assert all(issubclass(k, APIResponse) for k in kinds[:2]) and all(issubclass(k, AsyncAPIResponse) for k in kinds[2:])
    calls = [*ep_sync.calls, *ep_async.calls]
    assert len(ep_sync.calls) == len(ep_async.calls) == 2
    assert not ep_sync.metadata.get("failed_calls") and not ep_async.metadata.get("failed_calls")
    assert [c.choices[0].message["content"] for c in calls] == texts
    expected = ["messages", "tokens"] if mode == "auto" else ["messages", "messages"]
    assert [c.sent_as for c in ep_sync.calls] == expected == [c.sent_as for c in ep_async.calls]


def test_a_streamed_raw_response_read_as_bytes_fails_its_call_loudly(server: EmbeddedServer) -> None:
    """Bytes read past parse() cannot be folded into a record: the call is a failure with the reason."""
    rec, sync, _ = recorder_and_clients(server, "off")
    with rec.episode("t") as ep, sync.chat.completions.with_streaming_response.create(
        model="tiny", messages=[SYSTEM, user("hi")], max_tokens=3, stream=True
    ) as response:
        body = b"".join(response.iter_bytes())
    assert b"data:" in body
    assert ep.calls == []
    (failure,) = ep.metadata["failed_calls"]
    assert "UnrecordedCallError" in failure["error"] and "without parse()" in failure["error"]


@pytest.mark.parametrize("mode", ["auto", "off"])
def test_streams_keep_the_sdks_type_and_are_recorded(server: EmbeddedServer, mode: str) -> None:
    """A recorded stream is still an `openai.Stream` / `AsyncStream`, in messages and token mode alike."""
    rec, sync, async_ = recorder_and_clients(server, mode)
    messages = [SYSTEM, user("What is 5 + 5?")]
    kinds: list[type] = []

    def history(*texts: str) -> list[Any]:
        out = list(messages)
        for text in texts:
            out += [{"role": "assistant", "content": text}, user("Again.")]
        return out

    with rec.episode("sync") as ep_sync:
        stream = sync.chat.completions.create(model="tiny", messages=messages, max_tokens=3, stream=True)
        kinds.append(type(stream))
        first = "".join(c.choices[0].delta.content or "" for c in stream if c.choices)
        raw = sync.chat.completions.with_raw_response.create(model="tiny", messages=history(first), max_tokens=3,
                                                              stream=True)  # fmt: skip
        kinds.append(type(raw.parse()))
        with raw.parse() as again:
            text = "".join(c.choices[0].delta.content or "" for c in again if c.choices)
        third = sync.chat.completions.create(model="tiny", messages=history(first, text), max_tokens=3, stream=True)
        kinds.append(type(third))
        assert third.response.status_code == 200  # what the SDK's stream helpers read
        list(third)

    async def go() -> Episode:
        async with rec.episode("async") as ep:
            stream = await async_.chat.completions.create(model="tiny", messages=messages, max_tokens=3, stream=True)
            kinds.append(type(stream))
            first = "".join([c.choices[0].delta.content or "" async for c in stream if c.choices])
            raw = await async_.chat.completions.with_raw_response.create(
                model="tiny", messages=history(first), max_tokens=3, stream=True
            )
            kinds.append(type(raw.parse()))
            async with raw.parse() as again:
                text = "".join([c.choices[0].delta.content or "" async for c in again if c.choices])
            third = await async_.chat.completions.create(model="tiny", messages=history(first, text), max_tokens=3,
                                                         stream=True)  # fmt: skip
            kinds.append(type(third))
            _ = [c async for c in third]
        await rec.aclose()
        return ep

    ep_async = asyncio.run(go())
    assert all(issubclass(k, openai.Stream) for k in kinds[:3])
    assert all(issubclass(k, openai.AsyncStream) for k in kinds[3:])
    for ep in (ep_sync, ep_async):
        assert len(ep.calls) == 3 and not ep.metadata.get("failed_calls")
        assert [c.sent_as for c in ep.calls] == (["messages", "tokens", "tokens"] if mode == "auto" else ["messages"] * 3)
        assert [c.parent for c in ep.calls] == [None, 0, 1]


@pytest.mark.parametrize("is_async", [False, True])
def test_the_sdk_stream_helper_goes_in_token_mode(server: EmbeddedServer, is_async: bool) -> None:
    """`chat.completions.stream(...)` (it sends the SDK's omit sentinels) is stitched like `create`."""
    rec, sync, async_ = recorder_and_clients(server)
    finals: list[Any] = []

    async def agent() -> Episode:
        async with rec.episode("t") as ep:
            messages: list[Any] = [SYSTEM, user("What is 2 + 3?")]
            for turn in range(3):
                kwargs = {"model": "tiny", "messages": messages, "max_tokens": 64, "seed": turn}
                if is_async:
                    async with async_.chat.completions.stream(**kwargs) as stream:
                        _ = [e async for e in stream]
                        finals.append(await stream.get_final_completion())
                else:
                    with sync.chat.completions.stream(**kwargs) as stream:
                        list(stream)
                        finals.append(stream.get_final_completion())
                text = finals[-1].choices[0].message.content
                messages = [*messages, {"role": "assistant", "content": text}, user("Again.")]
        await rec.aclose()
        return ep

    ep = asyncio.run(agent())
    assert [c.endpoint for c in ep.calls] == ["chat.completions.stream"] * 3
    assert [c.sent_as for c in ep.calls] == ["messages", "tokens", "tokens"]
    assert [f.choices[0].message.content for f in finals] == [c.choices[0].message["content"] for c in ep.calls]
    result = assemble([ep])
    assert len(result) == 1 and result.num_drift == 0
