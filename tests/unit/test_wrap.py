"""The recording client wrapper: type kept, real SDK over every wire dialect, exact tokens.

Every test drives the REAL openai SDK through `tests.fakes.WireServer` (an
in-process httpx2 transport), an ArealOpenAI-shaped fake, or small duck-typed
clients, and checks the recorded ids / logprobs / versions against what the
server actually produced.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Callable
from types import SimpleNamespace
from typing import Any

import numpy as np
import pytest
from openai import AsyncOpenAI, OpenAI
from pydantic import BaseModel

from compat import OpenAICompatibleModel
from rollout import Recorder, TiktokenTokenizer, TokenRecordError, TokenSource
from rollout.call_record import NO_VERSION
from tests.fakes import (
    API_KEY,
    ENC,
    FakeArealOpenAI,
    WireServer,
    logprob_for,
    openai_clients,
    render_prompt,
)

M = [{"role": "system", "content": "be brief"}, {"role": "user", "content": "what is 2+2?"}]


def expected_ids(messages: list[dict[str, Any]], index: int = 0) -> list[int]:
    """What the default responder makes the server sample for choice `index`."""
    text = "ok " + str(len(messages))
    return ENC.encode(f"{text} #{index}" if index else text)


def expected_logprobs(ids: list[int]) -> np.ndarray:
    return np.array([logprob_for(t, j) for j, t in enumerate(ids)], dtype=np.float32)


def json_responder(messages: list[dict[str, Any]], body: dict[str, Any]) -> str:
    if body.get("response_format"):
        return json.dumps({"answer": "four", "n": 4})
    return "ok " + str(len(messages))


class Answer(BaseModel):
    answer: str
    n: int


def call_sdk(client: Any, mode: str, **kwargs: Any) -> Any:
    """One create() on a sync or async wrapped client; a stream is consumed fully."""
    if mode == "sync":
        out = client.chat.completions.create(**kwargs)
        if kwargs.get("stream"):
            return [chunk for chunk in out]
        return out

    async def go() -> Any:
        out = await client.chat.completions.create(**kwargs)
        if kwargs.get("stream"):
            return [chunk async for chunk in out]
        return out

    return go()


def run_in_episode(recorder: Recorder, client: Any, mode: str, **kwargs: Any) -> Any:
    """Make one call inside a fresh episode and return the finished episode."""
    if mode == "sync":
        with recorder.episode("t") as ep:
            call_sdk(client, mode, **kwargs)
        return ep

    async def go() -> Any:
        async with recorder.episode("t") as ep:
            await call_sdk(client, mode, **kwargs)
        return ep

    return asyncio.run(go())


def wrapped(server: WireServer, mode: str, recorder: Recorder) -> Any:
    sync, async_ = openai_clients(server)
    return recorder.wrap(sync if mode == "sync" else async_)


# ---------------------------------------------------------------- type preservation


class DuckCompletions:
    def __init__(self) -> None:
        self.calls: list[dict[str, Any]] = []

    def create(self, **kwargs: Any) -> dict[str, Any]:
        self.calls.append(kwargs)
        return {
            "id": f"duck-{len(self.calls)}",
            "choices": [{"index": 0, "message": {"role": "assistant", "content": "quack"},
                         "finish_reason": "stop", "token_ids": [7, 8, 9]}],
            "prompt_token_ids": [1, 2, 3, 4],
            "usage": {"prompt_tokens": 4, "completion_tokens": 3},
        }


class DuckClient:
    """Not an openai client: only `.chat.completions.create`, plus an unrelated attribute."""

    def __init__(self) -> None:
        self.chat = SimpleNamespace(completions=DuckCompletions())
        self.base_url = "http://duck.test/v1"

    def ping(self) -> str:
        return "pong"


@pytest.mark.parametrize("kind", ["sync", "async", "areal", "duck"])
def test_wrap_keeps_type_and_passes_attributes_through(kind: str) -> None:
    server = WireServer()
    sync, async_ = openai_clients(server)
    client: Any = {"sync": sync, "async": async_, "areal": FakeArealOpenAI(), "duck": DuckClient()}[kind]
    w = Recorder().wrap(client)
    assert isinstance(w, type(client))
    assert w is not client
    assert str(w.base_url) == str(client.base_url)
    if kind in ("sync", "async"):
        assert isinstance(w, OpenAI if kind == "sync" else AsyncOpenAI)
        assert w.api_key == client.api_key
        assert w.chat.completions.with_raw_response is not None  # other SDK attributes pass through
    if kind == "areal":
        assert isinstance(w, AsyncOpenAI)
        assert w.get_interaction("nope") is None
        assert w.cache is client.cache  # a shallow copy: the original's interaction cache
    if kind == "duck":
        assert w.ping() == "pong"


def test_wrap_builds_proxies_on_first_use_only() -> None:
    """Reaching `client.beta` / `client.responses` imports large SDK modules; wrapping
    must not, so an agent that only uses chat never pays for them (run in a fresh
    interpreter: other tests may have imported them here)."""
    import os
    import subprocess
    import sys
    from pathlib import Path

    root = str(Path(__file__).resolve().parents[2])  # this checkout's rollout, not an installed one
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([root, os.environ.get("PYTHONPATH", "")])}
    code = (
        "import sys\n"
        "from openai import OpenAI\n"
        "from rollout import Recorder\n"
        "rec = Recorder()\n"
        "w = rec.wrap(OpenAI(api_key='k', base_url='http://127.0.0.1:9/v1'))\n"
        "w.chat.completions.create\n"
        "loaded = lambda p: any(m.startswith(p) for m in sys.modules)\n"
        "print(loaded('openai.resources.beta'), loaded('openai.resources.responses'))\n"
        "w.beta.chat.completions.parse\n"
        "print(loaded('openai.resources.beta'), type(w.beta.chat.completions).__name__)\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, env=env).stdout
    assert out.split("\n")[:2] == ["False False", "True _Completions"]


def test_wrapping_twice_raises_and_original_is_untouched() -> None:
    server = WireServer(dialect="vllm")
    sync, _ = openai_clients(server)
    rec = Recorder()
    w = rec.wrap(sync)
    with pytest.raises(ValueError, match="already wrapped"):
        rec.wrap(w)
    with pytest.raises(ValueError, match="already wrapped"):
        Recorder().wrap(w)
    with rec.episode("t") as ep:
        sync.chat.completions.create(model="m", messages=M)  # the unwrapped original
    assert ep.calls == [] and rec.unscoped.calls == []
    assert type(sync) is OpenAI


def test_wrap_rejects_objects_without_an_endpoint() -> None:
    with pytest.raises(TypeError):
        Recorder().wrap(object())


def test_duck_client_is_recorded() -> None:
    rec = Recorder()
    w = rec.wrap(DuckClient())
    with rec.episode("t") as ep:
        reply = w.chat.completions.create(model="m", messages=M)
    assert reply["id"] == "duck-1"
    (call,) = ep.calls
    assert call.prompt_ids.tolist() == [1, 2, 3, 4]
    assert call.choices[0].ids.tolist() == [7, 8, 9]
    assert call.choices[0].source == TokenSource.VLLM
    assert call.exact


def test_with_options_copy_still_records() -> None:
    server = WireServer(dialect="vllm")
    sync, _ = openai_clients(server)
    rec = Recorder()
    w = rec.wrap(sync).with_options(timeout=5.0)
    assert isinstance(w, OpenAI)
    with rec.episode("t") as ep:
        w.chat.completions.create(model="m", messages=M)
    # The call went over the wire, so it must be in the episode (or at least unscoped).
    assert len(server.requests) == 1
    assert len(ep.calls) == 1


# ---------------------------------------------------------------- the SDK over every dialect


@pytest.mark.parametrize("n", [1, 2])
@pytest.mark.parametrize("stream", [False, True], ids=["plain", "stream"])
@pytest.mark.parametrize("mode", ["sync", "async"])
@pytest.mark.parametrize("dialect", ["vllm", "sglang", "token_id"])
def test_sdk_dialects_record_exact_tokens(dialect: str, mode: str, stream: bool, n: int) -> None:
    server = WireServer(dialect=dialect, weight_version=4)
    rec = Recorder(request_token_ids=True, request_logprobs=True)
    client = wrapped(server, mode, rec)
    tools = [{"type": "function", "function": {"name": "add", "parameters": {"type": "object"}}}]
    ep = run_in_episode(rec, client, mode, model="m", messages=M, n=n, stream=stream, tools=tools,
                        temperature=0.7, top_p=0.95, max_tokens=64, seed=11)
    (call,) = ep.calls
    assert call.endpoint == "chat.completions"
    assert call.id.startswith("chatcmpl-")
    assert call.latency_s > 0 and call.started_at > 0
    # Every choice recorded, in index order, with the server's ids and float32-exact logprobs.
    assert [c.index for c in call.choices] == list(range(n))
    for i, choice in enumerate(call.choices):
        ids = expected_ids(M, i)
        assert choice.ids.dtype == np.int32
        assert choice.ids.tolist() == ids
        assert choice.logprobs is not None and choice.logprobs.dtype == np.float32
        assert np.array_equal(choice.logprobs, expected_logprobs(ids))
        assert choice.versions.to_array().tolist() == [4] * len(ids)
        assert choice.finish_reason == "stop"
        assert choice.message["role"] == "assistant"
        assert choice.message["content"] == ENC.decode(ids)
        assert choice.exact
        want = {"vllm": TokenSource.VLLM, "token_id": TokenSource.LOGPROB_TOKENS}.get(dialect)
        if dialect == "sglang":
            # SGLang sends per-choice prompt ids only when not streaming (docs/wire.md).
            want = TokenSource.VLLM if stream else TokenSource.SGLANG
        assert choice.source == want
    # Prompt ids: whenever the server sent them, they are the server's rendering.
    has_prompt = dialect == "vllm" or (dialect == "sglang" and not stream)
    if has_prompt:
        assert call.prompt_ids.tolist() == render_prompt(M)
        assert call.prompt_source == (TokenSource.VLLM if dialect == "vllm" else TokenSource.SGLANG)
        assert call.exact
        assert call.notes == []
    else:
        assert call.prompt_ids.tolist() == []
        assert call.prompt_source == TokenSource.NONE
        assert not call.exact
        assert any("no prompt token ids" in note for note in call.notes)
    # What was asked is stored as sent.
    assert call.request["messages"] == M
    assert call.request["tools"] == tools
    assert call.request["temperature"] == 0.7 and call.request["top_p"] == 0.95
    assert call.request["max_tokens"] == 64 and call.request["seed"] == 11
    assert call.request["n"] == n
    if not stream:
        assert call.usage is not None and call.usage["prompt_tokens"] == len(render_prompt(M))
        assert call.usage["completion_tokens"] == sum(len(expected_ids(M, i)) for i in range(n))


@pytest.mark.parametrize("mode", ["sync", "async"])
@pytest.mark.parametrize(
    ("server_version", "recorder_version", "want"),
    [(7, None, 7), (None, None, NO_VERSION), (None, 3, 3), (7, 3, 7)],
)
def test_versions(mode: str, server_version: int | None, recorder_version: int | None, want: int) -> None:
    for stream in (False, True):
        server = WireServer(dialect="vllm", weight_version=server_version)
        rec = Recorder(request_token_ids=True, policy_version=recorder_version)
        client = wrapped(server, mode, rec)
        ep = run_in_episode(rec, client, mode, model="m", messages=M, stream=stream)
        choice = ep.calls[0].choices[0]
        assert choice.versions.to_array().tolist() == [want] * len(expected_ids(M))


@pytest.mark.parametrize("mode", ["sync", "async"])
def test_requested_fields_are_added_to_the_wire_request(mode: str) -> None:
    server = WireServer(dialect="vllm")
    rec = Recorder(request_token_ids=True, request_logprobs=True)
    client = wrapped(server, mode, rec)
    caller_extra = {"top_k": 5}
    run_in_episode(rec, client, mode, model="m", messages=M, extra_body=caller_extra)
    body = server.requests[-1]
    assert body["return_token_ids"] is True
    assert body["logprobs"] is True
    assert body["top_k"] == 5
    assert caller_extra == {"top_k": 5}  # the caller's dict is not mutated
    # An explicit logprobs=False from the caller wins.
    ep = run_in_episode(rec, client, mode, model="m", messages=M, logprobs=False)
    assert server.requests[-1]["logprobs"] is False
    assert server.requests[-1]["return_token_ids"] is True
    assert ep.calls[0].choices[0].logprobs is None
    assert ep.calls[0].choices[0].ids.tolist() == expected_ids(M)


@pytest.mark.parametrize("mode", ["sync", "async"])
def test_sdk_not_given_sentinels_do_not_stop_requested_logprobs(mode: str) -> None:
    """The SDK's own helpers (e.g. `.stream()`) pass `logprobs=omit` explicitly."""
    import openai

    server = WireServer(dialect="vllm")
    rec = Recorder(request_token_ids=True, request_logprobs=True)
    client = wrapped(server, mode, rec)
    for unset in (openai.NOT_GIVEN, openai.omit):
        ep = run_in_episode(rec, client, mode, model="m", messages=M, logprobs=unset)
        assert server.requests[-1]["logprobs"] is True
        assert np.array_equal(ep.calls[0].choices[0].logprobs, expected_logprobs(expected_ids(M)))


@pytest.mark.parametrize("mode", ["sync", "async"])
def test_default_recorder_does_not_change_the_request(mode: str) -> None:
    server = WireServer(dialect="vllm")
    rec = Recorder()
    client = wrapped(server, mode, rec)
    ep = run_in_episode(rec, client, mode, model="m", messages=M)
    assert server.requests[-1] == {"model": "m", "messages": M}
    # No ids asked for, none sent: recorded, but flagged.
    (call,) = ep.calls
    assert not call.exact and call.notes


# ---------------------------------------------------------------- no ids on the wire


@pytest.mark.parametrize("stream", [False, True])
def test_plain_dialect_without_tokenizer_notes_it(stream: bool) -> None:
    server = WireServer(dialect="plain")
    rec = Recorder(request_token_ids=True)
    client = wrapped(server, "sync", rec)
    ep = run_in_episode(rec, client, "sync", model="m", messages=M, stream=stream)
    (call,) = ep.calls
    assert not call.exact
    assert call.prompt_source == TokenSource.NONE
    assert call.choices[0].source == TokenSource.NONE
    assert call.choices[0].ids.tolist() == []
    assert call.choices[0].message["content"] == "ok 2"
    assert any("no token ids and no tokenizer" in note for note in call.notes)


@pytest.mark.parametrize("mode", ["sync", "async"])
def test_plain_dialect_with_tokenizer_is_flagged_inexact(mode: str) -> None:
    server = WireServer(dialect="plain")
    rec = Recorder(tokenizer=TiktokenTokenizer("cl100k_base"))
    client = wrapped(server, mode, rec)
    ep = run_in_episode(rec, client, mode, model="m", messages=M)
    (call,) = ep.calls
    assert call.prompt_source == TokenSource.TOKENIZER
    assert call.choices[0].source == TokenSource.TOKENIZER
    assert not call.exact and not call.choices[0].exact and not ep.exact
    assert call.choices[0].ids.tolist() == ENC.encode("ok 2")
    assert len(call.prompt_ids) > 0
    assert any("inexact" in note for note in call.notes)


# ---------------------------------------------------------------- ArealOpenAI


@pytest.mark.parametrize("stream", [False, True])
def test_areal_client_ids_come_from_get_interaction(stream: bool) -> None:
    fake = FakeArealOpenAI(version=5)
    rec = Recorder(policy_version=99)  # the interaction's per-token versions win
    client = rec.wrap(fake)

    async def go() -> Any:
        async with rec.episode("t") as ep:
            out = await client.chat.completions.create(model="ignored", messages=M, stream=stream)
            if stream:
                chunks = [c async for c in out]
                assert "".join(c.choices[0].delta.content or "" for c in chunks) == "ok 2"
        return ep

    ep = asyncio.run(go())
    (call,) = ep.calls
    interaction = fake.get_interaction(call.id)
    assert interaction is not None
    mr = interaction.model_response
    assert call.prompt_ids.tolist() == mr.input_tokens == render_prompt(M)
    choice = call.choices[0]
    assert choice.ids.tolist() == mr.output_tokens == ENC.encode("ok 2")
    assert np.array_equal(choice.logprobs, np.array(mr.output_logprobs, np.float32))
    assert choice.versions.to_array().tolist() == [5] * len(mr.output_tokens)
    assert call.prompt_source == TokenSource.AREAL and choice.source == TokenSource.AREAL
    assert call.exact
    assert fake.bogus_requests == []


# ---------------------------------------------------------------- parse / responses


@pytest.mark.parametrize("path", ["chat.completions.parse", "beta.chat.completions.parse"])
@pytest.mark.parametrize("mode", ["sync", "async"])
def test_parse_is_recorded_with_ids(path: str, mode: str) -> None:
    server = WireServer(dialect="vllm", responder=json_responder)
    rec = Recorder(request_token_ids=True, request_logprobs=True)
    client = wrapped(server, mode, rec)
    fn: Any = client
    for part in path.split("."):
        fn = getattr(fn, part)

    async def ago() -> Any:
        async with rec.episode("t") as ep:
            reply = await fn(model="m", messages=M, response_format=Answer)
        return ep, reply

    if mode == "sync":
        with rec.episode("t") as ep:
            reply = fn(model="m", messages=M, response_format=Answer)
    else:
        ep, reply = asyncio.run(ago())
    assert reply.choices[0].message.parsed == Answer(answer="four", n=4)
    (call,) = ep.calls
    assert call.endpoint == path
    ids = ENC.encode(json.dumps({"answer": "four", "n": 4}))
    assert call.choices[0].ids.tolist() == ids
    assert np.array_equal(call.choices[0].logprobs, expected_logprobs(ids))
    assert call.prompt_ids.tolist() == render_prompt(M)
    assert call.exact
    assert call.request["response_format"] == {"type": "pydantic", "name": "Answer"}
    assert "parsed" not in call.choices[0].message
    assert server.requests[-1]["response_format"]["type"] == "json_schema"


@pytest.mark.parametrize("mode", ["sync", "async"])
def test_sdk_stream_manager_records_all_token_ids(mode: str) -> None:
    server = WireServer(dialect="vllm")
    rec = Recorder(request_token_ids=True, request_logprobs=True)
    client = wrapped(server, mode, rec)
    if mode == "sync":
        with rec.episode("t") as ep, client.chat.completions.stream(model="m", messages=M) as stream:
            for _ in stream:
                pass
    else:

        async def go() -> Any:
            async with rec.episode("t") as ep, client.chat.completions.stream(model="m", messages=M) as s:
                async for _ in s:
                    pass
            return ep

        ep = asyncio.run(go())
    (call,) = ep.calls
    assert call.endpoint == "chat.completions.stream"
    ids = expected_ids(M)
    assert len(ids) > 1
    # The helper streams through the recording create: every chunk's ids, exact.
    assert call.choices[0].ids.tolist() == ids and call.exact
    assert np.array_equal(call.choices[0].logprobs, expected_logprobs(ids))


class DuckResponses:
    """A Responses-API-only client (sync or async) with an optional interaction cache."""

    def __init__(self, *, is_async: bool = False, with_interactions: bool = False) -> None:
        self.responses = self
        self.is_async = is_async
        self.cache: dict[str, Any] = {}
        if with_interactions:
            self.get_interaction = self.cache.get

    def _reply(self, **kwargs: Any) -> Any:
        rid = f"resp_{len(self.cache)}"
        out = [11, 12, 13]
        self.cache[rid] = SimpleNamespace(
            model_response=SimpleNamespace(input_tokens=[1, 2], output_tokens=out,
                                           output_logprobs=[-0.5, -0.25, -0.125],
                                           output_versions=[2, 2, 3]))
        return SimpleNamespace(id=rid, output_text="hello world",
                               usage=SimpleNamespace(input_tokens=2, output_tokens=3))

    def create(self, **kwargs: Any) -> Any:
        if not self.is_async:
            return self._reply(**kwargs)

        async def go() -> Any:
            return self._reply(**kwargs)

        return go()


@pytest.mark.parametrize("is_async", [False, True])
@pytest.mark.parametrize("with_interactions", [False, True])
def test_responses_create_is_recorded(is_async: bool, with_interactions: bool) -> None:
    client = DuckResponses(is_async=is_async, with_interactions=with_interactions)
    rec = Recorder(request_token_ids=True, request_logprobs=True)
    w = rec.wrap(client)
    assert isinstance(w, DuckResponses)
    kwargs = {"model": "m", "input": "say hello", "instructions": "be kind"}
    with rec.episode("t") as ep:
        reply = w.responses.create(**kwargs)
        if is_async:
            reply = asyncio.run(reply)
    assert reply.output_text == "hello world"
    (call,) = ep.calls
    assert call.endpoint == "responses"
    assert call.id == "resp_0"
    assert call.choices[0].message == {"role": "assistant", "content": "hello world"}
    assert call.usage == {"prompt_tokens": 2, "completion_tokens": 3}
    assert call.request == kwargs  # nothing chat-specific was injected
    if with_interactions:
        assert call.prompt_ids.tolist() == [1, 2]
        assert call.choices[0].ids.tolist() == [11, 12, 13]
        assert call.choices[0].logprobs.tolist() == [-0.5, -0.25, -0.125]
        assert call.choices[0].versions.to_array().tolist() == [2, 2, 3]
        assert call.exact and call.choices[0].source == TokenSource.AREAL
    else:
        assert not call.exact and call.notes


# ---------------------------------------------------------------- compat.OpenAICompatibleModel


@pytest.mark.parametrize("sides", ["both", "sync_only", "async_only"])
def test_compat_backend_with_wrapped_clients(sides: str) -> None:
    server = WireServer(dialect="vllm")
    rec = Recorder(request_token_ids=True, request_logprobs=True)
    sync, async_ = openai_clients(server)
    ws, wa = rec.wrap(sync), rec.wrap(async_)
    clients = {"both": (ws, wa), "sync_only": (ws, None), "async_only": (None, wa)}[sides]
    model = OpenAICompatibleModel("m", client=clients[0], async_client=clients[1], max_retries=0)
    streamed = OpenAICompatibleModel("m", {"stream": True}, client=clients[0],
                                     async_client=clients[1], max_retries=0)

    with rec.episode("sync") as ep_sync:
        reply = model.run(M)
        assert reply.choices[0].message.content == "ok 2"
        chunks = list(streamed.run(M))
        assert chunks

    async def go() -> Any:
        async with rec.episode("async") as ep:
            await model.arun(M)
            stream = await streamed.arun(M)
            if hasattr(stream, "__aiter__"):
                assert [c async for c in stream]
            else:
                assert list(stream)
        return ep

    ep_async = asyncio.run(go())
    for ep in (ep_sync, ep_async):
        assert len(ep.calls) == 2
        for call in ep.calls:
            assert call.prompt_ids.tolist() == render_prompt(M)
            assert call.choices[0].ids.tolist() == expected_ids(M)
            assert call.exact
    assert rec.unscoped.calls == []


def test_compat_structured_output_is_recorded() -> None:
    server = WireServer(dialect="vllm", responder=json_responder)
    rec = Recorder(request_token_ids=True)
    sync, _ = openai_clients(server)
    model = OpenAICompatibleModel("m", client=rec.wrap(sync), max_retries=0)
    with rec.episode("t") as ep:
        reply = model.run(M, response_format=Answer)
    assert reply.choices[0].message.parsed == Answer(answer="four", n=4)
    assert len(ep.calls) == 1
    assert ep.calls[0].endpoint.endswith("parse")
    assert ep.calls[0].exact


# ---------------------------------------------------------------- malformed replies


class MismatchServer(WireServer):
    """vLLM reply with one logprob entry fewer than token ids."""

    def completion(self, body: dict[str, Any]) -> dict[str, Any]:
        out = super().completion(body)
        for c in out["choices"]:
            if c["logprobs"]:
                c["logprobs"]["content"] = c["logprobs"]["content"][:-1]
        return out


class NoChoicesServer(WireServer):
    def completion(self, body: dict[str, Any]) -> dict[str, Any]:
        out = super().completion(body)
        out["choices"] = []
        return out


class RetypedIdsServer(WireServer):
    """vLLM reply whose completion ids are sent as another JSON type (`retype` of each id)."""

    def __init__(self, retype: Callable[[int], Any]) -> None:
        super().__init__(dialect="vllm")
        self.retype = retype

    def completion(self, body: dict[str, Any]) -> dict[str, Any]:
        out = super().completion(body)
        for c in out["choices"]:
            c["token_ids"] = [self.retype(t) for t in c["token_ids"]]
        return out


@pytest.mark.parametrize("mode", ["sync", "async"])
@pytest.mark.parametrize("retype", [lambda t: t + 0.5, str, lambda t: True], ids=["fraction", "string", "bool"])
def test_ids_that_are_not_integers_are_refused_not_truncated(mode: str, retype: Callable[[int], Any]) -> None:
    """`int()` would make 7.5 an id of 7 and "7" one of 7: a row the server never sampled."""
    rec = Recorder(request_token_ids=True)
    client = wrapped(RetypedIdsServer(retype), mode, rec)
    with pytest.raises(TokenRecordError, match="token ids must be integers"):
        run_in_episode(rec, client, mode, model="m", messages=M)
    (ep,) = rec.episodes()
    assert ep.calls == [] and "token ids must be integers" in ep.metadata["failed_calls"][0]["error"]


@pytest.mark.parametrize("mode", ["sync", "async"])
def test_ids_sent_as_whole_floats_are_the_same_ids(mode: str) -> None:
    rec = Recorder(request_token_ids=True)
    client = wrapped(RetypedIdsServer(float), mode, rec)
    ep = run_in_episode(rec, client, mode, model="m", messages=M)
    (call,) = ep.calls
    assert call.choices[0].ids.tolist() == expected_ids(M) and call.exact


@pytest.mark.parametrize("mode", ["sync", "async"])
def test_logprob_length_mismatch_is_noted(mode: str) -> None:
    server = MismatchServer(dialect="vllm")
    rec = Recorder(request_token_ids=True, request_logprobs=True)
    client = wrapped(server, mode, rec)
    ep = run_in_episode(rec, client, mode, model="m", messages=M)
    (call,) = ep.calls
    n = len(expected_ids(M))
    assert call.choices[0].logprobs is None
    assert call.choices[0].ids.tolist() == expected_ids(M)  # ids are still the exact ones
    assert f"choice 0: {n - 1} logprobs for {n} token ids" in call.notes


@pytest.mark.parametrize("mode", ["sync", "async"])
def test_logprob_length_mismatch_raises_when_strict(mode: str) -> None:
    server = MismatchServer(dialect="vllm")
    rec = Recorder(request_token_ids=True, request_logprobs=True, strict=True)
    client = wrapped(server, mode, rec)
    with pytest.raises(TokenRecordError, match="logprobs for"):
        run_in_episode(rec, client, mode, model="m", messages=M)


@pytest.mark.parametrize("mode", ["sync", "async"])
def test_reply_without_choices_raises_and_leaves_a_trace(mode: str) -> None:
    server = NoChoicesServer(dialect="vllm")
    rec = Recorder(request_token_ids=True)
    client = wrapped(server, mode, rec)
    with pytest.raises(TokenRecordError, match="no choices"):
        run_in_episode(rec, client, mode, model="m", messages=M)
    (ep,) = rec.episodes()
    assert ep.calls == []
    failures = ep.metadata.get("failed_calls")
    assert failures and "TokenRecordError" in failures[0]["error"]


@pytest.mark.parametrize("stream", [False, True])
@pytest.mark.parametrize("mode", ["sync", "async"])
def test_server_error_propagates_and_is_logged(mode: str, stream: bool) -> None:
    import openai

    server = WireServer(dialect="vllm", fail_statuses=[500])
    rec = Recorder(request_token_ids=True)
    client = wrapped(server, mode, rec)
    with pytest.raises(openai.InternalServerError):
        run_in_episode(rec, client, mode, model="m", messages=M, stream=stream)
    (ep,) = rec.episodes()
    assert ep.calls == []
    (failure,) = ep.metadata["failed_calls"]
    assert failure["endpoint"] == "chat.completions"
    assert "InternalServerError" in failure["error"] and "500" in failure["error"]
    assert ep.status.value == "error"


def test_stream_closed_early_is_recorded_as_partial() -> None:
    server = WireServer(dialect="vllm")
    rec = Recorder(request_token_ids=True)
    client = wrapped(server, "sync", rec)
    with rec.episode("t") as ep:
        with client.chat.completions.create(model="m", messages=M, stream=True) as stream:
            first = next(iter(stream))
        assert first.choices[0].delta.content
    (call,) = ep.calls
    assert call.choices[0].ids.tolist() == expected_ids(M)[:1]
    assert any("partial" in note for note in call.notes)


def test_api_key_is_sent_but_not_stored() -> None:
    server = WireServer(dialect="vllm")
    rec = Recorder(request_token_ids=True)
    client = wrapped(server, "sync", rec)
    with rec.episode("t") as ep:
        client.chat.completions.create(model="m", messages=M, extra_headers={"Authorization": f"Bearer {API_KEY}"},
                                       extra_body={"api_key": API_KEY, "top_k": 2})
    assert server.headers[-1]["authorization"] == f"Bearer {API_KEY}"  # the wire got it
    request = ep.calls[0].request
    assert "extra_headers" not in request
    assert request["extra_body"] == {"top_k": 2, "return_token_ids": True}


# ---------------------------------------------------------------- null / NaN logprobs


class BadLogprobServer(WireServer):
    """vLLM reply whose second logprob entry is `bad` (JSON null, or NaN)."""

    bad: Any = None

    def completion(self, body: dict[str, Any]) -> dict[str, Any]:
        out = super().completion(body)
        for c in out["choices"]:
            if c["logprobs"]:
                c["logprobs"]["content"][1]["logprob"] = self.bad
        return out


@pytest.mark.parametrize("bad", [None, float("nan")], ids=["null", "nan"])
@pytest.mark.parametrize("stream", [False, True], ids=["plain", "stream"])
@pytest.mark.parametrize("mode", ["sync", "async"])
def test_null_logprob_is_flagged_never_recorded_as_nan(mode: str, stream: bool, bad: Any) -> None:
    server = BadLogprobServer(dialect="vllm")
    server.bad = bad
    rec = Recorder(request_token_ids=True, request_logprobs=True)
    client = wrapped(server, mode, rec)
    ep = run_in_episode(rec, client, mode, model="m", messages=M, stream=stream)
    (call,) = ep.calls
    choice = call.choices[0]
    n = len(expected_ids(M))
    assert choice.logprobs is None  # missing for this choice, not NaN passed off as a logprob
    assert choice.ids.tolist() == expected_ids(M)  # the ids are still the exact ones
    assert choice.exact and call.exact
    assert f"choice 0: 1 of {n} logprobs are null or NaN; logprobs dropped" in call.notes
    # Assembly then reports the sample as lacking logprobs instead of training on NaN.
    from rollout import assemble

    (sample,) = assemble(ep)
    assert not sample.has_logprobs and not np.isnan(sample.logprobs).any()


@pytest.mark.parametrize("mode", ["sync", "async"])
def test_null_logprob_raises_when_strict(mode: str) -> None:
    server = BadLogprobServer(dialect="vllm")
    rec = Recorder(request_token_ids=True, request_logprobs=True, strict=True)
    client = wrapped(server, mode, rec)
    with pytest.raises(TokenRecordError, match="null or NaN"):
        run_in_episode(rec, client, mode, model="m", messages=M)


def test_minus_inf_logprob_is_kept() -> None:
    """-inf is a real logprob (a token with probability 0 under the reported distribution)."""
    server = BadLogprobServer(dialect="vllm")
    server.bad = float("-inf")
    rec = Recorder(request_token_ids=True, request_logprobs=True)
    ep = run_in_episode(rec, wrapped(server, "sync", rec), "sync", model="m", messages=M)
    lps = ep.calls[0].choices[0].logprobs
    assert lps is not None and lps[1] == -np.inf and ep.calls[0].notes == []


# ---------------------------------------------------------------- async detection, failures at call time


@pytest.mark.parametrize("kind", ["sync", "async", "areal"])
def test_wrapped_client_keeps_its_sync_or_async_nature(kind: str) -> None:
    import inspect

    from compat.clients import is_async_client

    sync, async_ = openai_clients(WireServer())
    client: Any = {"sync": sync, "async": async_, "areal": FakeArealOpenAI()}[kind]
    w = Recorder().wrap(client)
    assert is_async_client(w) == is_async_client(client) == (kind != "sync")
    assert inspect.iscoroutinefunction(w.chat.completions.create) == (kind != "sync")


def test_async_call_rejected_before_sending_leaves_a_trace() -> None:
    """The client raises at call time (a bad argument), before any coroutine exists."""
    fake = FakeArealOpenAI()
    rec = Recorder()
    client = rec.wrap(fake)

    async def go() -> Any:
        async with rec.episode("t") as ep:
            with pytest.raises(TypeError):
                await client.chat.completions.create(model="m")  # no messages
        return ep

    ep = asyncio.run(go())
    assert ep.calls == []
    (failure,) = ep.metadata["failed_calls"]
    assert failure["endpoint"] == "chat.completions" and "TypeError" in failure["error"]


# ---------------------------------------------------------------- clients that cannot keep their type


class SlottedClient:
    """A client whose instances cannot be re-classed (fixed __slots__ layout)."""

    __slots__ = ("chat", "name")

    def __init__(self) -> None:
        self.chat = SimpleNamespace(completions=DuckCompletions())
        self.name = "slotted"


def test_client_that_cannot_be_reclassed_gets_a_recording_proxy(caplog: pytest.LogCaptureFixture) -> None:
    rec = Recorder()
    client = SlottedClient()
    with caplog.at_level("WARNING", logger="rollout.wrap"):
        w = rec.wrap(client)
    assert "plain proxy" in caplog.text
    assert not isinstance(w, SlottedClient)  # the type could not be kept, and the log said so
    assert w.name == "slotted"  # other attributes pass through
    with rec.episode("t") as ep:
        reply = w.chat.completions.create(model="m", messages=M)
    assert reply["id"] == "duck-1"
    (call,) = ep.calls
    assert call.prompt_ids.tolist() == [1, 2, 3, 4] and call.choices[0].ids.tolist() == [7, 8, 9]
    with pytest.raises(ValueError, match="already wrapped"):
        rec.wrap(w)


# ---------------------------------------------------------------- streams: tool calls, close


TOOL_CALLS = [{"name": "add", "arguments": '{"a": 1, "b": 2}'},
              {"name": "mul", "arguments": '{"a": 3, "b": 40}'}]


def tool_call_ids() -> list[int]:
    return ENC.encode("".join(f"<tool_call>{json.dumps(c)}</tool_call>" for c in TOOL_CALLS))


@pytest.mark.parametrize("mode", ["sync", "async"])
def test_streamed_tool_call_deltas_are_folded_into_the_record(mode: str) -> None:
    server = WireServer(dialect="vllm", tool_calls=TOOL_CALLS)
    rec = Recorder(request_token_ids=True, request_logprobs=True)
    client = wrapped(server, mode, rec)
    ep = run_in_episode(rec, client, mode, model="m", messages=M, stream=True)
    plain = run_in_episode(rec, client, mode, model="m", messages=M)
    (call,) = ep.calls
    choice = call.choices[0]
    want = [{"id": f"call_{k}", "type": "function", "function": c} for k, c in enumerate(TOOL_CALLS)]
    assert choice.message == {"role": "assistant", "tool_calls": want}
    assert choice.message == plain.calls[0].choices[0].message  # streamed == not streamed
    assert choice.finish_reason == "tool_calls"
    ids = tool_call_ids()
    assert choice.ids.tolist() == ids and call.exact
    assert np.array_equal(choice.logprobs, expected_logprobs(ids))
    # The arguments really arrived in pieces over several chunks.
    sse = server._sse({"messages": M, "return_token_ids": True})
    assert sse.count(b'"arguments"') >= 2 * 4


def test_sync_stream_close_records_a_partial_call_at_once() -> None:
    server = WireServer(dialect="vllm")
    rec = Recorder(request_token_ids=True, request_logprobs=True)
    client = wrapped(server, "sync", rec)
    with rec.episode("t") as ep:
        stream = client.chat.completions.create(model="m", messages=M, stream=True)
        it = iter(stream)
        next(it), next(it)
        stream.close()
        assert len(ep.calls) == 1  # recorded by close(), not left to the episode's end
        assert stream.response.is_closed  # and the SDK stream itself was closed
    (call,) = ep.calls
    ids = expected_ids(M)
    assert call.choices[0].ids.tolist() == ids[:2]
    assert np.array_equal(call.choices[0].logprobs, expected_logprobs(ids)[:2])
    assert any("partial" in note for note in call.notes)


@pytest.mark.parametrize("how", ["close", "aclose", "async with"])
def test_async_stream_close_records_a_partial_call_at_once(how: str) -> None:
    server = WireServer(dialect="vllm")
    rec = Recorder(request_token_ids=True, request_logprobs=True)
    client = wrapped(server, "async", rec)

    async def go() -> Any:
        async with rec.episode("t") as ep:
            stream = await client.chat.completions.create(model="m", messages=M, stream=True)
            if how == "async with":
                async with stream:
                    await stream.__anext__()
            else:
                await stream.__anext__()
                await getattr(stream, how)()
            assert len(ep.calls) == 1
            assert stream.response.is_closed
        return ep

    (call,) = asyncio.run(go()).calls
    assert call.choices[0].ids.tolist() == expected_ids(M)[:1]
    assert any("partial" in note for note in call.notes)


@pytest.mark.parametrize("mode", ["sync", "async"])
def test_stream_left_open_is_recorded_when_its_episode_ends(mode: str) -> None:
    server = WireServer(dialect="vllm")
    rec = Recorder(request_token_ids=True)
    client = wrapped(server, mode, rec)
    if mode == "sync":
        with rec.episode("t") as ep:
            stream = client.chat.completions.create(model="m", messages=M, stream=True)
            next(iter(stream))
            assert ep.calls == []
    else:

        async def go() -> Any:
            async with rec.episode("t") as ep:
                stream = await client.chat.completions.create(model="m", messages=M, stream=True)
                await stream.__anext__()
                assert ep.calls == []
            return ep

        ep = asyncio.run(go())
    (call,) = ep.calls
    assert call.choices[0].ids.tolist() == expected_ids(M)[:1]
    assert any("partial" in note for note in call.notes)
