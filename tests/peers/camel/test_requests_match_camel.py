"""Same input, same requests: ours beside camel's own OpenAICompatibleModel (0.2.90).

Each case runs camel's class and ours on twin scripted servers (the real
openai SDK over an in-process transport) and compares every request body,
the number of requests and what `run` / `arun` returned. The facts these
pin (camel/models/base_model.py and openai_compatible_model.py at v0.2.90):
`<think>` stripped from the history and tool replies regrouped (the
metaclass's `preprocess_messages`), `tools=[]` meaning "no override",
`parallel_tool_calls` dropped without tools, every response_format through
`parse`, and an unparseable reply answered by one json_object retry with
camel's schema prompt. The deliberate differences are at the end.
"""

from __future__ import annotations

import asyncio
import copy
import json
from typing import Any

import pytest
from camel.models import OpenAICompatibleModel as CamelModel
from camel.types import ModelType
from pydantic import BaseModel

from compat import OpenAICompatibleModel
from tests.fakes import FakeArealOpenAI
from tests.peers.camel.scripted import Reply, ScriptedServer

pytestmark = [pytest.mark.peers, pytest.mark.usefixtures("clean_env")]


class City(BaseModel):
    name: str
    population: int


GOOD = json.dumps({"name": "Oslo", "population": 709000})
ADD = {"type": "function", "function": {
    "name": "add", "description": "Add two integers.", "strict": True,
    "parameters": {"type": "object", "properties": {"a": {"type": "integer"}, "b": {"type": "integer"}},
                   "required": ["a", "b"], "additionalProperties": False}}}
MUL = {"type": "function", "function": {"name": "mul", "parameters": {"type": "object", "properties": {}}}}
USER = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Largest city in Norway?"}]
THINKING = [
    {"role": "user", "content": "hi <think>draft</think>there"},
    {"role": "assistant", "content": "<think>plan</think>Hello."},
    {"role": "user", "content": "Again?"},
]
SPLIT_TOOL_ROUND = [  # a tool reply after the next user message: camel moves the round together
    {"role": "user", "content": "2+3?"},
    {"role": "assistant", "content": None, "tool_calls": [
        {"id": "c1", "type": "function", "function": {"name": "add", "arguments": '{"a": 2, "b": 3}'}}]},
    {"role": "user", "content": "and?"},
    {"role": "tool", "tool_call_id": "c1", "content": "5"},
]

# (id, config, messages, run kwargs, script)
CASES: list[tuple[str, dict[str, Any], list[dict[str, Any]], dict[str, Any], list[Reply]]] = [
    ("plain", {"temperature": 0.3, "max_tokens": 8, "seed": 1}, USER, {}, [Reply("Oslo")]),
    ("model-type-enum", {}, USER, {}, [Reply("Oslo")]),
    ("tools-argument", {}, USER, {"tools": [ADD]}, [Reply("Oslo")]),
    ("config-tools", {"tools": [ADD], "tool_choice": "auto"}, USER, {}, [Reply("Oslo")]),
    ("empty-tools-list", {"tools": [ADD], "tool_choice": "auto", "parallel_tool_calls": False}, USER,
     {"tools": []}, [Reply("Oslo")]),
    ("tools-override", {"tools": [ADD], "parallel_tool_calls": True}, USER, {"tools": [MUL]}, [Reply("Oslo")]),
    ("parallel-without-tools", {"parallel_tool_calls": False}, USER, {}, [Reply("Oslo")]),
    ("think-in-history", {}, THINKING, {}, [Reply("Fine.")]),
    ("tool-round-regrouped", {}, SPLIT_TOOL_ROUND, {}, [Reply("5")]),
    ("tool-call-reply", {}, USER, {"tools": [ADD]}, [Reply(tool="add", args={"a": 2, "b": 3})]),
    ("parse", {"temperature": 0.0}, USER, {"response_format": City}, [Reply(GOOD)]),
    ("parse-unparseable", {}, USER, {"response_format": City}, [Reply("Oslo, about 700k.")]),
    ("parse-400", {}, USER, {"response_format": City}, [Reply(status=400), Reply(GOOD)]),
    ("parse-with-tools", {}, USER, {"response_format": City, "tools": [ADD]}, [Reply(GOOD)]),
    ("config-format-dict", {"response_format": {"type": "json_object"}}, USER, {}, [Reply(GOOD)]),
    ("config-format-model", {"response_format": City}, USER, {}, [Reply(GOOD)]),
    ("stream", {"stream": True}, USER, {}, [Reply("Oslo is largest.")]),
    ("stream-include-usage", {"stream": True, "stream_options": {"include_usage": True}}, USER, {},
     [Reply("Oslo is largest.")]),
    ("stream-tool-call", {"stream": True}, USER, {"tools": [ADD]}, [Reply(tool="add", args={"a": 1, "b": 2})]),
    ("stream-parse", {"stream": True, "stream_options": {"include_usage": True}}, USER,
     {"response_format": City}, [Reply(GOOD)]),
]


def consume(result: Any) -> Any:
    """Read a result to its end as ChatAgent would; returns something comparable."""
    if hasattr(result, "choices"):
        message = result.choices[0].message
        return (message.content, getattr(message, "parsed", None), bool(message.tool_calls))
    if hasattr(result, "__enter__") and not hasattr(result, "__iter__"):  # a stream manager
        with result as stream:
            for _ in stream:
                pass
            final = stream.get_final_completion()
        return ("manager", final.choices[0].message.parsed)
    return ("chunks", [c.model_dump(exclude={"created"}) for c in result])


async def aconsume(result: Any) -> Any:
    if hasattr(result, "choices"):
        return consume(result)
    if hasattr(result, "__aenter__") and not hasattr(result, "__aiter__"):
        async with result as stream:
            async for _ in stream:
                pass
            final = await stream.get_final_completion()
        return ("manager", final.choices[0].message.parsed)
    return ("chunks", [c.model_dump(exclude={"created"}) async for c in result])


def run_case(model_class: Any, mode: str, config: dict[str, Any], messages: list[dict[str, Any]],
             kwargs: dict[str, Any], script: list[Reply], model_type: Any) -> tuple[Any, ...]:
    server = ScriptedServer(*script)
    sync, async_ = server.clients()
    model = model_class(model_type, copy.deepcopy(config), api_key="k", client=sync, async_client=async_)
    sent = copy.deepcopy(messages)
    if mode == "sync":
        result = model.run(sent, **kwargs)
        seen = consume(result)
    else:
        async def go() -> tuple[Any, Any]:
            result = await model.arun(sent, **kwargs)
            return result, await aconsume(result)

        result, seen = asyncio.run(go())
    assert sent == messages  # neither class mutates the caller's messages through run / arun
    assert model.model_config_dict == config
    return server.requests, type(result).__name__, seen


@pytest.mark.parametrize("mode", ["sync", "async"])
@pytest.mark.parametrize(("case", "config", "messages", "kwargs", "script"), CASES, ids=[c[0] for c in CASES])
def test_same_requests_as_camel(case: str, config: dict[str, Any], messages: list[dict[str, Any]],
                                kwargs: dict[str, Any], script: list[Reply], mode: str) -> None:
    model_type = ModelType.GPT_4O_MINI if case == "model-type-enum" else "Qwen/Qwen3-8B"
    camel = run_case(CamelModel, mode, config, messages, kwargs, script, model_type)
    ours = run_case(OpenAICompatibleModel, mode, config, messages, kwargs, script, model_type)
    camel_requests, camel_type, camel_seen = camel
    our_requests, our_type, our_seen = ours
    assert our_requests == camel_requests
    assert our_type.partition("[")[0] == camel_type.partition("[")[0]
    if case == "parse-400":
        # One improvement on the same requests: camel leaves `parsed` None on its
        # json_object retry even when the text validates (ChatAgent then parses
        # it itself); ours parses it.
        content, parsed, calls = camel_seen
        assert parsed is None and our_seen == (content, City.model_validate_json(content), calls)
    else:
        assert our_seen == camel_seen


def test_the_cases_cover_what_they_claim() -> None:
    """Guards the table above: each fact it pins shows in camel's own requests."""
    def camel_requests(case: str) -> list[dict[str, Any]]:
        _, config, messages, kwargs, script = next(c for c in CASES if c[0] == case)
        return run_case(CamelModel, "sync", config, messages, kwargs, script, "Qwen/Qwen3-8B")[0]

    (empty,) = camel_requests("empty-tools-list")
    assert empty["tools"] == [ADD] and "parallel_tool_calls" not in empty
    (think,) = camel_requests("think-in-history")
    assert [m["content"] for m in think["messages"]] == ["hi there", "Hello.", "Again?"]
    (regrouped,) = camel_requests("tool-round-regrouped")
    # the assistant's call waits for its reply, so both move after the user turn
    assert [m.get("content") for m in regrouped["messages"]] == ["2+3?", "and?", None, "5"]
    first, retry = camel_requests("parse-unparseable")
    assert first["response_format"]["type"] == "json_schema" and retry["response_format"] == {"type": "json_object"}
    assert retry["messages"][-1]["content"].startswith(USER[-1]["content"])
    assert "JSON schema" in retry["messages"][-1]["content"]
    (fmt,) = camel_requests("config-format-dict")
    assert fmt["stream"] is False


# --- where ours differs from camel's, on purpose ---------------------------------------


def test_stream_with_a_config_response_format_sends_one_request_where_camel_raises() -> None:
    """camel 0.2.90 passes response_format twice to `stream(...)` and raises
    TypeError before sending; ours streams it once."""
    config = {"stream": True, "response_format": City}
    with pytest.raises(TypeError, match="response_format"):
        run_case(CamelModel, "sync", config, USER, {}, [Reply(GOOD)], "m")
    requests, _, seen = run_case(OpenAICompatibleModel, "sync", config, USER, {}, [Reply(GOOD)], "m")
    assert len(requests) == 1 and requests[0]["response_format"]["json_schema"]["name"] == "City"
    assert seen == ("manager", City(name="Oslo", population=709000))


@pytest.mark.parametrize("mode", ["sync", "async"])
def test_rl_client_structured_output_never_reaches_the_placeholder_url(mode: str) -> None:
    """An AReaL-style client (create overridden, the SDK's parse inherited):
    camel's class calls that parse, which goes to the placeholder URL; ours
    uses the validated fallback through the client's own create."""
    def go(model_class: Any) -> tuple[Any, FakeArealOpenAI]:
        fake = FakeArealOpenAI(responder=lambda m, r: GOOD)
        model = model_class("m", api_key="k", client=None, async_client=fake)
        if mode == "sync":
            return model.run(copy.deepcopy(USER), response_format=City), fake
        return asyncio.run(model.arun(copy.deepcopy(USER), response_format=City)), fake

    if mode == "async":
        with pytest.raises(Exception, match="Connection error"):
            go(CamelModel)
    reply, fake = go(OpenAICompatibleModel)
    assert reply.choices[0].message.parsed == City(name="Oslo", population=709000)
    assert fake.bogus_requests == [] and fake.calls == 1
