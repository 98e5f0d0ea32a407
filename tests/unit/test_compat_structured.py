"""Structured output: native parse, the create fallbacks, stream + response_format, bad formats."""

from __future__ import annotations

import asyncio
import copy
import inspect
import json
from typing import Any

import openai
import pytest
from openai.lib.streaming.chat import AsyncChatCompletionStreamManager, ChatCompletionStreamManager
from openai.types.chat import ChatCompletion, ParsedChatCompletion
from pydantic import BaseModel

import compat.openai_compatible as oc
from compat import (
    OpenAICompatibleModel,
    StructuredOutputError,
    UnsupportedResponseFormatError,
)
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
def test_server_rejecting_json_schema_with_400_falls_through(mode: str) -> None:
    server = WireServer(responder=lambda m, r: GOOD, fail_statuses=[400, 400])
    sync, async_ = openai_clients(server)
    model = OpenAICompatibleModel("m", client=sync, async_client=async_)
    msgs = messages()
    before = copy.deepcopy(msgs)
    reply = call(model, mode, msgs, response_format=City)
    assert_parsed(reply)
    # native parse (json_schema) -> 400; create json_schema -> 400; create json_object -> ok
    assert [r["response_format"]["type"] for r in server.requests] == [
        "json_schema", "json_schema", "json_object"]
    assert has_instruction(server.requests[2]["messages"])
    assert msgs == before


@pytest.mark.parametrize("mode", MODES)
def test_native_parse_invalid_json_falls_back_then_structured_error(mode: str) -> None:
    server = WireServer(responder=lambda m, r: "I cannot do JSON, sorry")
    sync, async_ = openai_clients(server)
    model = OpenAICompatibleModel("m", client=sync, async_client=async_)
    with pytest.raises(StructuredOutputError) as err:
        call(model, mode, messages(), response_format=City)
    assert err.value.raw_text == "I cannot do JSON, sorry"
    assert err.value.attempts == ["native parse", "json_schema", "json_object", "instruction"]
    assert "City" in str(err.value)
    assert len(server.requests) == 4
    assert "response_format" not in server.requests[-1]
    assert has_instruction(server.requests[-1]["messages"])


def test_non_rejection_error_is_not_swallowed_by_fallbacks() -> None:
    server = WireServer(responder=lambda m, r: GOOD, fail_statuses=[401])
    sync, async_ = openai_clients(server)
    model = OpenAICompatibleModel("m", client=sync, async_client=async_)
    with pytest.raises(oc.ModelCallError) as err:
        model.run(messages(), response_format=City)
    assert err.value.status_code == 401
    assert len(server.requests) == 1


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


def test_fake_areal_nothing_validates_raises_with_raw_text() -> None:
    fake = FakeArealOpenAI(responder=lambda m, k: '{"name": "Oslo"}')  # missing population
    model = OpenAICompatibleModel("m", async_client=fake)
    with pytest.raises(StructuredOutputError) as err:
        model.run(messages(), response_format=City)
    assert err.value.raw_text == '{"name": "Oslo"}'
    assert err.value.attempts == ["json_schema", "json_object", "instruction"]
    assert fake.calls == 3
    assert fake.bogus_requests == []
    with pytest.raises(StructuredOutputError):
        asyncio.run(model.arun(messages(), response_format=City))


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
def test_openai_format_dict_is_sent_as_is(mode: str) -> None:
    server = WireServer(responder=lambda m, r: GOOD)
    sync, async_ = openai_clients(server)
    model = OpenAICompatibleModel("m", client=sync, async_client=async_)
    reply = call(model, mode, messages(), response_format={"type": "json_object"})
    assert isinstance(reply, ChatCompletion) and not isinstance(reply, ParsedChatCompletion)
    assert server.requests[-1]["response_format"] == {"type": "json_object"}
    assert json.loads(reply.choices[0].message.content) == json.loads(GOOD)


def test_parse_errors_are_openai_free_for_callers() -> None:
    """A structured failure is our typed error, not an SDK exception leaking through."""
    server = WireServer(responder=lambda m, r: "nope")
    sync, async_ = openai_clients(server)
    model = OpenAICompatibleModel("m", client=sync, async_client=async_)
    with pytest.raises(StructuredOutputError) as err:
        model.run(messages(), response_format=City)
    assert not isinstance(err.value, openai.OpenAIError)
