"""The recorder reads a genuine openai client's reply as the SDK parses it (`rollout.reply_tap`).

The tap is an optimisation: a record read from the parsed JSON must equal the
record read from the SDK's objects, concurrent calls must each read their own
reply, and a reply that strict mode refuses must fail the same way. The real
openai SDK against the embedded server over loopback HTTP.
"""

from __future__ import annotations

import asyncio
import json
from typing import Any

import httpx2
import numpy as np
import openai
import pytest

import rollout.recorder
import rollout.stream_tap
from rollout import CallRecord, Recorder, TokenRecordError
from rollout.embedded import EmbeddedServer
from tests.integration.test_token_mode import TOOLS, forced_tool_policy
from tests.integration.test_token_mode_parity import proxy  # noqa: F401  (fixture)

MESSAGES = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Name a colour."}]


@pytest.fixture
def read_from(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """How each record was read: "tap" where the hook handed it the parsed body, else the type
    of what it was read from (the SDK's class; a stream's folded chunks are a dict)."""
    seen: list[str] = []
    extract, reader = rollout.recorder.PendingCall._extract, rollout.recorder.PendingCall.reader

    def spy_extract(self: Any, response: Any, client: Any, messages: list[Any]) -> Any:
        seen.append(type(response).__name__)
        return extract(self, response, client, messages)

    def spy_reader(self: Any, client: Any) -> Any:
        read = reader(self, client)
        if read is None:
            return None

        def tapped(data: dict[str, Any]) -> None:
            seen.append("tap")
            with monkeypatch.context() as m:  # the tap's own read is not counted twice
                m.setattr(rollout.recorder.PendingCall, "_extract", extract)
                read(data)

        return tapped

    monkeypatch.setattr(rollout.recorder.PendingCall, "_extract", spy_extract)
    monkeypatch.setattr(rollout.recorder.PendingCall, "reader", spy_reader)
    return seen


def untapped(client: Any) -> Any:
    """The recording client without the hook: its records are read from the SDK's objects."""
    del client.__dict__["_process_response_data"]
    return client


def same_record(a: CallRecord, b: CallRecord) -> None:
    assert a.prompt_ids.tolist() == b.prompt_ids.tolist() and a.prompt_source == b.prompt_source
    assert a.usage == b.usage and a.notes == b.notes and a.id != b.id
    for x, y in zip(a.choices, b.choices, strict=True):
        assert x.ids.tolist() == y.ids.tolist() and x.source == y.source
        assert np.array_equal(x.logprobs, y.logprobs)
        assert x.versions == y.versions and x.finish_reason == y.finish_reason
        assert without_call_ids(x.message) == without_call_ids(y.message)


def without_call_ids(message: dict[str, Any]) -> dict[str, Any]:
    """The server names each tool call afresh (`call_<random>`): all else must match."""
    calls = [{k: v for k, v in c.items() if k != "id"} for c in message.get("tool_calls") or []]
    return {**message, "tool_calls": calls} if calls else message


def calls(server: EmbeddedServer, client_type: type, *, tap: bool, is_async: bool, **ask: Any) -> list[CallRecord]:
    rec = Recorder(request_token_ids=True, request_logprobs=True, token_mode="off")
    client = rec.wrap(client_type(base_url=server.base_url, api_key="unused", max_retries=0))
    if not tap:
        client = untapped(client)
    kw = {"model": "tiny", "messages": MESSAGES, "max_tokens": 12, "seed": 7, "n": 2, **ask}

    async def run_async() -> None:
        async with rec.episode("t"):
            for _ in range(2):
                await client.chat.completions.create(**kw)

    if is_async:
        asyncio.run(run_async())
    else:
        with rec.episode("t"):
            for _ in range(2):
                client.chat.completions.create(**kw)
    (episode,) = rec.episodes()
    return episode.calls


@pytest.mark.parametrize("is_async", [False, True])
def test_a_record_read_as_parsed_equals_one_read_from_the_sdk_objects(
    server: EmbeddedServer, read_from: list[str], is_async: bool
) -> None:
    client_type = openai.AsyncOpenAI if is_async else openai.OpenAI
    tapped = calls(server, client_type, tap=True, is_async=is_async)
    assert read_from == ["tap", "tap"]
    read_from.clear()
    plain = calls(server, client_type, tap=False, is_async=is_async)
    assert read_from == ["ChatCompletion", "ChatCompletion"]
    assert all(c.exact for c in tapped) and len(tapped) == len(plain) == 2
    for a, b in zip(tapped, plain, strict=True):
        same_record(a, b)


def test_concurrent_calls_each_read_their_own_reply(server: EmbeddedServer, read_from: list[str]) -> None:
    rec = Recorder(request_token_ids=True, token_mode="off")
    client = rec.wrap(openai.AsyncOpenAI(base_url=server.base_url, api_key="unused", max_retries=0))

    async def one(k: int) -> tuple[str, Any]:
        async with rec.episode(f"t{k}"):
            reply = await client.chat.completions.create(
                model="tiny", messages=[{"role": "user", "content": f"task {k}"}], max_tokens=4 + k % 5, seed=k
            )
            return f"t{k}", reply

    async def run() -> list[tuple[str, Any]]:
        return await asyncio.gather(*(one(k) for k in range(24)))

    replies = dict(asyncio.run(run()))
    assert read_from == ["tap"] * 24
    for episode in rec.episodes():
        (call,) = episode.calls
        reply = replies[episode.task_id]
        assert call.id == reply.id
        assert call.choices[0].message["content"] == reply.choices[0].message.content
        assert call.request["messages"][0]["content"] == f"task {episode.task_id[1:]}"


def test_the_callers_client_is_left_as_it_was(server: EmbeddedServer, read_from: list[str]) -> None:
    mine = openai.OpenAI(base_url=server.base_url, api_key="unused", max_retries=0)
    chat = mine.chat  # the SDK caches it, bound to `mine`: the recording copy builds its own
    rec = Recorder(token_mode="off")
    client = rec.wrap(mine)
    with rec.episode("t") as episode:
        client.chat.completions.create(model="tiny", messages=MESSAGES, max_tokens=3)
        mine.chat.completions.create(model="tiny", messages=MESSAGES, max_tokens=3)  # not recorded
    assert read_from == ["tap"] and len(episode.calls) == 1
    assert "_process_response_data" not in vars(mine) and mine.chat is chat
    assert "_process_response_data" in vars(client)
    with_options = client.with_options(timeout=30)
    assert "_process_response_data" in vars(with_options)


def test_a_reply_strict_mode_refuses_fails_the_call_once(read_from: list[str]) -> None:
    """Its usage counts more prompt tokens than its ids: strict raises from `create`, one trace."""
    body = {
        "id": "c1", "object": "chat.completion", "created": 0, "model": "m", "prompt_token_ids": [1, 2, 3],
        "choices": [{"index": 0, "message": {"role": "assistant", "content": "x"}, "finish_reason": "stop",
                     "token_ids": [5]}],
        "usage": {"prompt_tokens": 4, "completion_tokens": 1, "total_tokens": 5},
    }  # fmt: skip
    transport = httpx2.MockTransport(lambda request: httpx2.Response(200, content=json.dumps(body).encode(),
                                                                     headers={"content-type": "application/json"}))
    client = openai.OpenAI(base_url="http://tap.test/v1", api_key="unused", max_retries=0,
                           http_client=httpx2.Client(transport=transport))  # fmt: skip
    rec = Recorder(strict=True)
    wrapped = rec.wrap(client)
    with rec.episode("t") as episode, pytest.raises(TokenRecordError, match="usage says 4 prompt tokens"):
        wrapped.chat.completions.create(model="m", messages=MESSAGES)
    assert read_from == ["tap"]
    assert episode.calls == [] and len(episode.metadata["failed_calls"]) == 1
    assert "usage says 4 prompt tokens" in episode.metadata["failed_calls"][0]["error"]


def test_a_copy_made_with_options_reads_as_parsed(server: EmbeddedServer, read_from: list[str]) -> None:
    rec = Recorder(request_token_ids=True, token_mode="off")
    client = rec.wrap(openai.OpenAI(base_url=server.base_url, api_key="unused", max_retries=0))
    with rec.episode("t") as episode:
        client.with_options(timeout=30).chat.completions.create(model="tiny", messages=MESSAGES, max_tokens=3)
    assert read_from == ["tap"] and episode.calls[0].exact


def test_raw_views_are_read_from_what_the_agent_reads(server: EmbeddedServer, read_from: list[str]) -> None:
    """A raw view is parsed when the agent asks, after the call has returned: the tap stays
    out, and the call is recorded from the SDK's object, exact, as before."""
    rec = Recorder(request_token_ids=True, token_mode="off")
    client = rec.wrap(openai.OpenAI(base_url=server.base_url, api_key="unused", max_retries=0))
    with rec.episode("t") as episode:
        raw = client.chat.completions.with_raw_response.create(model="tiny", messages=MESSAGES, max_tokens=5).parse()
    assert read_from == ["ChatCompletion"]
    (viewed,) = episode.calls
    assert viewed.choices[0].message["content"] == raw.choices[0].message.content and viewed.exact


@pytest.fixture
def chunks_read(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """How each streamed chunk was folded into its call: "json" (as the SDK parsed it) or "object"."""
    seen: list[str] = []
    read, add = rollout.stream_tap.ChatChunks.read, rollout.stream_tap.StreamAccumulator.add

    def spy_read(self: Any, data: dict[str, Any]) -> None:
        seen.append("json")
        read(self, data)

    def spy_add(self: Any, chunk: Any, **kw: Any) -> None:
        if type(chunk) is not dict:
            seen.append("object")
        add(self, chunk, **kw)

    monkeypatch.setattr(rollout.stream_tap.ChatChunks, "read", spy_read)
    monkeypatch.setattr(rollout.stream_tap.StreamAccumulator, "add", spy_add)
    return seen


def streamed_calls(base_url: str, client_type: type, *, tap: bool, is_async: bool,
                   **ask: Any) -> tuple[list[CallRecord], list[list[Any]]]:  # fmt: skip
    """Two streamed calls, read to the end: their records and the chunks the agent got."""
    rec = Recorder(request_token_ids=True, request_logprobs=True, token_mode="off")
    client = rec.wrap(client_type(base_url=base_url, api_key="unused", max_retries=0))
    if not tap:
        client = untapped(client)
    kw = {"model": "tiny", "messages": MESSAGES, "max_tokens": 12, "seed": 7, "n": 2, "logprobs": True,
          "top_logprobs": 2, "stream": True, "stream_options": {"include_usage": True}, **ask}  # fmt: skip
    got: list[list[Any]] = []

    async def run_async() -> None:
        async with rec.episode("t"):
            for _ in range(2):
                got.append([c async for c in await client.chat.completions.create(**kw)])

    if is_async:
        asyncio.run(run_async())
    else:
        with rec.episode("t"):
            for _ in range(2):
                got.append(list(client.chat.completions.create(**kw)))
    (episode,) = rec.episodes()
    return episode.calls, got


@pytest.mark.parametrize("is_async", [False, True])
@pytest.mark.parametrize("tools", [False, True])
def test_a_streamed_record_read_as_parsed_equals_one_read_from_the_chunk_objects(
    chunks_read: list[str], is_async: bool, tools: bool
) -> None:
    """Every chunk of a recorded stream is folded from its JSON, and the record equals the one
    folded from the chunk objects: ids, logprobs, versions, text and tool calls."""
    client_type = openai.AsyncOpenAI if is_async else openai.OpenAI
    ask: dict[str, Any] = {"tools": TOOLS} if tools else {}
    with EmbeddedServer(policy=forced_tool_policy() if tools else None, seed=0) as srv:
        tapped, got = streamed_calls(srv.base_url, client_type, tap=True, is_async=is_async, **ask)
        chunks = sum(len(g) for g in got)
        assert chunks_read == ["json"] * chunks and chunks > 8
        chunks_read.clear()
        plain, _ = streamed_calls(srv.base_url, client_type, tap=False, is_async=is_async, **ask)
        assert chunks_read and set(chunks_read) == {"object"}
    assert len(tapped) == len(plain) == 2 and all(c.exact for c in tapped)
    for a, b in zip(tapped, plain, strict=True):
        same_record(a, b)
    if tools:
        assert all(c.finish_reason == "tool_calls" and c.message["tool_calls"] for c in tapped[0].choices)


@pytest.mark.parametrize("tap", [True, False])
def test_what_the_agent_does_to_its_chunks_leaves_the_record_as_it_was(chunks_read: list[str], tap: bool) -> None:
    """The agent holds each chunk while the stream goes on, and the call is recorded at its end:
    the record keeps its own copy, whether folded from the JSON or from the chunk objects."""
    rec = Recorder(request_token_ids=True, request_logprobs=True, token_mode="off")
    with EmbeddedServer(seed=0) as srv:
        client = rec.wrap(openai.OpenAI(base_url=srv.base_url, api_key="unused", max_retries=0))
        if not tap:
            client = untapped(client)
        with rec.episode("t") as episode:
            stream = client.chat.completions.create(model="tiny", messages=MESSAGES, max_tokens=6, seed=3,
                                                    logprobs=True, stream=True)  # fmt: skip
            got = []
            for chunk in stream:
                got.append(chunk.to_dict())
                for choice in chunk.choices:
                    choice.token_ids[:] = [0] * len(choice.token_ids)  # type: ignore[attr-defined]
                    if choice.logprobs and choice.logprobs.content:
                        choice.logprobs.content[0].logprob = 1.0
                    choice.delta.content = "edited"
    (call,) = episode.calls
    sent = [c for g in got for c in g["choices"]]
    assert call.choices[0].ids.tolist() == [t for c in sent for t in c["token_ids"]]
    assert call.choices[0].logprobs.tolist() == pytest.approx([e["logprob"] for c in sent if c["logprobs"]
                                                               for e in c["logprobs"]["content"]])  # fmt: skip
    assert call.choices[0].message["content"] == "".join(c["delta"].get("content") or "" for c in sent)
    assert "edited" not in call.choices[0].message["content"]
    assert set(chunks_read) == ({"json"} if tap else {"object"})


def test_what_the_agent_does_to_its_reply_leaves_the_record_as_it_was(server: EmbeddedServer,
                                                                      read_from: list[str]) -> None:  # fmt: skip
    """The SDK builds the agent's reply from the same parsed body: the record holds its own copy."""
    rec = Recorder(request_token_ids=True, request_logprobs=True, token_mode="off")
    client = rec.wrap(openai.OpenAI(base_url=server.base_url, api_key="unused", max_retries=0))
    with rec.episode("t") as episode:
        reply = client.chat.completions.create(model="tiny", messages=MESSAGES, max_tokens=6, seed=3)
    (call,) = episode.calls
    before = (call.prompt_ids.tolist(), call.choices[0].ids.tolist(), dict(call.choices[0].message), dict(call.usage))
    reply.prompt_token_ids.append(1)  # type: ignore[attr-defined]  (the server's extras)
    reply.choices[0].token_ids[0] = 0  # type: ignore[attr-defined]
    reply.choices[0].message.content = "edited"
    reply.usage.completion_tokens = 0  # type: ignore[union-attr]
    assert read_from == ["tap"]
    assert before == (call.prompt_ids.tolist(), call.choices[0].ids.tolist(), call.choices[0].message, call.usage)
    assert call.choices[0].message["content"] != "edited"


def _odd(rep: dict[str, Any], name: str) -> dict[str, Any]:
    """A chat reply as a less tidy server might send it."""
    if name == "abort":  # a finish reason the SDK's types do not name (vLLM sends it)
        return {**rep, "choices": [{**c, "finish_reason": "abort"} for c in rep["choices"]]}
    if name == "created_as_text":  # lax validation would coerce it; the SDK keeps it as sent
        return {**rep, "created": str(rep["created"])}
    if name == "extra_fields":
        return {**rep, "kv_transfer_params": None,
                "choices": [{**c, "stop_reason": None, "message": {**c["message"], "reasoning_content": "r"}}
                            for c in rep["choices"]]}  # fmt: skip
    return rep


@pytest.mark.parametrize("is_async", [False, True])
@pytest.mark.parametrize("shape", ["as_sent", "abort", "created_as_text", "extra_fields"])
def test_the_agent_gets_the_object_the_bare_sdk_builds(proxy: Any, monkeypatch: pytest.MonkeyPatch,  # noqa: F811
                                                        shape: str, is_async: bool) -> None:  # fmt: skip
    """The recording client builds a ChatCompletion with pydantic's validator (`reply_object`): the
    agent's object must be the one the bare SDK builds from the same body, odd bodies included."""
    import rollout.reply_tap

    built: list[str] = []
    fast = rollout.reply_tap.sdk_object
    monkeypatch.setattr(rollout.reply_tap, "sdk_object", lambda *a, **k: built.append("fast") or fast(*a, **k))
    _, url = proxy(lambda path, req, rep: _odd(rep, shape) if path.endswith("/chat/completions") else rep)
    client_type = openai.AsyncOpenAI if is_async else openai.OpenAI
    rec = Recorder(request_token_ids=True, request_logprobs=True, token_mode="off")
    kw = {"model": "tiny", "messages": MESSAGES, "max_tokens": 12, "seed": 7, "n": 2, "logprobs": True,
          "top_logprobs": 2, "extra_body": {"return_token_ids": True}}  # fmt: skip

    async def both_async() -> tuple[Any, Any]:
        bare = client_type(base_url=url, api_key="unused", max_retries=0)
        wrapped = rec.wrap(client_type(base_url=url, api_key="unused", max_retries=0))
        async with rec.episode("t"):
            return await bare.chat.completions.create(**kw), await wrapped.chat.completions.create(**kw)

    def both() -> tuple[Any, Any]:
        bare = client_type(base_url=url, api_key="unused", max_retries=0)
        wrapped = rec.wrap(client_type(base_url=url, api_key="unused", max_retries=0))
        with rec.episode("t"):
            return bare.chat.completions.create(**kw), wrapped.chat.completions.create(**kw)

    bare, ours = asyncio.run(both_async()) if is_async else both()
    assert built == ["fast"]
    assert type(ours) is type(bare) and type(ours.created) is type(bare.created)
    strip = ("id", "created")
    mine, theirs = ours.to_dict(warnings=False), bare.to_dict(warnings=False)
    assert {k: v for k, v in mine.items() if k not in strip} == {k: v for k, v in theirs.items() if k not in strip}
    for a, b in zip(ours.choices, bare.choices, strict=True):
        assert a.finish_reason == b.finish_reason and type(a.message) is type(b.message)
        assert a.logprobs.to_json() == b.logprobs.to_json()
        assert getattr(a.message, "reasoning_content", None) == getattr(b.message, "reasoning_content", None)
    (ep,) = rec.episodes()
    assert ep.calls[0].exact


def _odd_event(event: dict[str, Any], name: str) -> dict[str, Any]:
    """A stream event as a less tidy server might send it (the last choice's finish reason, say)."""
    if name == "abort":
        return {**event, "choices": [{**c, "finish_reason": "abort"} if c.get("finish_reason") else c
                                     for c in event["choices"]]}  # fmt: skip
    if name == "created_as_text":
        return {**event, "created": str(event["created"])}
    if name == "extra_fields":
        return {**event, "kv_transfer_params": None,
                "choices": [{**c, "stop_reason": None, "delta": {**c["delta"], "reasoning_content": "r"}}
                            for c in event["choices"]]}  # fmt: skip
    return event


@pytest.mark.parametrize("is_async", [False, True])
@pytest.mark.parametrize("shape", ["as_sent", "abort", "created_as_text", "extra_fields"])
def test_the_agent_gets_the_chunks_the_bare_sdk_builds(proxy: Any, monkeypatch: pytest.MonkeyPatch,  # noqa: F811
                                                        shape: str, is_async: bool) -> None:  # fmt: skip
    """A recorded stream's chunks are built by pydantic's validator: each must be the chunk the
    bare SDK builds from the same event, odd events included, in the same order."""
    import rollout.reply_tap

    built: list[str] = []
    fast = rollout.reply_tap.sdk_object
    monkeypatch.setattr(rollout.reply_tap, "sdk_object", lambda *a, **k: built.append("fast") or fast(*a, **k))
    _, url = proxy(lambda path, req, rep: rep, events=lambda path, req, event: _odd_event(event, shape))
    client_type = openai.AsyncOpenAI if is_async else openai.OpenAI
    rec = Recorder(request_token_ids=True, request_logprobs=True, token_mode="off")
    kw = {"model": "tiny", "messages": MESSAGES, "max_tokens": 12, "seed": 7, "n": 2, "logprobs": True,
          "top_logprobs": 2, "stream": True, "stream_options": {"include_usage": True},
          "extra_body": {"return_token_ids": True}}  # fmt: skip

    async def both_async() -> tuple[list[Any], list[Any]]:
        bare = client_type(base_url=url, api_key="unused", max_retries=0)
        wrapped = rec.wrap(client_type(base_url=url, api_key="unused", max_retries=0))
        async with rec.episode("t"):
            theirs = [c async for c in await bare.chat.completions.create(**kw)]
            return theirs, [c async for c in await wrapped.chat.completions.create(**kw)]

    def both() -> tuple[list[Any], list[Any]]:
        bare = client_type(base_url=url, api_key="unused", max_retries=0)
        wrapped = rec.wrap(client_type(base_url=url, api_key="unused", max_retries=0))
        with rec.episode("t"):
            return list(bare.chat.completions.create(**kw)), list(wrapped.chat.completions.create(**kw))

    theirs, ours = asyncio.run(both_async()) if is_async else both()
    assert len(ours) == len(theirs) > 8 and built == ["fast"] * len(ours)
    strip = ("id", "created")
    for a, b in zip(ours, theirs, strict=True):
        assert type(a) is type(b) and type(a.created) is type(b.created)
        mine, bare_ = a.to_dict(warnings=False), b.to_dict(warnings=False)
        assert {k: v for k, v in mine.items() if k not in strip} == {k: v for k, v in bare_.items() if k not in strip}
        assert a.to_json(warnings=False).count("\n") == b.to_json(warnings=False).count("\n")
        for x, y in zip(a.choices, b.choices, strict=True):
            assert x.finish_reason == y.finish_reason and type(x.delta) is type(y.delta)
            assert getattr(x.delta, "reasoning_content", None) == getattr(y.delta, "reasoning_content", None)
            assert (x.logprobs is None) == (y.logprobs is None)
            assert x.logprobs is None or x.logprobs.to_json() == y.logprobs.to_json()
    (ep,) = rec.episodes()
    (call,) = ep.calls
    assert call.exact and [c.finish_reason for c in call.choices] == [c.finish_reason for t in theirs
                                                                       for c in t.choices if c.finish_reason]


def _malformed(reply: dict[str, Any], name: str) -> dict[str, Any]:
    """A reply (or a stream's chunk) of a shape no record can be read from; the SDK builds it."""
    choices = reply.get("choices") or []
    if name == "index_as_text":
        return {**reply, "choices": [{**c, "index": "first"} for c in choices]}
    if name == "ids_as_a_number":
        return {**reply, "choices": [{**c, "token_ids": 7} for c in choices]}
    return reply


@pytest.mark.parametrize("is_async", [False, True])
@pytest.mark.parametrize("tap", [True, False])
@pytest.mark.parametrize("stream", [False, True])
@pytest.mark.parametrize("shape", ["index_as_text", "ids_as_a_number"])
def test_a_reply_no_record_can_read_fails_the_call_with_a_typed_error(proxy: Any,  # noqa: F811
                                                                      shape: str, stream: bool, tap: bool,
                                                                      is_async: bool) -> None:  # fmt: skip
    """Not a bare ValueError or TypeError from inside the recorder: `TokenRecordError` naming what
    could not be read, one trace in the episode, and the next episode goes on."""
    state = {"on": True}

    def bad(path: str, req: Any, rep: Any) -> Any:
        return _malformed(rep, shape) if state["on"] and path.endswith("/chat/completions") else rep

    def bad_third_chunk(path: str, req: Any, event: Any) -> Any:
        state["chunk"] = state.get("chunk", 0) + 1
        return _malformed(event, shape) if state["on"] and state["chunk"] == 3 else event

    _, url = proxy(bad, events=bad_third_chunk)
    client_type = openai.AsyncOpenAI if is_async else openai.OpenAI
    rec = Recorder(request_token_ids=True, token_mode="off")
    kw = {"model": "tiny", "messages": MESSAGES, "max_tokens": 6, "seed": 1, "stream": stream}
    got: list[Any] = []

    def recording_client() -> Any:  # one per run: an async client's pool belongs to one event loop
        client = rec.wrap(client_type(base_url=url, api_key="unused", max_retries=0))
        return client if tap else untapped(client)

    async def one_async(task: str) -> None:
        client = recording_client()
        async with rec.episode(task):
            reply = await client.chat.completions.create(**kw)
            if stream:
                async for chunk in reply:
                    got.append(chunk)

    def one(task: str) -> None:
        client = recording_client()
        with rec.episode(task):
            reply = client.chat.completions.create(**kw)
            if stream:
                got.extend(reply)

    def run(task: str) -> None:
        asyncio.run(one_async(task)) if is_async else one(task)

    what = "stream chunk 3" if stream else "the reply"
    with pytest.raises(TokenRecordError, match=f"{what} could not be read"):
        run("bad")
    assert len(got) == (2 if stream else 0)  # the chunks before the bad one reached the agent
    state.update(on=False, chunk=0)
    run("good")
    bad_episode, good = rec.episodes()
    assert bad_episode.calls == [] and len(bad_episode.metadata["failed_calls"]) == 1
    assert f"{what} could not be read" in bad_episode.metadata["failed_calls"][0]["error"]
    assert len(good.calls) == 1 and good.calls[0].exact and "failed_calls" not in good.metadata


@pytest.mark.parametrize("tap", [True, False])
def test_a_stream_goes_on_after_a_chunk_no_record_can_read(proxy: Any, tap: bool) -> None:  # noqa: F811
    """The error is raised once the SDK has handed the chunk over, not inside its parse (which
    would end the SDK's stream): an agent that catches it reads the rest of the reply."""
    count = {"n": 0}

    def bad_third_chunk(path: str, req: Any, event: Any) -> Any:
        count["n"] += 1
        return _malformed(event, "index_as_text") if count["n"] == 3 else event

    _, url = proxy(lambda path, req, rep: rep, events=bad_third_chunk)
    kw: dict[str, Any] = {"model": "tiny", "messages": MESSAGES, "max_tokens": 8, "seed": 1, "stream": True}
    bare = len(list(openai.OpenAI(base_url=url, api_key="unused", max_retries=0).chat.completions.create(**kw)))
    count["n"] = 0
    rec = Recorder(request_token_ids=True, token_mode="off")
    client = rec.wrap(openai.OpenAI(base_url=url, api_key="unused", max_retries=0))
    client = client if tap else untapped(client)
    got, errors = 0, []
    with rec.episode("t") as episode:
        stream = client.chat.completions.create(**kw)
        while True:
            try:
                next(stream)
                got += 1
            except StopIteration:
                break
            except TokenRecordError as exc:
                errors.append(exc)
    assert bare > 4 and got == bare - 1 and len(errors) == 1  # every chunk but the one that failed
    assert "stream chunk 3 could not be read" in str(errors[0]) and errors[0].__cause__ is not errors[0]
    assert episode.calls == [] and len(episode.metadata["failed_calls"]) == 1


@pytest.mark.parametrize("tap", [True, False])
@pytest.mark.parametrize("left_open", [False, True])
def test_a_stream_whose_text_is_not_text_fails_its_call_and_keeps_the_episode(
    proxy: Any, tap: bool, left_open: bool  # noqa: F811
) -> None:
    """A delta whose content is a number folds, but no reply text can be made of it: the call
    fails with `TokenRecordError` when it is recorded, at its last chunk or, left open, when the
    episode ends; the episode and its other calls are kept."""
    state = {"on": True}

    def number_content(path: str, req: Any, event: Any) -> Any:
        if not state["on"]:
            return event
        return {**event, "choices": [{**c, "delta": {**c["delta"], "content": 7}} if c["delta"].get("content")
                                     else c for c in event["choices"]]}  # fmt: skip

    _, url = proxy(lambda path, req, rep: rep, events=number_content)
    rec = Recorder(request_token_ids=True, token_mode="off")
    client = rec.wrap(openai.OpenAI(base_url=url, api_key="unused", max_retries=0))
    client = client if tap else untapped(client)
    kw: dict[str, Any] = {"model": "tiny", "messages": MESSAGES, "max_tokens": 6, "seed": 1, "stream": True}
    with rec.episode("t") as episode:
        stream = client.chat.completions.create(**kw)
        if left_open:  # some of its text read, then left
            for _ in range(3):
                next(stream)
        else:
            with pytest.raises(TokenRecordError, match="the stream could not be read"):
                list(stream)
        state["on"] = False
        client.chat.completions.create(**{**kw, "stream": False})
    (kept,) = rec.episodes()
    assert kept is episode and len(episode.calls) == 1 and episode.calls[0].exact
    (failure,) = episode.metadata["failed_calls"]
    assert "the stream could not be read: TypeError" in failure["error"]
