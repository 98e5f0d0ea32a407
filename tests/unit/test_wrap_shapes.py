"""Every generation method of the SDK's chat and Responses resources is recorded or refused.

The real openai SDK over in-process transports: `tests.fakes.WireServer` for
chat completions, and `ResponsesServer` below for the Responses API (a
`Response` JSON, or its server-sent events ending in `response.completed`).
A refused call raises `UnrecordedCallError` before any request leaves the
client, and leaves a trace in its episode.
"""

from __future__ import annotations

import asyncio
import json
from typing import Any

import httpx2
import pytest
from openai import AsyncOpenAI, OpenAI
from openai._legacy_response import LegacyAPIResponse
from openai.types.responses import Response
from pydantic import BaseModel

from rollout import Recorder
from rollout.errors import UnrecordedCallError
from tests.fakes import ENC, WireServer, openai_clients

M = [{"role": "system", "content": "be brief"}, {"role": "user", "content": "what is 2+2?"}]


class Answer(BaseModel):
    answer: str
    n: int


def json_responder(messages: list[dict[str, Any]], body: dict[str, Any]) -> str:
    return json.dumps({"answer": "four", "n": 4})


def run(mode: str, fn: Any) -> Any:
    """`fn()` for a sync client; awaited for an async one."""
    return asyncio.run(fn()) if mode == "async" else fn()


# --- chat.completions.with_raw_response.parse (LangChain's structured-output path) ------------


@pytest.mark.parametrize("mode", ["sync", "async"])
@pytest.mark.parametrize("path", ["chat.completions", "beta.chat.completions"])
def test_with_raw_response_parse_is_recorded_with_ids(mode: str, path: str) -> None:
    server = WireServer(dialect="vllm", responder=json_responder)
    rec = Recorder(request_token_ids=True, request_logprobs=True)
    sync, async_ = openai_clients(server)
    resource: Any = rec.wrap(async_ if mode == "async" else sync)
    for part in path.split("."):
        resource = getattr(resource, part)

    async def ago() -> Any:
        async with rec.episode("t") as ep:
            raw = await resource.with_raw_response.parse(model="m", messages=M, response_format=Answer)
        return ep, raw

    if mode == "sync":
        with rec.episode("t") as ep:
            raw = resource.with_raw_response.parse(model="m", messages=M, response_format=Answer)
    else:
        ep, raw = asyncio.run(ago())
    assert type(raw) is LegacyAPIResponse
    assert raw.parse().choices[0].message.parsed == Answer(answer="four", n=4)
    (call,) = ep.calls
    assert call.endpoint == f"{path}.parse"
    assert call.choices[0].ids.tolist() == ENC.encode(json.dumps({"answer": "four", "n": 4})) and call.exact
    assert len(server.requests) == 1


def test_client_level_raw_view_cached_before_wrapping_still_records() -> None:
    """The SDK caches `client.with_raw_response` on the instance: the wrapper's copy must not reuse it."""
    server = WireServer(dialect="vllm")
    sync, _ = openai_clients(server)
    assert sync.with_raw_response.chat is not None  # cached on the original, bound to it
    rec = Recorder(request_token_ids=True)
    client = rec.wrap(sync)
    with rec.episode("t") as ep:
        client.with_raw_response.chat.completions.create(model="m", messages=M)
    assert len(ep.calls) == 1


# --- the Responses API -------------------------------------------------------------------------


def response_json(rid: str, text: str) -> dict[str, Any]:
    return {
        "id": rid, "object": "response", "created_at": 0, "model": "m", "status": "completed",
        "output": [{"type": "message", "id": f"msg_{rid}", "role": "assistant", "status": "completed",
                    "content": [{"type": "output_text", "text": text, "annotations": []}]}],
        "usage": {"input_tokens": 5, "output_tokens": 2, "total_tokens": 7},
        "parallel_tool_calls": True, "tool_choice": "auto", "tools": [],
    }  # fmt: skip


class ResponsesServer:
    """Serves POST /responses: a Response, or its events when `stream` is set."""

    def __init__(self) -> None:
        self.requests: list[dict[str, Any]] = []

    def __call__(self, request: httpx2.Request) -> httpx2.Response:
        body = json.loads(request.content or b"{}")
        self.requests.append(body)
        rid = f"resp_{len(self.requests)}"
        text = json.dumps({"answer": "four", "n": 4}) if body.get("text") else f"hello {len(self.requests)}"
        full = response_json(rid, text)
        if not body.get("stream"):
            return httpx2.Response(200, json=full)
        item = {**full["output"][0], "status": "in_progress", "content": []}
        part = {"type": "output_text", "text": "", "annotations": []}
        events = [
            {"type": "response.created", "response": {**full, "status": "in_progress", "output": []}},
            {"type": "response.output_item.added", "output_index": 0, "item": item},
            {"type": "response.content_part.added", "item_id": item["id"], "output_index": 0,
             "content_index": 0, "part": part},
            {"type": "response.output_text.delta", "item_id": item["id"], "output_index": 0,
             "content_index": 0, "delta": text, "logprobs": []},
            {"type": "response.output_text.done", "item_id": item["id"], "output_index": 0,
             "content_index": 0, "text": text, "logprobs": []},
            {"type": "response.content_part.done", "item_id": item["id"], "output_index": 0,
             "content_index": 0, "part": {**part, "text": text}},
            {"type": "response.output_item.done", "output_index": 0, "item": full["output"][0]},
            {"type": "response.completed", "response": full},
        ]  # fmt: skip
        sse = "".join(
            f"event: {e['type']}\ndata: {json.dumps({**e, 'sequence_number': i})}\n\n" for i, e in enumerate(events)
        )
        return httpx2.Response(200, headers={"content-type": "text/event-stream"}, content=sse.encode())


def responses_client(server: ResponsesServer, mode: str) -> Any:
    transport = httpx2.MockTransport(server)
    if mode == "async":
        return AsyncOpenAI(api_key="k", base_url="http://r.test/v1", max_retries=0,
                           http_client=httpx2.AsyncClient(transport=transport))  # fmt: skip
    return OpenAI(api_key="k", base_url="http://r.test/v1", max_retries=0,
                  http_client=httpx2.Client(transport=transport))  # fmt: skip


async def _drain(stream: Any) -> list[Any]:
    if hasattr(stream, "__aiter__"):
        return [e async for e in stream]
    return list(stream)


async def _use(client: Any, shape: str) -> Any:
    """One Responses call in `shape`; what the agent ends up holding."""

    async def done(x: Any) -> Any:
        return await x if asyncio.iscoroutine(x) else x

    kwargs: dict[str, Any] = {"model": "m", "input": "say hello", "instructions": "be kind"}
    if shape == "create":
        return await done(client.responses.create(**kwargs))
    if shape == "create(stream=True)":
        return await _drain(await done(client.responses.create(stream=True, **kwargs)))
    if shape == "parse":
        return await done(client.responses.parse(text_format=Answer, **kwargs))
    if shape == "stream":
        manager = client.responses.stream(**kwargs)
        if hasattr(manager, "__aenter__"):
            async with manager as stream:
                events = [e async for e in stream]
                return events, await stream.get_final_response()
        with manager as stream:
            return list(stream), stream.get_final_response()
    if shape == "with_raw_response.create":
        raw = await done(client.responses.with_raw_response.create(**kwargs))
        return raw, raw.parse()
    if shape == "with_raw_response.create(stream=True)":
        raw = await done(client.responses.with_raw_response.create(stream=True, **kwargs))
        return await _drain(raw.parse())
    if shape == "beta.responses.create":
        return await done(client.beta.responses.create(**kwargs))
    raise AssertionError(shape)


SHAPES = {  # a plain `responses.create` was recorded already (test_wrap.py)
    "create(stream=True)": "responses",
    "parse": "responses.parse",
    "stream": "responses.stream",
    "with_raw_response.create": "responses",
    "with_raw_response.create(stream=True)": "responses",
    "beta.responses.create": "beta.responses",
}


@pytest.mark.parametrize("shape", list(SHAPES))
@pytest.mark.parametrize("mode", ["sync", "async"])
def test_each_responses_call_shape_is_recorded_once(shape: str, mode: str) -> None:
    server = ResponsesServer()
    rec = Recorder()
    client = rec.wrap(responses_client(server, mode))

    async def go() -> Any:
        async with rec.episode("t") as ep:
            held = await _use(client, shape)
        return ep, held

    ep, held = asyncio.run(go())
    assert not ep.metadata.get("failed_calls")
    (call,) = ep.calls
    assert call.endpoint == SHAPES[shape]
    assert len(server.requests) == 1
    text = call.choices[0].message["content"]
    assert text == (json.dumps({"answer": "four", "n": 4}) if shape == "parse" else "hello 1")
    assert call.id == "resp_1" and call.usage == {"prompt_tokens": 5, "completion_tokens": 2}
    if shape == "parse":
        assert held.output_parsed == Answer(answer="four", n=4)
    elif shape == "stream":
        events, final = held
        assert events[-1].type == "response.completed" and final.output_text == text
    elif shape.startswith("with_raw_response.create("):
        assert held[-1].type == "response.completed"
    elif shape.startswith("with_raw_response"):
        raw, parsed = held
        assert type(raw) is LegacyAPIResponse and isinstance(parsed, Response)
    elif "stream" in shape:
        assert held[-1].type == "response.completed"
    else:
        assert type(held).__name__ in ("Response", "BetaResponse") and held.output[0].content[0].text == text


def test_a_responses_stream_closed_before_its_final_event_is_a_recorded_failure() -> None:
    server = ResponsesServer()
    rec = Recorder()
    client = rec.wrap(responses_client(server, "sync"))
    with rec.episode("t") as ep:
        stream = client.responses.create(model="m", input="hi", stream=True)
        next(iter(stream))
        stream.close()
    assert ep.calls == []
    (failure,) = ep.metadata["failed_calls"]
    assert "closed before its response.completed event" in failure["error"]


# --- refused: raised before sending, traced in the episode -------------------------------------


def _refused(client: Any, what: str) -> Any:
    if what == "responses.create(background=True)":
        return client.responses.create(model="m", input="hi", background=True)
    if what == "beta.responses.create(background=True)":
        return client.beta.responses.create(model="m", input="hi", background=True)
    if what == "responses.compact":
        return client.responses.compact(model="m", input="hi")
    if what == "responses.with_raw_response.compact":
        return client.responses.with_raw_response.compact(model="m", input="hi")
    if what == "responses.connect":
        return client.responses.connect()
    if what == "completions.create":
        return client.completions.create(model="m", prompt="hi")
    if what == "with_raw_response.completions.create":
        return client.with_raw_response.completions.create(model="m", prompt="hi")
    raise AssertionError(what)


REFUSED = [
    "responses.create(background=True)", "beta.responses.create(background=True)", "responses.compact",
    "responses.with_raw_response.compact", "responses.connect", "completions.create",
    "with_raw_response.completions.create",
]  # fmt: skip


@pytest.mark.parametrize("what", REFUSED)
@pytest.mark.parametrize("mode", ["sync", "async"])
def test_unrecordable_calls_are_refused_before_sending(what: str, mode: str) -> None:
    server = ResponsesServer()
    rec = Recorder()
    client = rec.wrap(responses_client(server, mode))

    async def go() -> Any:
        async with rec.episode("t") as ep:
            with pytest.raises(UnrecordedCallError, match="cannot be recorded"):
                result = _refused(client, what)
                if asyncio.iscoroutine(result):
                    await result
        return ep

    ep = asyncio.run(go())
    assert server.requests == []  # nothing was sent
    (failure,) = ep.metadata["failed_calls"]
    assert "UnrecordedCallError" in failure["error"]


@pytest.mark.parametrize("mode", ["sync", "async"])
def test_beta_stream_helper_is_recorded_under_its_own_name(mode: str) -> None:
    """LangChain streams structured output with `root_client.beta.chat.completions.stream(...)`."""
    server = WireServer(dialect="vllm")
    rec = Recorder(request_token_ids=True)
    sync, async_ = openai_clients(server)
    client = rec.wrap(async_ if mode == "async" else sync)

    async def go() -> Any:
        async with rec.episode("t") as ep:
            manager = client.beta.chat.completions.stream(model="m", messages=M)
            if mode == "async":
                async with manager as stream:
                    _ = [e async for e in stream]
            else:
                with manager as stream:
                    list(stream)
        return ep

    ep = asyncio.run(go())
    (call,) = ep.calls
    assert call.endpoint == "beta.chat.completions.stream" and call.exact


def test_a_raw_structured_reply_the_sdk_cannot_parse_is_still_recorded() -> None:
    """The generation is recorded from the JSON body; the agent meets the SDK's error at its own parse()."""
    server = WireServer(dialect="vllm")  # replies "ok 2": not an `Answer`
    rec = Recorder(request_token_ids=True)
    sync, _ = openai_clients(server)
    client = rec.wrap(sync)
    with rec.episode("t") as ep:
        raw = client.chat.completions.with_raw_response.parse(model="m", messages=M, response_format=Answer)
        with pytest.raises(Exception, match=r"(?i)json|validation"):
            raw.parse()
    (call,) = ep.calls
    assert call.choices[0].message["content"] == "ok 2" and call.choices[0].ids.tolist() == ENC.encode("ok 2")
    assert not ep.metadata.get("failed_calls")


def test_the_plain_proxy_fallback_records_raw_views_too() -> None:
    """A client that cannot be re-classed gets `_PlainProxy`: its client-level raw view records too."""
    from rollout.wrap import _PlainProxy

    server = WireServer(dialect="vllm")
    sync, _ = openai_clients(server)
    rec = Recorder(request_token_ids=True)
    proxy: Any = _PlainProxy(sync, rec)
    with rec.episode("t") as ep:
        raw = proxy.with_raw_response.chat.completions.create(model="m", messages=M)
    assert type(raw) is LegacyAPIResponse and len(ep.calls) == 1
