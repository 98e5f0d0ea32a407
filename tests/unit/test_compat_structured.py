"""Structured output: native parse, the create fallbacks, stream + response_format, bad formats."""

from __future__ import annotations

import asyncio
import copy
import inspect
import json
from types import SimpleNamespace
from typing import Any

import httpx2
import openai
import pytest
from openai.lib.streaming.chat import AsyncChatCompletionStreamManager, ChatCompletionStreamManager
from openai.types.chat import ChatCompletion, ParsedChatCompletion
from pydantic import BaseModel

import compat.openai_compatible as oc
from compat import (
    StructuredOutputError,
    UnsupportedResponseFormatError,
)
from compat.openai_compatible import OpenAICompatibleModel
from tests.fakes import DuckHTTPError, FakeArealOpenAI, WireDuck, WireServer, openai_clients


class City(BaseModel):
    name: str
    population: int


GOOD = json.dumps({"name": "Oslo", "population": 709000})
INSTRUCTION_MARK = "Reply with only a JSON object that matches this JSON schema"


def messages() -> list[dict[str, Any]]:
    return [
        {"role": "system", "content": "You answer with data."},
        {"role": "user", "content": "Largest city in Norway?"},
    ]


pytestmark = pytest.mark.usefixtures("clean_env")


def fmt_type(kwargs: dict[str, Any]) -> str | None:
    fmt = kwargs.get("response_format")
    return fmt.get("type") if isinstance(fmt, dict) else None


def has_instruction(msgs: list[dict[str, Any]]) -> bool:
    return any(isinstance(m.get("content"), str) and INSTRUCTION_MARK in m["content"] for m in msgs)


def assert_parsed(reply: Any) -> None:
    assert isinstance(reply, ParsedChatCompletion)
    parsed = reply.choices[0].message.parsed
    assert isinstance(parsed, City)
    assert parsed == City(name="Oslo", population=709000)


def call(model: OpenAICompatibleModel, mode: str, msgs: Any, **kw: Any) -> Any:
    if mode == "sync":
        return model.run(msgs, **kw)
    return asyncio.run(model.arun(msgs, **kw))


MODES = ["sync", "async"]


# --- native parse over the real SDK --------------------------------------------------------


@pytest.mark.parametrize("mode", MODES)
def test_native_parse_over_sdk(mode: str) -> None:
    server = WireServer(responder=lambda m, r: GOOD)
    sync, async_ = openai_clients(server)
    model = OpenAICompatibleModel("m", client=sync, async_client=async_)
    msgs = messages()
    before = copy.deepcopy(msgs)
    reply = call(model, mode, msgs, response_format=City)
    assert_parsed(reply)
    assert len(server.requests) == 1  # one native call, no fallback
    fmt = server.requests[0]["response_format"]
    assert fmt["type"] == "json_schema"
    assert fmt["json_schema"]["name"] == "City"
    assert set(fmt["json_schema"]["schema"]["properties"]) == {"name", "population"}
    assert server.requests[0]["messages"] == before
    assert msgs == before


def test_private_parse_methods_sync_and_async() -> None:
    server = WireServer(responder=lambda m, r: GOOD)
    sync, async_ = openai_clients(server)
    model = OpenAICompatibleModel("m", client=sync, async_client=async_)
    assert_parsed(model._request_parse(messages(), City))
    assert_parsed(model._run(messages(), City))
    assert_parsed(asyncio.run(model._arequest_parse(messages(), City)))
    assert_parsed(asyncio.run(model._arun(messages(), City)))
    assert len(server.requests) == 4


@pytest.mark.parametrize("mode", MODES)
def test_server_rejecting_json_schema_with_400_retries_parse_as_json_object(mode: str) -> None:
    """CAMEL's `_request_parse` (openai_compatible_model.py L305-340, v0.2.90): on a
    400 the same parse is sent again with json_object and the schema in the prompt."""
    server = WireServer(responder=lambda m, r: GOOD, fail_statuses=[400])
    sync, async_ = openai_clients(server)
    model = OpenAICompatibleModel("m", client=sync, async_client=async_)
    msgs = messages()
    before = copy.deepcopy(msgs)
    reply = call(model, mode, msgs, response_format=City)
    assert_parsed(reply)
    assert [r["response_format"]["type"] for r in server.requests] == ["json_schema", "json_object"]
    assert not has_instruction(server.requests[0]["messages"])
    assert has_instruction(server.requests[1]["messages"])
    assert server.requests[1]["messages"][:-1] == before[:-1]
    assert msgs == before


@pytest.mark.parametrize("mode", MODES)
def test_unparseable_reply_comes_back_with_parsed_none_after_two_requests(mode: str) -> None:
    """CAMEL's default: the json_object retry's reply is returned unparsed and
    ChatAgent goes on (it was a StructuredOutputError after 4 requests)."""
    server = WireServer(responder=lambda m, r: "I cannot do JSON, sorry")
    sync, async_ = openai_clients(server)
    model = OpenAICompatibleModel("m", client=sync, async_client=async_)
    reply = call(model, mode, messages(), response_format=City)
    assert isinstance(reply, ParsedChatCompletion)
    assert reply.choices[0].message.parsed is None
    assert reply.choices[0].message.content == "I cannot do JSON, sorry"
    assert [r["response_format"]["type"] for r in server.requests] == ["json_schema", "json_object"]
    assert has_instruction(server.requests[-1]["messages"])


@pytest.mark.parametrize("mode", MODES)
def test_strict_raises_with_the_raw_text(mode: str) -> None:
    server = WireServer(responder=lambda m, r: "I cannot do JSON, sorry")
    sync, async_ = openai_clients(server)
    model = OpenAICompatibleModel("m", client=sync, async_client=async_, strict=True)
    with pytest.raises(StructuredOutputError) as err:
        call(model, mode, messages(), response_format=City)
    assert err.value.raw_text == "I cannot do JSON, sorry"
    assert err.value.attempts == ["native parse", "native parse json_object"]
    assert "City" in str(err.value)
    assert len(server.requests) == 2


def test_non_rejection_error_is_not_swallowed_by_fallbacks() -> None:
    server = WireServer(responder=lambda m, r: GOOD, fail_statuses=[401])
    sync, async_ = openai_clients(server)
    model = OpenAICompatibleModel("m", client=sync, async_client=async_)
    with pytest.raises(oc.ModelCallError) as err:
        model.run(messages(), response_format=City)
    assert err.value.status_code == 401
    assert len(server.requests) == 1


def scripted_clients(message: dict[str, Any], finish_reason: str) -> tuple[list[dict[str, Any]], Any, Any]:
    """SDK clients whose server answers every request with `message`."""
    bodies: list[dict[str, Any]] = []

    def handle(request: httpx2.Request) -> httpx2.Response:
        bodies.append(json.loads(request.content))
        return httpx2.Response(200, json={
            "id": "chatcmpl-1", "object": "chat.completion", "created": 0, "model": "m",
            "choices": [{"index": 0, "message": {"role": "assistant", **message}, "finish_reason": finish_reason}],
        })

    transport = httpx2.MockTransport(handle)
    sync = openai.OpenAI(api_key="k", base_url="http://wire.test/v1", max_retries=0,
                         http_client=httpx2.Client(transport=transport))
    async_ = openai.AsyncOpenAI(api_key="k", base_url="http://wire.test/v1", max_retries=0,
                                http_client=httpx2.AsyncClient(transport=transport))
    return bodies, sync, async_


TOOL_CALL = {"content": None, "tool_calls": [
    {"id": "call_1", "type": "function", "function": {"name": "lookup", "arguments": "{}"}}]}


@pytest.mark.parametrize("mode", MODES)
def test_tool_call_reply_under_response_format_is_returned_as_is(mode: str) -> None:
    """ChatAgent sends tools and a response_format together: a tool call is an
    answer, not a format failure, so no fallback request follows."""
    bodies, sync, async_ = scripted_clients(TOOL_CALL, "tool_calls")
    model = OpenAICompatibleModel("m", client=sync, async_client=async_, strict=True)
    reply = call(model, mode, messages(), response_format=City, tools=[LOOKUP])
    assert reply.choices[0].message.tool_calls[0].function.name == "lookup"
    assert len(bodies) == 1 and bodies[0]["tools"] == [LOOKUP]


@pytest.mark.parametrize("mode", MODES)
def test_truncated_reply_is_not_retried_with_another_format(mode: str) -> None:
    """finish_reason=length: the SDK's parse raises LengthFinishReasonError and
    CAMEL lets it propagate; another format would be cut off the same way."""
    bodies, sync, async_ = scripted_clients({"content": '{"name": "Os'}, "length")
    model = OpenAICompatibleModel("m", client=sync, async_client=async_)
    with pytest.raises(oc.ModelCallError) as err:
        call(model, mode, messages(), response_format=City)
    assert isinstance(err.value.__cause__, openai.LengthFinishReasonError)
    assert len(bodies) == 1


LOOKUP = {"type": "function", "function": {  # strict: the SDK's parse accepts no other tools
    "name": "lookup", "strict": True,
    "parameters": {"type": "object", "properties": {}, "required": [], "additionalProperties": False}}}


# --- no native parse: FakeArealOpenAI and duck clients ----------------------------------------


class Recorder:
    """A responder that replies valid JSON only once `ready(messages, kwargs)` holds."""

    def __init__(self, ready: Any, bad: str = "not json at all") -> None:
        self.ready = ready
        self.bad = bad
        self.seen: list[tuple[str | None, bool]] = []

    def __call__(self, msgs: list[dict[str, Any]], kwargs: dict[str, Any]) -> str:
        self.seen.append((fmt_type(kwargs), has_instruction(msgs)))
        return GOOD if self.ready(msgs, kwargs) else self.bad


@pytest.mark.parametrize("mode", MODES)
def test_fake_areal_first_fallback_json_schema_wins(mode: str) -> None:
    rec = Recorder(lambda m, k: fmt_type(k) == "json_schema")
    fake = FakeArealOpenAI(responder=rec)
    model = OpenAICompatibleModel("m", async_client=fake)
    assert_parsed(call(model, mode, messages(), response_format=City))
    assert rec.seen == [("json_schema", False)]
    assert fake.bogus_requests == []


@pytest.mark.parametrize("mode", MODES)
def test_fake_areal_fallback_order_to_instruction(mode: str) -> None:
    # Valid JSON only when the schema instruction is in the prompt and no response_format is sent.
    rec = Recorder(lambda m, k: has_instruction(m) and "response_format" not in k)
    fake = FakeArealOpenAI(responder=rec)
    model = OpenAICompatibleModel("m", async_client=fake)
    msgs = messages()
    before = copy.deepcopy(msgs)
    reply = call(model, mode, msgs, response_format=City)
    assert_parsed(reply)
    assert rec.seen == [("json_schema", False), ("json_object", True), (None, True)]
    assert fake.bogus_requests == []  # the inherited SDK parse was never used
    assert msgs == before
    # the recorded interaction is the one the winning reply came from
    assert fake.get_interaction(reply.id) is not None
    assert has_instruction(fake.get_interaction(reply.id).messages)


@pytest.mark.parametrize("mode", MODES)
def test_fake_areal_json_object_step(mode: str) -> None:
    rec = Recorder(lambda m, k: fmt_type(k) == "json_object" and has_instruction(m))
    fake = FakeArealOpenAI(responder=rec)
    model = OpenAICompatibleModel("m", async_client=fake)
    assert_parsed(call(model, mode, messages(), response_format=City))
    assert rec.seen == [("json_schema", False), ("json_object", True)]


def test_fake_areal_nothing_validates_raises_with_raw_text_when_strict() -> None:
    fake = FakeArealOpenAI(responder=lambda m, k: '{"name": "Oslo"}')  # missing population
    model = OpenAICompatibleModel("m", async_client=fake, strict=True)
    with pytest.raises(StructuredOutputError) as err:
        model.run(messages(), response_format=City)
    assert err.value.raw_text == '{"name": "Oslo"}'
    assert err.value.attempts == ["json_schema", "json_object", "instruction"]
    assert fake.calls == 3
    assert fake.bogus_requests == []
    with pytest.raises(StructuredOutputError):
        asyncio.run(model.arun(messages(), response_format=City))


@pytest.mark.parametrize("mode", MODES)
def test_fake_areal_nothing_validates_returns_last_reply_by_default(mode: str) -> None:
    fake = FakeArealOpenAI(responder=lambda m, k: '{"name": "Oslo"}')
    model = OpenAICompatibleModel("m", async_client=fake)
    reply = call(model, mode, messages(), response_format=City)
    assert isinstance(reply, ParsedChatCompletion)
    assert reply.choices[0].message.parsed is None
    assert reply.choices[0].message.content == '{"name": "Oslo"}'
    assert fake.get_interaction(reply.id) is not None  # the last interaction's reply
    assert fake.calls == 3 and fake.bogus_requests == []


class OwnCompletions:
    """Not the SDK's completions resource: a framework's own object with only `create`."""

    def __init__(self, server: WireServer) -> None:
        self.duck = WireDuck(server)
        self.calls = 0

    async def create(self, **kwargs: Any) -> Any:
        self.calls += 1
        return ChatCompletion.model_validate(self.duck.create(**kwargs))


class ReplacedChatClient(openai.AsyncOpenAI):
    """Subclasses the SDK but replaces `chat` with its own object; the SDK's
    `beta` (and its parse) stays, pointing at a placeholder URL."""

    def __init__(self, server: WireServer) -> None:
        self.bogus_requests: list[Any] = []

        def refuse(request: httpx2.Request) -> httpx2.Response:
            self.bogus_requests.append(request)
            raise httpx2.ConnectError("no server at the placeholder URL", request=request)

        super().__init__(api_key="none", base_url="http://placeholder.invalid/v1", max_retries=0,
                         http_client=httpx2.AsyncClient(transport=httpx2.MockTransport(refuse)))
        self.chat = SimpleNamespace(completions=OwnCompletions(server))  # type: ignore[assignment]


@pytest.mark.parametrize("mode", MODES)
def test_client_with_its_own_chat_object_never_uses_the_sdks_beta_parse(mode: str) -> None:
    server = WireServer(responder=lambda m, r: GOOD)
    client = ReplacedChatClient(server)
    model = OpenAICompatibleModel("m", async_client=client)
    assert_parsed(call(model, mode, messages(), response_format=City))
    assert client.bogus_requests == []
    assert [r["response_format"]["type"] for r in server.requests] == ["json_schema"]


def test_create_patched_on_the_instance_is_not_bypassed_by_parse() -> None:
    server = WireServer(responder=lambda m, r: GOOD)
    sync, _ = openai_clients(server)
    seen: list[dict[str, Any]] = []
    original = sync.chat.completions.create

    def create(**kwargs: Any) -> Any:
        seen.append(kwargs)
        return original(**kwargs)

    sync.chat.completions.create = create  # type: ignore[method-assign]
    model = OpenAICompatibleModel("m", client=sync)
    assert_parsed(model.run(messages(), response_format=City))
    assert len(seen) == len(server.requests) == 1


def test_each_side_is_judged_on_its_own_client() -> None:
    """An SDK sync client and an AReaL-style async client: `arun` must not take
    the async client's inherited (bogus) parse because the sync one has a good one."""
    server = WireServer(responder=lambda m, r: GOOD)
    sync, _ = openai_clients(server)
    fake = FakeArealOpenAI(responder=lambda m, k: GOOD)
    model = OpenAICompatibleModel("m", client=sync, async_client=fake)
    assert_parsed(asyncio.run(model.arun(messages(), response_format=City)))
    assert fake.bogus_requests == [] and fake.calls == 1
    assert_parsed(model.run(messages(), response_format=City))
    assert len(server.requests) == 1 and "json_schema" in server.requests[0]["response_format"]["type"]


class Forwarder:
    """A proxy in front of a completions resource (as a recorder or tracer has),
    exposing what it forwards to through compat's protocol."""

    def __init__(self, target: Any) -> None:
        self._target = target
        self.forwarded: list[str] = []

    def compat_forwards_to(self) -> Any:
        return self._target

    def __getattr__(self, name: str) -> Any:
        attr = getattr(self._target, name)
        if callable(attr):
            def forward(**kwargs: Any) -> Any:
                self.forwarded.append(name)
                return attr(**kwargs)
            return forward
        return attr


def proxied(client: Any) -> tuple[Any, Forwarder]:
    forwarder = Forwarder(client.chat.completions)
    return SimpleNamespace(chat=SimpleNamespace(completions=forwarder), beta=getattr(client, "beta", None)), forwarder


def test_forwarding_proxy_over_sdk_resource_uses_native_parse() -> None:
    server = WireServer(responder=lambda m, r: GOOD)
    sync, _ = openai_clients(server)
    client, forwarder = proxied(sync)
    model = OpenAICompatibleModel("m", client=client)
    assert_parsed(model.run(messages(), response_format=City))
    assert forwarder.forwarded == ["parse"]  # through the proxy, not around it


def test_forwarding_proxy_over_areal_resource_falls_back_to_create() -> None:
    fake = FakeArealOpenAI(responder=lambda m, k: GOOD)
    client, forwarder = proxied(fake)
    model = OpenAICompatibleModel("m", async_client=client)
    assert_parsed(asyncio.run(model.arun(messages(), response_format=City)))
    assert forwarder.forwarded == ["create"]
    assert fake.bogus_requests == []


def test_fenced_json_in_prose_is_extracted() -> None:
    fake = FakeArealOpenAI(responder=lambda m, k: f"Sure! Here it is:\n```json\n{GOOD}\n```\nBye")
    model = OpenAICompatibleModel("m", async_client=fake)
    assert_parsed(model.run(messages(), response_format=City))


@pytest.mark.parametrize("mode", MODES)
def test_caller_messages_and_dicts_unchanged_with_multimodal_last_message(mode: str) -> None:
    rec = Recorder(lambda m, k: has_instruction(m) and "response_format" not in k)
    fake = FakeArealOpenAI(responder=rec)
    model = OpenAICompatibleModel("m", async_client=fake)
    msgs: list[dict[str, Any]] = [
        {"role": "user", "content": [{"type": "text", "text": "Which city?"}]},
    ]
    before = copy.deepcopy(msgs)
    ids = [id(m) for m in msgs]
    reply = call(model, mode, msgs, response_format=City)
    assert_parsed(reply)
    assert msgs == before and [id(m) for m in msgs] == ids
    sent = fake.get_interaction(reply.id).messages
    assert sent[0] == before[0]
    assert sent[-1]["role"] == "system" and INSTRUCTION_MARK in sent[-1]["content"]


@pytest.mark.parametrize("mode", MODES)
def test_duck_client_dict_replies_parse_and_keep_extra_fields(mode: str) -> None:
    server = WireServer(dialect="vllm", responder=lambda m, r: GOOD)
    duck = WireDuck(server)
    model = OpenAICompatibleModel("m", {"return_token_ids": True}, client=duck)
    reply = call(model, mode, messages(), response_format=City)
    assert_parsed(reply)
    assert fmt_type(duck.calls[0]) == "json_schema"
    assert len(duck.calls) == 1
    # vLLM's unknown wire fields survive the conversion to a ParsedChatCompletion
    assert reply.model_extra is not None and reply.model_extra["prompt_token_ids"]
    assert reply.choices[0].model_extra is not None and reply.choices[0].model_extra["token_ids"]


def test_duck_client_http_400_on_json_schema_falls_through() -> None:
    server = WireServer(responder=lambda m, r: GOOD, fail_statuses=[400])
    duck = WireDuck(server)

    class BadRequestError(DuckHTTPError):
        """Named like the SDK's: a rejection of the strategy."""

    def create(**kwargs: Any) -> dict[str, Any]:
        try:
            return WireDuck.create(duck, **kwargs)
        except DuckHTTPError as exc:
            raise BadRequestError(exc.status_code) from exc

    duck.create = create  # type: ignore[method-assign]
    model = OpenAICompatibleModel("m", client=duck)
    assert_parsed(model.run(messages(), response_format=City))
    assert [fmt_type(c) for c in duck.calls] == ["json_schema", "json_object"]


# --- streaming with a response format ---------------------------------------------------------


def test_stream_parse_sdk_sync_uses_native_stream_manager() -> None:
    server = WireServer(responder=lambda m, r: GOOD)
    sync, async_ = openai_clients(server)
    model = OpenAICompatibleModel("m", {"stream": True}, client=sync, async_client=async_)
    manager = model.run(messages(), response_format=City)
    assert isinstance(manager, ChatCompletionStreamManager)
    with manager as stream:
        events = list(stream)
        final = stream.get_final_completion()
    assert any(e.type == "content.delta" for e in events)
    assert final.choices[0].message.parsed == City(name="Oslo", population=709000)
    body = server.requests[-1]
    assert body["stream"] is True and body["response_format"]["type"] == "json_schema"


def test_stream_parse_sdk_async_uses_native_stream_manager() -> None:
    server = WireServer(responder=lambda m, r: GOOD)
    sync, async_ = openai_clients(server)
    model = OpenAICompatibleModel("m", {"stream": True}, client=sync, async_client=async_)

    async def scenario() -> Any:
        manager = await model.arun(messages(), response_format=City)
        assert isinstance(manager, AsyncChatCompletionStreamManager)
        async with manager as stream:
            async for _ in stream:
                pass
            return await stream.get_final_completion()

    final = asyncio.run(scenario())
    assert final.choices[0].message.parsed == City(name="Oslo", population=709000)
    assert server.requests[-1]["response_format"]["type"] == "json_schema"


def test_private_stream_parse_methods() -> None:
    server = WireServer(responder=lambda m, r: GOOD)
    sync, async_ = openai_clients(server)
    model = OpenAICompatibleModel("m", client=sync, async_client=async_)
    with model._request_stream_parse(messages(), City) as stream:
        assert stream.get_final_completion().choices[0].message.parsed.name == "Oslo"

    async def scenario() -> Any:
        async with await model._arequest_stream_parse(messages(), City) as stream:
            return await stream.get_final_completion()

    assert asyncio.run(scenario()).choices[0].message.parsed.population == 709000
    assert all(r["stream"] is True for r in server.requests)


def _reassemble_json(chunks: list[Any]) -> City:
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    return City.model_validate_json(text)


def test_stream_parse_across_sides_is_a_stream_the_caller_can_read() -> None:
    """A stream manager cannot cross the sync/async divide (ClientPair bridges chunk
    streams only): `run` over an async-only SDK client, and `arun` over a sync-only
    one, stream json_schema chunks instead."""
    server = WireServer(responder=lambda m, r: GOOD)
    sync, async_ = openai_clients(server)
    over_async = OpenAICompatibleModel("m", {"stream": True}, async_client=async_)
    assert _reassemble_json(list(over_async.run(messages(), response_format=City))).name == "Oslo"
    over_sync = OpenAICompatibleModel("m", {"stream": True}, client=sync)

    async def scenario() -> list[Any]:
        return [c async for c in await over_sync.arun(messages(), response_format=City)]

    assert _reassemble_json(asyncio.run(scenario())).population == 709000
    assert [r["response_format"]["type"] for r in server.requests] == ["json_schema", "json_schema"]


def test_stream_parse_fake_areal_async_is_json_schema_stream() -> None:
    rec = Recorder(lambda m, k: True)
    fake = FakeArealOpenAI(responder=rec)
    model = OpenAICompatibleModel("m", {"stream": True}, async_client=fake)

    async def scenario() -> tuple[Any, list[Any]]:
        stream = await model.arun(messages(), response_format=City)
        return stream, [c async for c in stream]

    stream, chunks = asyncio.run(scenario())
    assert inspect.isasyncgen(stream)  # the fake's own stream, returned as is
    assert _reassemble_json(chunks) == City(name="Oslo", population=709000)
    assert rec.seen == [("json_schema", False)]
    assert fake.bogus_requests == []


def test_stream_parse_fake_areal_sync_is_json_schema_stream() -> None:
    rec = Recorder(lambda m, k: True)
    fake = FakeArealOpenAI(responder=rec)
    model = OpenAICompatibleModel("m", {"stream": True}, async_client=fake)
    chunks = list(model.run(messages(), response_format=City))
    assert _reassemble_json(chunks) == City(name="Oslo", population=709000)
    assert rec.seen == [("json_schema", False)]
    assert fake.bogus_requests == []


@pytest.mark.parametrize("mode", MODES)
def test_response_format_in_config_with_stream_sent_once(mode: str) -> None:
    server = WireServer(responder=lambda m, r: GOOD)
    sync, async_ = openai_clients(server)
    config = {"stream": True, "response_format": City}
    model = OpenAICompatibleModel("m", config, client=sync, async_client=async_)

    async def aconsume(manager: Any) -> Any:
        async with manager as stream:
            async for _ in stream:
                pass
            return await stream.get_final_completion()

    if mode == "sync":
        with model.run(messages()) as stream:
            final = stream.get_final_completion()
    else:
        final = asyncio.run(_arun_then(model, aconsume))
    assert final.choices[0].message.parsed == City(name="Oslo", population=709000)
    assert server.requests[-1]["response_format"]["json_schema"]["name"] == "City"
    assert model.model_config_dict == config


async def _arun_then(model: OpenAICompatibleModel, consume: Any) -> Any:
    return await consume(await model.arun(messages()))


def test_explicit_response_format_beats_config_dict_with_stream_on_duck() -> None:
    rec = Recorder(lambda m, k: True)
    fake = FakeArealOpenAI(responder=rec)
    model = OpenAICompatibleModel(
        "m", {"stream": True, "response_format": {"type": "json_object"}}, async_client=fake
    )
    chunks = list(model.run(messages(), response_format=City))
    assert _reassemble_json(chunks).name == "Oslo"
    assert rec.seen == [("json_schema", False)]


# --- response_format validation -----------------------------------------------------------------


class NotPydantic:
    name: str


BAD_FORMATS = [
    pytest.param("json", id="str"),
    pytest.param(5, id="int"),
    pytest.param(NotPydantic, id="plain-class"),
    pytest.param(City(name="x", population=1), id="model-instance"),
    pytest.param({"type": "xml"}, id="dict-bad-type"),
    pytest.param({"json_schema": {}}, id="dict-no-type"),
]


@pytest.mark.parametrize("fmt", BAD_FORMATS)
@pytest.mark.parametrize("mode", MODES)
def test_unsupported_response_format_raises_before_request(fmt: Any, mode: str) -> None:
    server = WireServer()
    sync, async_ = openai_clients(server)
    model = OpenAICompatibleModel("m", client=sync, async_client=async_)
    with pytest.raises(UnsupportedResponseFormatError):
        call(model, mode, messages(), response_format=fmt)
    assert server.requests == []


@pytest.mark.parametrize("mode", MODES)
def test_unsupported_response_format_in_config_raises_before_request(mode: str) -> None:
    server = WireServer()
    sync, async_ = openai_clients(server)
    model = OpenAICompatibleModel("m", {"response_format": {"type": "yaml"}}, client=sync,
                                  async_client=async_)
    with pytest.raises(UnsupportedResponseFormatError, match="yaml"):
        call(model, mode, messages())
    assert server.requests == []


def test_unsupported_format_is_a_type_error_naming_the_value() -> None:
    model = OpenAICompatibleModel("m", client=WireDuck(WireServer()))
    with pytest.raises(TypeError, match="NotPydantic"):
        model.run(messages(), response_format=NotPydantic)  # type: ignore[arg-type]


@pytest.mark.parametrize("mode", MODES)
def test_openai_format_dict_is_sent_as_is_through_parse(mode: str) -> None:
    """As CAMEL: any response_format goes to parse (the SDK adds "stream": false)."""
    server = WireServer(responder=lambda m, r: GOOD)
    sync, async_ = openai_clients(server)
    model = OpenAICompatibleModel("m", {"response_format": {"type": "json_object"}}, client=sync,
                                  async_client=async_)
    reply = call(model, mode, messages())
    assert isinstance(reply, ParsedChatCompletion) and reply.choices[0].message.parsed is None
    assert server.requests == [{**server.requests[0], "response_format": {"type": "json_object"}, "stream": False}]
    assert json.loads(reply.choices[0].message.content) == json.loads(GOOD)


@pytest.mark.parametrize("mode", MODES)
def test_openai_format_dict_without_native_parse_goes_to_create(mode: str) -> None:
    rec = Recorder(lambda m, k: True)
    fake = FakeArealOpenAI(responder=rec)
    model = OpenAICompatibleModel("m", async_client=fake)
    reply = call(model, mode, messages(), response_format={"type": "json_object"})
    assert json.loads(reply.choices[0].message.content) == json.loads(GOOD)
    assert rec.seen == [("json_object", False)]


def test_parse_errors_are_openai_free_for_callers() -> None:
    """A structured failure is our typed error, not an SDK exception leaking through."""
    server = WireServer(responder=lambda m, r: "nope")
    sync, async_ = openai_clients(server)
    model = OpenAICompatibleModel("m", client=sync, async_client=async_, strict=True)
    with pytest.raises(StructuredOutputError) as err:
        model.run(messages(), response_format=City)
    assert not isinstance(err.value, openai.OpenAIError)
