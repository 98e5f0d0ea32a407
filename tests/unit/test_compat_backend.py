"""`compat.OpenAICompatibleModel`: construction, clients, sync/async, timeouts, retries, tools, streams.

Everything runs offline: the real openai SDK talks to `WireServer` through an
in-process httpx2 transport, `FakeArealOpenAI` stands in for AReaL's client,
and `WireDuck` is a hand-written duck-typed client. The class under test is
`compat.openai_compatible.OpenAICompatibleModel`, which `compat` exports when
camel is not installed; its CAMEL subclass is tested in tests/peers/camel.
"""

from __future__ import annotations

import asyncio
import copy
import inspect
import threading
from enum import Enum
from typing import Any

import httpx2
import openai
import pytest
from openai import AsyncOpenAI, AsyncStream, OpenAI, Stream
from openai.types.chat import ChatCompletion, ChatCompletionChunk

from compat import (
    BaseModelBackend,
    MessageFormatError,
    ModelCallError,
    ModelTimeoutError,
    OpenAITokenCounter,
)
from compat.openai_compatible import OpenAICompatibleModel
from tests.fakes import (
    API_KEY,
    DuckHTTPError,
    FakeArealOpenAI,
    WireDuck,
    WireServer,
    openai_clients,
)

MESSAGES = [{"role": "system", "content": "be brief"}, {"role": "user", "content": "hi"}]
BASE = "http://wire.test/v1"
TOOL_A = {
    "type": "function",
    "function": {"name": "add", "description": "add", "parameters": {"type": "object", "properties": {}}},
}
TOOL_B = {
    "type": "function",
    "function": {"name": "mul", "description": "mul", "parameters": {"type": "object", "properties": {}}},
}


pytestmark = pytest.mark.usefixtures("clean_env")


def text_of(reply: Any) -> str:
    if isinstance(reply, dict):
        return str(reply["choices"][0]["message"]["content"])
    return str(reply.choices[0].message.content)


def chunks_text(chunks: list[Any]) -> str:
    return "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)


def built_model(server: WireServer, *args: Any, async_http: bool = False, **kwargs: Any) -> OpenAICompatibleModel:
    """A model that builds its own SDK clients; one of them talks to `server`."""
    transport = httpx2.MockTransport(server)
    http = httpx2.AsyncClient(transport=transport) if async_http else httpx2.Client(transport=transport)
    kwargs.setdefault("api_key", API_KEY)
    kwargs.setdefault("url", BASE)
    return OpenAICompatibleModel("test-model", *args, http_client=http, **kwargs)


# --- construction -------------------------------------------------------------------


def test_camel_constructor_signature_order() -> None:
    params = list(inspect.signature(OpenAICompatibleModel.__init__).parameters)
    assert params[:10] == [
        "self", "model_type", "model_config_dict", "api_key", "url", "token_counter",
        "timeout", "max_retries", "client", "async_client",
    ]
    assert params[-1] == "kwargs"
    assert issubclass(OpenAICompatibleModel, BaseModelBackend)


def test_camel_call_site_positional_args_unchanged() -> None:
    server = WireServer()
    counter = OpenAITokenCounter(encoding="cl100k_base")
    config = {"temperature": 0.25, "max_tokens": 64}
    model = OpenAICompatibleModel(
        "camel-model", config, "camel-key", BASE, counter, 42, 1,
        http_client=httpx2.Client(transport=httpx2.MockTransport(server)),
    )
    assert model.token_counter is counter
    assert model._timeout == 42.0 and model._max_retries == 1
    assert model._client.timeout == 42.0 and model._client.max_retries == 1
    reply = model.run(MESSAGES)
    assert isinstance(reply, ChatCompletion)
    assert text_of(reply) == "ok 2"
    body = server.requests[-1]
    assert body["model"] == "camel-model"
    assert body["temperature"] == 0.25 and body["max_tokens"] == 64
    assert body["messages"] == MESSAGES
    assert server.headers[-1]["authorization"] == "Bearer camel-key"
    assert server.headers[-1]["host"] == "wire.test"


def test_camel_positional_custom_client() -> None:
    server = WireServer()
    duck = WireDuck(server)
    model = OpenAICompatibleModel("m", None, None, None, None, None, 3, duck)
    assert model._client is duck and model._async_client is None
    assert text_of(model.run(MESSAGES)) == "ok 2"


def test_enum_model_type_sends_its_value() -> None:
    class ModelType(Enum):
        QWEN = "qwen-7b"

    server = WireServer()
    model = OpenAICompatibleModel(ModelType.QWEN, client=WireDuck(server))
    model.run(MESSAGES)
    assert server.requests[-1]["model"] == "qwen-7b"
    assert model.model_name == "qwen-7b"


def test_model_config_dict_is_copied() -> None:
    server = WireServer()
    config: dict[str, Any] = {"temperature": 0.5}
    model = OpenAICompatibleModel("m", config, client=WireDuck(server))
    config["temperature"] = 1.5
    config["stop"] = ["x"]
    model.run(MESSAGES)
    assert server.requests[-1]["temperature"] == 0.5
    assert "stop" not in server.requests[-1]


def test_negative_max_retries_rejected() -> None:
    with pytest.raises(ValueError, match="max_retries"):
        OpenAICompatibleModel("m", client=WireDuck(WireServer()), max_retries=-1)


def test_properties_defaults_and_config() -> None:
    model = OpenAICompatibleModel("m", client=WireDuck(WireServer()))
    counter = model.token_counter
    assert isinstance(counter, OpenAITokenCounter)
    assert counter.model == "gpt-4o-mini"
    assert counter.encoding_name == "o200k_base"
    assert model.token_counter is counter  # built once
    assert model.stream is False
    model2 = OpenAICompatibleModel("m", {"stream": True, "max_tokens": 512}, client=WireDuck(WireServer()))
    assert model2.stream is True


def test_token_limit_is_the_context_window_not_max_tokens() -> None:
    """CAMEL 0.2.90 (base_model.py `token_limit`, PR 3604): the model's context
    window, 999_999_999 for a model it does not know. ChatAgent truncates tool
    output to 90 % of it, so `max_tokens` there cut tool results to a few tokens."""
    model = OpenAICompatibleModel("m", {"max_tokens": 4}, client=WireDuck(WireServer()))
    assert model.token_limit == 999_999_999

    class KnownModel(str, Enum):  # what CAMEL's ModelType carries
        GPT = "gpt-x"

        @property
        def token_limit(self) -> int:
            return 128_000

    model = OpenAICompatibleModel(KnownModel.GPT, {"max_tokens": 4}, client=WireDuck(WireServer()))
    assert model.token_limit == 128_000


def test_count_tokens_from_messages_uses_given_counter() -> None:
    counter = OpenAITokenCounter(encoding="cl100k_base")
    model = OpenAICompatibleModel("m", token_counter=counter, client=WireDuck(WireServer()))
    assert model.count_tokens_from_messages(MESSAGES) == counter.count_tokens_from_messages(MESSAGES)
    assert model.count_tokens_from_messages(MESSAGES) > 6
    with pytest.raises(MessageFormatError):
        model.count_tokens_from_messages([{"content": "no role"}])


# --- no default client when a custom one is given -----------------------------------------


def test_without_custom_client_a_key_is_required() -> None:
    """The contrast for the tests below: building the default SDK client needs a key."""
    with pytest.raises(openai.OpenAIError):
        OpenAICompatibleModel("m")


def test_only_async_client_builds_no_sync_client_and_needs_no_key() -> None:
    server = WireServer()
    _, async_ = openai_clients(server)
    model = OpenAICompatibleModel("m", async_client=async_)
    assert model._client is None
    assert model._async_client is async_
    assert text_of(model.run(MESSAGES)) == "ok 2"
    assert text_of(asyncio.run(model.arun(MESSAGES))) == "ok 2"
    assert len(server.requests) == 2


def test_only_sync_client_builds_no_async_client_and_needs_no_key() -> None:
    server = WireServer()
    sync, _ = openai_clients(server)
    model = OpenAICompatibleModel("m", client=sync)
    assert model._async_client is None
    assert model._client is sync
    assert text_of(model.run(MESSAGES)) == "ok 2"
    assert text_of(asyncio.run(model.arun(MESSAGES))) == "ok 2"
    assert len(server.requests) == 2


def test_client_kwargs_ignored_with_custom_client() -> None:
    server = WireServer()
    model = OpenAICompatibleModel("m", client=WireDuck(server), default_headers={"X-A": "1"})
    assert model._async_client is None
    assert text_of(model.run(MESSAGES)) == "ok 2"


def test_fake_areal_client_serves_run_and_arun() -> None:
    fake = FakeArealOpenAI(responder=lambda msgs, kw: f"areal {len(msgs)}")
    model = OpenAICompatibleModel("m", async_client=fake)
    assert model._client is None
    first = model.run(MESSAGES)
    second = asyncio.run(model.arun(MESSAGES))
    assert text_of(first) == text_of(second) == "areal 2"
    assert fake.calls == 2
    assert set(fake.cache) == {first.id, second.id}
    assert fake.bogus_requests == []


def test_sync_run_inside_running_loop_over_async_only_clients() -> None:
    server = WireServer()
    _, async_ = openai_clients(server)
    fake = FakeArealOpenAI()
    sdk_model = OpenAICompatibleModel("m", async_client=async_)
    fake_model = OpenAICompatibleModel("m", async_client=fake)

    async def scenario() -> list[str]:
        asyncio.get_running_loop()  # we are inside a running loop
        out = [text_of(sdk_model.run(MESSAGES)), text_of(fake_model.run(MESSAGES))]
        # and the async path still works in this loop afterwards
        out.append(text_of(await sdk_model.arun(MESSAGES)))
        out.append(text_of(await fake_model.arun(MESSAGES)))
        return out

    assert asyncio.run(scenario()) == ["ok 2"] * 4
    assert len(server.requests) == 2 and fake.calls == 2


class _Obj:
    pass


class SlowSyncDuck:
    """A sync-only client whose call finishes only once another coroutine has run."""

    def __init__(self) -> None:
        self.started = threading.Event()
        self.release = threading.Event()
        self.chat = _Obj()
        self.chat.completions = self  # type: ignore[attr-defined]

    def create(self, **kwargs: Any) -> ChatCompletion:
        self.started.set()
        if not self.release.wait(5):
            raise RuntimeError("the event loop was blocked: nobody released the call")
        return ChatCompletion.model_validate({
            "id": "c1", "object": "chat.completion", "created": 1, "model": kwargs["model"],
            "choices": [{"index": 0, "finish_reason": "stop",
                         "message": {"role": "assistant", "content": "slow ok"}}],
        })


class BarrierDuck:
    """A sync-only client whose calls return only once `parties` of them are in flight."""

    def __init__(self, parties: int) -> None:
        self.barrier = threading.Barrier(parties, timeout=10)
        self.chat = self
        self.completions = self

    def create(self, **kwargs: Any) -> ChatCompletion:
        self.barrier.wait()  # BrokenBarrierError if the calls were not all running at once
        return ChatCompletion.model_validate({
            "id": "c1", "object": "chat.completion", "created": 1, "model": kwargs["model"],
            "choices": [{"index": 0, "finish_reason": "stop",
                         "message": {"role": "assistant", "content": "together"}}],
        })


def test_arun_over_a_sync_only_client_is_not_throttled_to_the_default_thread_pool() -> None:
    """asyncio's default executor has min(32, cpus + 4) threads (6 on 2 cores): 16
    concurrent `arun` calls over a sync client must all be in flight at once."""
    model = OpenAICompatibleModel("m", client=BarrierDuck(16), max_retries=0)

    async def scenario() -> list[Any]:
        return await asyncio.gather(*(model.arun(MESSAGES) for _ in range(16)))

    assert [text_of(r) for r in asyncio.run(scenario())] == ["together"] * 16


def test_arun_over_sync_only_client_does_not_block_loop() -> None:
    duck = SlowSyncDuck()
    model = OpenAICompatibleModel("m", client=duck)
    ticks: list[int] = []

    async def other() -> None:
        # Runs only if the loop is free while the sync call is in progress.
        while not duck.started.is_set():
            await asyncio.sleep(0.001)
        for i in range(3):
            ticks.append(i)
            await asyncio.sleep(0)
        duck.release.set()

    async def scenario() -> Any:
        reply, _ = await asyncio.gather(model.arun(MESSAGES), other())
        return reply

    reply = asyncio.run(scenario())
    assert text_of(reply) == "slow ok"
    assert ticks == [0, 1, 2]


# --- duck-typed clients ----------------------------------------------------------------


def test_duck_client_returning_dict_serves_run_and_arun() -> None:
    server = WireServer()
    duck = WireDuck(server)
    model = OpenAICompatibleModel("m", {"temperature": 0.0}, client=duck)
    reply = model.run(MESSAGES)
    assert isinstance(reply, dict) and text_of(reply) == "ok 2"
    areply = asyncio.run(model.arun(MESSAGES))
    assert isinstance(areply, dict) and text_of(areply) == "ok 2"
    assert duck.calls[-1] == {"temperature": 0.0, "messages": MESSAGES, "model": "m"}


def test_duck_client_returning_chat_completion() -> None:
    class Duck:
        def __init__(self) -> None:
            self.chat = self
            self.completions = self

        def create(self, **kwargs: Any) -> ChatCompletion:
            return ChatCompletion.model_validate({
                "id": "d", "object": "chat.completion", "created": 1, "model": "m",
                "choices": [{"index": 0, "finish_reason": "stop",
                             "message": {"role": "assistant", "content": f"n={len(kwargs['messages'])}"}}],
            })

    model = OpenAICompatibleModel("m", client=Duck())
    assert text_of(model.run(MESSAGES)) == "n=2"
    assert text_of(asyncio.run(model.arun(MESSAGES))) == "n=2"


def test_async_duck_passed_as_client_is_awaited() -> None:
    class AsyncDuck:
        def __init__(self) -> None:
            self.chat = self
            self.completions = self

        async def create(self, **kwargs: Any) -> dict[str, Any]:
            await asyncio.sleep(0)
            return {"choices": [{"message": {"role": "assistant", "content": "async duck"}}]}

    model = OpenAICompatibleModel("m", client=AsyncDuck())
    assert text_of(model.run(MESSAGES)) == "async duck"
    assert text_of(asyncio.run(model.arun(MESSAGES))) == "async duck"


# --- environment fallbacks and client kwargs --------------------------------------------


def test_env_key_and_url_fallbacks(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("OPENAI_COMPATIBILITY_API_KEY", "env-key-123")
    monkeypatch.setenv("OPENAI_COMPATIBILITY_API_BASE_URL", "http://env.test/v9")
    server = WireServer()
    model = OpenAICompatibleModel(
        "m", http_client=httpx2.Client(transport=httpx2.MockTransport(server))
    )
    assert model._api_key == "env-key-123"
    assert model._url == "http://env.test/v9"
    model.run(MESSAGES)
    assert server.headers[-1]["authorization"] == "Bearer env-key-123"
    assert server.headers[-1]["host"] == "env.test"


def test_explicit_key_and_url_beat_env(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("OPENAI_COMPATIBILITY_API_KEY", "env-key")
    monkeypatch.setenv("OPENAI_COMPATIBILITY_API_BASE_URL", "http://env.test/v9")
    server = WireServer()
    model = built_model(server, api_key="explicit-key", url=BASE)
    model.run(MESSAGES)
    assert server.headers[-1]["authorization"] == "Bearer explicit-key"
    assert server.headers[-1]["host"] == "wire.test"


def test_timeout_default_env_and_explicit_zero(monkeypatch: pytest.MonkeyPatch) -> None:
    server = WireServer()
    model = built_model(server)
    assert model._timeout == 180.0
    assert model._client.timeout == 180.0 and model._async_client.timeout == 180.0

    monkeypatch.setenv("MODEL_TIMEOUT", "7.5")
    model = built_model(server)
    assert model._timeout == 7.5 and model._client.timeout == 7.5

    zero = built_model(server, timeout=0)
    assert zero._timeout == 0.0
    assert zero._client.timeout == 0.0 and zero._async_client.timeout == 0.0

    explicit = built_model(server, timeout=3)
    assert explicit._timeout == 3.0


def test_kwargs_reach_built_sync_client() -> None:
    server = WireServer()
    model = built_model(server, default_headers={"X-Trace-Id": "trace-42"})
    assert text_of(model.run(MESSAGES)) == "ok 2"
    headers = server.headers[-1]
    assert headers["x-trace-id"] == "trace-42"
    assert headers["authorization"] == f"Bearer {API_KEY}"
    assert isinstance(model._client, OpenAI) and isinstance(model._async_client, AsyncOpenAI)


def test_async_http_client_goes_to_built_async_client() -> None:
    server = WireServer()
    model = built_model(server, async_http=True, default_headers={"X-Trace-Id": "async-7"})
    assert text_of(asyncio.run(model.arun(MESSAGES))) == "ok 2"
    assert server.headers[-1]["x-trace-id"] == "async-7"
    assert server.headers[-1]["authorization"] == f"Bearer {API_KEY}"


# --- every public and protected method, sync and async, over the SDK ----------------------


@pytest.fixture
def sdk_model() -> tuple[OpenAICompatibleModel, WireServer]:
    server = WireServer()
    sync, async_ = openai_clients(server)
    return OpenAICompatibleModel("m", {"tools": [TOOL_A]}, client=sync, async_client=async_), server


def test_run_and_private_methods_sync(sdk_model: tuple[OpenAICompatibleModel, WireServer]) -> None:
    model, server = sdk_model
    for reply in (
        model.run(MESSAGES),
        model._run(MESSAGES),
        model._request_chat_completion(MESSAGES),
    ):
        assert isinstance(reply, ChatCompletion) and text_of(reply) == "ok 2"
    assert len(server.requests) == 3
    assert all(r["tools"] == [TOOL_A] for r in server.requests)
    model._request_chat_completion(MESSAGES, [TOOL_B])
    assert server.requests[-1]["tools"] == [TOOL_B]


def test_arun_and_private_methods_async(sdk_model: tuple[OpenAICompatibleModel, WireServer]) -> None:
    model, server = sdk_model

    async def scenario() -> list[Any]:
        return [
            await model.arun(MESSAGES),
            await model._arun(MESSAGES),
            await model._arequest_chat_completion(MESSAGES),
            await model._arequest_chat_completion(MESSAGES, [TOOL_B]),
        ]

    replies = asyncio.run(scenario())
    assert all(isinstance(r, ChatCompletion) and text_of(r) == "ok 2" for r in replies)
    assert [r["tools"] for r in server.requests] == [[TOOL_A], [TOOL_A], [TOOL_A], [TOOL_B]]


# --- tools -------------------------------------------------------------------------------


@pytest.mark.parametrize("mode", ["sync", "async"])
def test_tools_none_empty_and_override(mode: str) -> None:
    server = WireServer()
    sync, async_ = openai_clients(server)
    config = {"tools": [TOOL_A], "tool_choice": "auto"}
    snapshot = copy.deepcopy(config)
    model = OpenAICompatibleModel("m", config, client=sync, async_client=async_)

    def call(tools: Any) -> Any:
        if mode == "sync":
            return model.run(MESSAGES, tools=tools)
        return asyncio.run(model.arun(MESSAGES, tools=tools))

    call(None)
    assert server.requests[-1]["tools"] == [TOOL_A]
    assert server.requests[-1]["tool_choice"] == "auto"
    call([])  # CAMEL's contract: an empty list is "no override", the config's tools stay
    assert server.requests[-1]["tools"] == [TOOL_A]
    assert server.requests[-1]["tool_choice"] == "auto"
    call([TOOL_B])
    assert server.requests[-1]["tools"] == [TOOL_B]
    assert model.model_config_dict == snapshot == config


@pytest.mark.parametrize("mode", ["sync", "async"])
def test_parallel_tool_calls_only_sent_with_tools(mode: str) -> None:
    """As CAMEL's `_prepare_request_config` (base_model.py L320-348, v0.2.90):
    OpenAI rejects `parallel_tool_calls` without tools, so it is dropped when the
    request resolves to no tools, and kept when it has some."""
    server = WireServer()
    sync, async_ = openai_clients(server)
    with_tools = {"tools": [TOOL_A], "tool_choice": "auto", "parallel_tool_calls": False}
    cases: list[tuple[dict[str, Any], Any, bool]] = [
        ({"parallel_tool_calls": False}, None, False),  # no tools anywhere
        ({"parallel_tool_calls": False}, [TOOL_B], True),  # tools given
        (with_tools, None, True),  # the config's tools
        (with_tools, [], False),  # [] resolves to none: dropped, the config's tools still sent
    ]
    for config, tools, kept in cases:
        model = OpenAICompatibleModel("m", config, client=sync, async_client=async_)
        if mode == "sync":
            model.run(MESSAGES, tools=tools)
        else:
            asyncio.run(model.arun(MESSAGES, tools=tools))
        body = server.requests[-1]
        assert ("parallel_tool_calls" in body) is kept, (config, tools)
        assert model.model_config_dict == config


def test_request_kwargs_start_with_messages_and_model() -> None:
    """Duck-typed clients see kwargs in CAMEL's order: messages, model, then the config."""
    server = WireServer()
    duck = WireDuck(server)
    model = OpenAICompatibleModel("m", {"temperature": 0.5, "seed": 3}, client=duck)
    model.run(MESSAGES)
    assert list(duck.calls[-1]) == ["messages", "model", "temperature", "seed"]


# --- timeouts ------------------------------------------------------------------------------


@pytest.mark.parametrize("max_retries", [0, 1])
def test_hung_async_client_times_out_from_run_and_arun(max_retries: int) -> None:
    fake = FakeArealOpenAI()
    fake.hang_s = 30.0
    model = OpenAICompatibleModel("m", async_client=fake, timeout=0.1, max_retries=max_retries)

    with pytest.raises(ModelTimeoutError) as sync_err:
        model.run(MESSAGES)
    assert isinstance(sync_err.value, ModelCallError) and isinstance(sync_err.value, TimeoutError)
    assert sync_err.value.attempts == max_retries + 1
    assert fake.calls == max_retries + 1

    with pytest.raises(ModelTimeoutError) as async_err:
        asyncio.run(model.arun(MESSAGES))
    assert async_err.value.attempts == max_retries + 1
    assert fake.calls == 2 * (max_retries + 1)


def test_hung_sync_client_times_out_from_arun() -> None:
    duck = SlowSyncDuck()  # released only after the timeout fired
    model = OpenAICompatibleModel("m", client=duck, timeout=0.1, max_retries=0)

    async def scenario() -> BaseException | None:
        try:
            await model.arun(MESSAGES)
        except ModelTimeoutError as exc:
            return exc
        finally:
            duck.release.set()  # lets the worker thread end, so asyncio.run exits at once
        return None

    err = asyncio.run(scenario())
    assert isinstance(err, ModelTimeoutError)
    assert duck.started.is_set()


@pytest.mark.parametrize("mode", ["sync", "async"])
def test_built_client_sdk_timeout_is_model_timeout_error(mode: str) -> None:
    def slow(request: httpx2.Request) -> httpx2.Response:
        raise httpx2.ReadTimeout("read timed out", request=request)

    transport = httpx2.MockTransport(slow)
    http = httpx2.Client(transport=transport) if mode == "sync" else httpx2.AsyncClient(transport=transport)
    model = OpenAICompatibleModel("m", api_key="k", url=BASE, max_retries=0, http_client=http)
    with pytest.raises(ModelTimeoutError) as err:
        if mode == "sync":
            model.run(MESSAGES)
        else:
            asyncio.run(model.arun(MESSAGES))
    assert type(err.value.__cause__).__name__ == "APITimeoutError"


# --- retries and permanent failures ------------------------------------------------------


def test_custom_duck_client_retried_then_succeeds_sync_and_async() -> None:
    server = WireServer(fail_statuses=[500, 500])
    model = OpenAICompatibleModel("m", client=WireDuck(server), max_retries=2)
    assert text_of(model.run(MESSAGES)) == "ok 2"
    assert len(server.requests) == 3
    server.fail_statuses = [503, 429]
    assert text_of(asyncio.run(model.arun(MESSAGES))) == "ok 2"
    assert len(server.requests) == 6


def test_custom_sdk_client_gets_our_retries() -> None:
    server = WireServer(fail_statuses=[500, 500])
    sync, async_ = openai_clients(server, max_retries=0)
    model = OpenAICompatibleModel("m", client=sync, async_client=async_, max_retries=2)
    assert text_of(model.run(MESSAGES)) == "ok 2"
    assert len(server.requests) == 3
    server.fail_statuses = [500, 500]
    assert text_of(asyncio.run(model.arun(MESSAGES))) == "ok 2"
    assert len(server.requests) == 6


def test_built_clients_retry_in_the_sdk() -> None:
    server = WireServer(fail_statuses=[500, 500])
    model = built_model(server, max_retries=2)
    assert model._client.max_retries == 2
    assert text_of(model.run(MESSAGES)) == "ok 2"
    assert len(server.requests) == 3

    server = WireServer(fail_statuses=[500, 500])
    amodel = built_model(server, async_http=True, max_retries=2)
    assert text_of(asyncio.run(amodel.arun(MESSAGES))) == "ok 2"
    assert len(server.requests) == 3


@pytest.mark.parametrize("mode", ["sync", "async"])
def test_permanent_failure_custom_client(mode: str) -> None:
    server = WireServer(fail_statuses=[500] * 10)
    model = OpenAICompatibleModel("flaky-model", client=WireDuck(server), max_retries=2)
    with pytest.raises(ModelCallError) as err:
        if mode == "sync":
            model.run(MESSAGES)
        else:
            asyncio.run(model.arun(MESSAGES))
    assert not isinstance(err.value, ModelTimeoutError)
    assert err.value.attempts == 3
    assert err.value.status_code == 500
    assert len(server.requests) == 3
    assert "flaky-model" in str(err.value) and "500" in str(err.value)
    assert isinstance(err.value.__cause__, DuckHTTPError)


def test_permanent_failure_built_client() -> None:
    server = WireServer(fail_statuses=[500] * 10)
    model = built_model(server, max_retries=1)
    with pytest.raises(ModelCallError) as err:
        model.run(MESSAGES)
    assert err.value.status_code == 500
    assert "InternalServerError" in str(err.value)
    assert len(server.requests) == 2  # the SDK's own retry


@pytest.mark.parametrize("mode", ["sync", "async"])
def test_non_transient_error_not_retried(mode: str) -> None:
    server = WireServer(fail_statuses=[400, 400, 400])
    model = OpenAICompatibleModel("m", client=WireDuck(server), max_retries=2)
    with pytest.raises(ModelCallError) as err:
        if mode == "sync":
            model.run(MESSAGES)
        else:
            asyncio.run(model.arun(MESSAGES))
    assert err.value.status_code == 400
    assert err.value.attempts == 1
    assert len(server.requests) == 1
    assert "400" in str(err.value)


# --- streaming -----------------------------------------------------------------------------


def test_stream_sdk_sync_returns_stream_as_is() -> None:
    server = WireServer(responder=lambda m, r: "hello streaming world")
    sync, async_ = openai_clients(server)
    model = OpenAICompatibleModel("m", {"stream": True}, client=sync, async_client=async_)
    assert model.stream is True
    stream = model.run(MESSAGES)
    assert isinstance(stream, Stream)
    chunks = list(stream)
    assert all(isinstance(c, ChatCompletionChunk) for c in chunks)
    assert len(chunks) > 2
    assert chunks_text(chunks) == "hello streaming world"
    assert server.requests[-1]["stream"] is True


def test_stream_sdk_async_returns_async_stream_as_is() -> None:
    server = WireServer(responder=lambda m, r: "async streaming text")
    sync, async_ = openai_clients(server)
    model = OpenAICompatibleModel("m", {"stream": True}, client=sync, async_client=async_)

    async def scenario() -> tuple[Any, list[Any]]:
        stream = await model.arun(MESSAGES)
        return stream, [c async for c in stream]

    stream, chunks = asyncio.run(scenario())
    assert isinstance(stream, AsyncStream)
    assert chunks_text(chunks) == "async streaming text"


def test_stream_fake_areal_async_generator_returned_as_is() -> None:
    fake = FakeArealOpenAI(responder=lambda m, k: "simulated stream reply")
    model = OpenAICompatibleModel("m", {"stream": True}, async_client=fake)

    async def scenario() -> tuple[Any, list[Any]]:
        stream = await model.arun(MESSAGES)
        return stream, [c async for c in stream]

    stream, chunks = asyncio.run(scenario())
    assert inspect.isasyncgen(stream)
    assert chunks_text(chunks) == "simulated stream reply"
    assert chunks[-1].choices[0].finish_reason == "stop"


@pytest.mark.parametrize("which", ["fake", "sdk"])
def test_sync_run_over_async_only_streaming_client_yields_chunks(which: str) -> None:
    server = WireServer(responder=lambda m, r: "bridged chunks here")
    if which == "fake":
        client: Any = FakeArealOpenAI(responder=lambda m, k: "bridged chunks here")
    else:
        client = openai_clients(server)[1]
    model = OpenAICompatibleModel("m", {"stream": True}, async_client=client)
    stream = model.run(MESSAGES)
    assert hasattr(stream, "__next__") and not hasattr(stream, "__aiter__")
    chunks = list(stream)
    assert all(isinstance(c, ChatCompletionChunk) for c in chunks)
    assert chunks_text(chunks) == "bridged chunks here"


def test_async_run_over_sync_only_streaming_client_yields_chunks() -> None:
    server = WireServer(responder=lambda m, r: "threaded chunks")
    sync, _ = openai_clients(server)
    model = OpenAICompatibleModel("m", {"stream": True}, client=sync)

    async def scenario() -> tuple[Any, list[Any]]:
        stream = await model.arun(MESSAGES)
        return stream, [c async for c in stream]

    stream, chunks = asyncio.run(scenario())
    assert hasattr(stream, "__aiter__")
    assert chunks_text(chunks) == "threaded chunks"


def test_stream_sync_inside_running_loop() -> None:
    fake = FakeArealOpenAI(responder=lambda m, k: "in loop stream")
    model = OpenAICompatibleModel("m", {"stream": True}, async_client=fake)

    async def scenario() -> str:
        return chunks_text(list(model.run(MESSAGES)))

    assert asyncio.run(scenario()) == "in loop stream"


# --- bad messages: rejected before any request ---------------------------------------------


BAD_MESSAGES = [
    pytest.param("hello", id="str"),
    pytest.param({"role": "user", "content": "x"}, id="dict-not-list"),
    pytest.param(None, id="none"),
    pytest.param([], id="empty"),
    pytest.param(["hello"], id="item-not-dict"),
    pytest.param([{"content": "no role"}], id="missing-role"),
    pytest.param([{"role": "wizard", "content": "x"}], id="unknown-role"),
    pytest.param([{"role": "tool", "content": "42"}], id="tool-without-id"),
    pytest.param([{"role": "user"}], id="user-without-content"),
]


@pytest.mark.parametrize("messages", BAD_MESSAGES)
@pytest.mark.parametrize("mode", ["sync", "async"])
def test_bad_messages_raise_before_request(messages: Any, mode: str) -> None:
    server = WireServer()
    sync, async_ = openai_clients(server)
    model = OpenAICompatibleModel("m", client=sync, async_client=async_)
    with pytest.raises(MessageFormatError):
        if mode == "sync":
            model.run(messages)
        else:
            asyncio.run(model.arun(messages))
    assert server.requests == []


def test_message_errors_name_the_problem() -> None:
    model = OpenAICompatibleModel("m", client=WireDuck(WireServer()))
    with pytest.raises(MessageFormatError, match=r"messages\[1\].*tool_call_id"):
        model.run([{"role": "user", "content": "x"}, {"role": "tool", "content": "1"}])
    with pytest.raises(MessageFormatError, match="'wizard'"):
        model.run([{"role": "wizard", "content": "x"}])


def test_valid_message_shapes_accepted() -> None:
    server = WireServer()
    model = OpenAICompatibleModel("m", client=WireDuck(server))
    messages = [
        {"role": "developer", "content": "d"},
        {"role": "user", "content": [{"type": "text", "text": "hi"}]},
        {"role": "assistant", "tool_calls": [
            {"id": "c1", "type": "function", "function": {"name": "f", "arguments": "{}"}}]},
        {"role": "tool", "tool_call_id": "c1", "content": "1"},
    ]
    model.run(messages)
    assert server.requests[-1]["messages"] == messages


def test_without_camel_compat_exports_the_plain_class_and_imports_no_camel() -> None:
    import importlib.util
    import subprocess
    import sys

    if importlib.util.find_spec("camel") is not None:
        pytest.skip("camel is installed: tests/peers/camel covers compat's export there")
    code = (
        "import sys, compat; assert 'camel' not in sys.modules; "
        "import compat.openai_compatible as oc; assert compat.OpenAICompatibleModel is oc.OpenAICompatibleModel"
    )
    subprocess.run([sys.executable, "-c", code], check=True)
