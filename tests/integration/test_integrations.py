"""The three integration examples, run for real: CAMEL, AReaL, rLLM.

- CAMEL (`examples/camel_agent.py`): CAMEL's own `ChatAgent` and
  `OpenAICompatibleModel` on recording clients, against the embedded server
  and against a scripted vLLM-format server that forces a tool call. Skipped
  when camel-ai is not installed (`pip install -e ".[camel]"`).
- AReaL (`examples/areal_workflow.py`): the workflow on the ArealOpenAI-shaped
  fake; ids, logprobs and versions must be the fake's interactions exactly.
- rLLM (`examples/rllm_episodes.py`): exported dicts against the field lists
  of interop.md §3, ids against the embedded server's chat template.
"""

from __future__ import annotations

import asyncio
import itertools
import json
import uuid
from typing import Any

import httpx2
import numpy as np
import pytest
from openai import AsyncOpenAI, OpenAI

from examples import arithmetic
from rollout import Episode, EpisodeStatus, Recorder, TokenSource, assemble
from rollout.embedded import END_ID, ChatTemplate, EmbeddedServer
from tests.fakes import ENC, FakeArealOpenAI

# --- shared -------------------------------------------------------------------------


def check_exact_vllm_call(call: Any, template: ChatTemplate) -> None:
    """A call recorded from the embedded server: prompt ids are the server's own
    rendering of the request, completion ids decode to the reply."""
    assert call.prompt_source is TokenSource.VLLM
    expected = template.render(call.request["messages"], call.request.get("tools"))
    assert call.prompt_ids.tolist() == expected
    for choice in call.choices:
        assert choice.source is TokenSource.VLLM
        assert choice.logprobs is not None and len(choice.logprobs) == len(choice.ids)
        assert np.all(choice.logprobs <= 0.0)
        ids = [t for t in choice.ids.tolist() if t != END_ID]
        content = choice.message.get("content")
        if content is not None:  # a tool call's text is not the content
            assert ENC.decode(ids) == content


# --- CAMEL ----------------------------------------------------------------------------


@pytest.fixture(scope="module")
def camel_example() -> Any:
    pytest.importorskip("camel")
    from examples import camel_agent

    return camel_agent


def add_schema(camel_example: Any) -> dict[str, Any]:
    from camel.toolkits import FunctionTool

    schema: dict[str, Any] = FunctionTool(camel_example.add).get_openai_tool_schema()
    return schema


def test_camel_example_records_exact_tokens_and_the_tool_schema(
    camel_example: Any, server: EmbeddedServer
) -> None:
    recorder = Recorder(request_token_ids=True, request_logprobs=True, unscoped="refuse")
    client = recorder.wrap(OpenAI(base_url=server.base_url, api_key="unused", max_retries=0))
    async_client = recorder.wrap(AsyncOpenAI(base_url=server.base_url, api_key="unused", max_retries=0))
    # CAMEL's own checks see the types they expect.
    assert isinstance(client, OpenAI) and isinstance(async_client, AsyncOpenAI)
    model = camel_example.camel_model(client, async_client)
    assert model._client is client and model._async_client is async_client

    tasks = camel_example.load_tasks(3)
    episodes = asyncio.run(camel_example.collect(recorder, client, async_client, tasks))

    assert [(ep.task_id, ep.sample) for ep in episodes] == [
        (str(t["id"]), s) for t in tasks for s in (0, 1)
    ]
    assert recorder.episodes() == episodes
    template = ChatTemplate()
    schema = add_schema(camel_example)
    assert schema["function"]["name"] == "add"
    assert sorted(schema["function"]["parameters"]["properties"]) == ["a", "b"]
    for ep in episodes:
        assert ep.calls, ep.error
        assert ep.exact
        for call in ep.calls:
            check_exact_vllm_call(call, template)
            assert call.request["model"] == "tiny"
        if ep.sample == 0:  # the tool agent: every request carried the add schema
            assert all(call.request["tools"] == [schema] for call in ep.calls)
            assert ep.calls[0].request["messages"][0]["content"] == camel_example.TOOL_SYSTEM
        else:  # the chat agent: no tools, one call per turn, each turn's history from CAMEL's memory
            assert all("tools" not in call.request for call in ep.calls)
            assert len(ep.calls) == ep.metadata["turns"]
            for i, call in enumerate(ep.calls[1:], 1):
                assert call.parent == i - 1
                assert call.request["messages"][-1]["content"] == f"Wrong. {arithmetic.question(ep.task)}"
        assert ep.reward == (1.0 if arithmetic.check(ep.metadata["reply"], ep.task) else 0.0)

    summary = camel_example.summary(episodes)
    assert summary["episodes"] == 6 and summary["sources"] == ["vllm"]
    assert summary["calls_with_tool_schema"] == 3
    assert summary["calls"] == sum(len(ep.calls) for ep in episodes)
    # concat: merged turns + rows started by drift (the tiny policy's non-canonical
    # tokenizations) account for every call.
    assert summary["samples"] + summary["merged"] == summary["calls"]


class ScriptedVLLM:
    """A vLLM-format server that answers the first request with an `add` tool call
    and the request after the tool result with that result.

    Its template renders each message separately and ends an assistant turn
    with the end token the reply's ids end with, so a turn's prompt extends the
    previous prompt + reply exactly (the tool-call reply renders as its text).
    """

    def __init__(self, a: int, b: int) -> None:
        self.args = json.dumps({"a": a, "b": b})
        self.requests: list[dict[str, Any]] = []
        self.replies: list[dict[str, Any]] = []

    @staticmethod
    def render(messages: list[dict[str, Any]], tools: Any) -> list[int]:
        ids = [*ENC.encode(json.dumps(tools, sort_keys=True)), END_ID] if tools else []
        for m in messages:
            text = m.get("content") or ""
            for call in m.get("tool_calls") or []:
                text += f"CALL {call['function']['name']} {call['function']['arguments']}"
            ids += ENC.encode(f"<{m['role']}>") + ENC.encode(str(text)) + [END_ID]
        return ids + ENC.encode("<assistant>")

    def __call__(self, request: httpx2.Request) -> httpx2.Response:
        body = json.loads(request.content)
        self.requests.append(body)
        messages = body["messages"]
        if messages[-1]["role"] == "tool":
            text = str(messages[-1]["content"])
            message: dict[str, Any] = {"role": "assistant", "content": text}
            finish = "stop"
        else:
            text = f"CALL add {self.args}"
            message = {
                "role": "assistant",
                "content": None,
                "tool_calls": [{
                    "id": f"call_{len(self.requests)}", "type": "function",
                    "function": {"name": "add", "arguments": self.args},
                }],
            }
            finish = "tool_calls"
        ids = [*ENC.encode(text), END_ID]
        prompt = self.render(messages, body.get("tools"))
        reply = {
            "id": f"chatcmpl-{uuid.uuid4().hex}", "object": "chat.completion", "created": 0,
            "model": body["model"], "prompt_token_ids": prompt,
            "choices": [{
                "index": 0, "message": message, "finish_reason": finish, "token_ids": ids,
                "logprobs": {"content": [
                    {"token": ENC.decode([t]), "logprob": -(j + 1) / 8, "bytes": None, "top_logprobs": []}
                    for j, t in enumerate(ids)
                ]},
            }],
            "usage": {"prompt_tokens": len(prompt), "completion_tokens": len(ids), "total_tokens": len(prompt) + len(ids)},
        }
        self.replies.append(reply)
        return httpx2.Response(200, json=reply)


def test_camel_chat_agent_tool_call_is_recorded_and_merges(camel_example: Any) -> None:
    script = ScriptedVLLM(2, 3)
    transport = httpx2.MockTransport(script)
    recorder = Recorder(request_token_ids=True, request_logprobs=True, unscoped="refuse")
    client = recorder.wrap(OpenAI(base_url="http://scripted.test/v1", api_key="k", max_retries=0,
                                  http_client=httpx2.Client(transport=transport)))
    model = camel_example.camel_model(client, None)
    task = {"id": "add-2-3", "a": 2, "b": 3, "answer": 5}

    ep = camel_example.tool_episode(recorder, model, task, 0)

    # CAMEL ran the tool itself and answered with its result.
    assert ep.metadata["tool_calls"] == [{"name": "add", "args": {"a": 2, "b": 3}, "result": 5}]
    assert ep.metadata["reply"] == "5" and ep.reward == 1.0
    schema = add_schema(camel_example)
    assert [r.get("tools") for r in script.requests] == [[schema], [schema]]
    assert [r["return_token_ids"] for r in script.requests] == [True, True]
    # Two calls, recorded with the server's ids, logprobs and the tool schema.
    first, second = ep.calls
    assert first.request["tools"] == [schema] and second.request["tools"] == [schema]
    for call, reply in zip(ep.calls, script.replies, strict=True):
        assert call.id == reply["id"]
        assert call.prompt_ids.tolist() == reply["prompt_token_ids"]
        assert call.choices[0].ids.tolist() == reply["choices"][0]["token_ids"]
        assert call.choices[0].logprobs is not None
        assert call.choices[0].logprobs.tolist() == [
            e["logprob"] for e in reply["choices"][0]["logprobs"]["content"]
        ]
        assert call.choices[0].source is TokenSource.VLLM
    assert first.choices[0].finish_reason == "tool_calls"
    assert first.choices[0].message["tool_calls"][0]["function"] == {"name": "add", "arguments": '{"a": 2, "b": 3}'}
    tool_message = second.request["messages"][-1]
    assert tool_message["role"] == "tool" and tool_message["content"] == "5"
    assert second.parent == 0  # CAMEL re-sent the tool call unchanged: same branch

    # concat: one row; mask 1 exactly on the two sampled replies, the tool result is an observation.
    result = assemble(ep, mode="concat")
    assert len(result) == 1 and result.num_drift == 0 and result.num_merged == 1
    row = result[0]
    p1, p2 = len(first.prompt_ids), len(second.prompt_ids)
    n1, n2 = len(first.choices[0].ids), len(second.choices[0].ids)
    assert row.tokens.tolist() == second.prompt_ids.tolist() + second.choices[0].ids.tolist()
    expected_mask = np.zeros(p2 + n2, dtype=bool)
    expected_mask[p1 : p1 + n1] = True
    expected_mask[p2:] = True
    assert row.loss_mask.tolist() == expected_mask.tolist()
    assert row.prompt_len == p1 and row.reward == 1.0


def test_camel_model_run_arun_and_stream_with_wrapped_clients(
    camel_example: Any, server: EmbeddedServer
) -> None:
    from camel.types import ChatCompletion as CamelChatCompletion

    recorder = Recorder(request_token_ids=True, request_logprobs=True, unscoped="refuse")
    client = recorder.wrap(OpenAI(base_url=server.base_url, api_key="unused", max_retries=0))
    async_client = recorder.wrap(AsyncOpenAI(base_url=server.base_url, api_key="unused", max_retries=0))
    model = camel_example.camel_model(client, async_client, config={"max_tokens": 3, "seed": 7})
    schema = add_schema(camel_example)
    messages = [{"role": "user", "content": "What is 2 + 2?"}]

    with recorder.episode(task_id="run") as run_ep:
        reply = model.run(messages)
        model.run(messages, tools=[schema])
    assert isinstance(reply, CamelChatCompletion)  # what ChatAgent checks

    async def arun() -> Any:
        async with recorder.episode(task_id="arun") as ep:
            return ep, await model.arun(messages)

    arun_ep, areply = asyncio.run(arun())
    assert isinstance(areply, CamelChatCompletion)
    # Same seed, same prompt: sync and async calls sample the same tokens.
    assert areply.choices[0].message.content == reply.choices[0].message.content

    streaming = camel_example.camel_model(client, async_client, config={"max_tokens": 3, "seed": 7, "stream": True})
    with recorder.episode(task_id="stream") as stream_ep:
        stream = streaming.run(messages)
        # ChatAgent's duck-typed stream check (camel/agents/chat_agent.py).
        assert hasattr(stream, "__iter__") and hasattr(stream, "__enter__")
        text = "".join(chunk.choices[0].delta.content or "" for chunk in stream if chunk.choices)
    assert text == reply.choices[0].message.content

    template = ChatTemplate()
    calls = {ep.task_id: ep.calls for ep in (run_ep, arun_ep, stream_ep)}
    assert [len(c) for c in calls.values()] == [2, 1, 1]
    for ep_calls in calls.values():
        for call in ep_calls:
            check_exact_vllm_call(call, template)
    plain, tooled = calls["run"]
    assert "tools" not in plain.request and tooled.request["tools"] == [schema]
    assert len(tooled.prompt_ids) > len(plain.prompt_ids)  # the server rendered the tool block
    same = plain.choices[0].ids.tolist()
    assert calls["arun"][0].choices[0].ids.tolist() == same
    assert calls["stream"][0].choices[0].ids.tolist() == same


def test_stream_abandoned_after_usage_chunk_is_recorded(server: EmbeddedServer) -> None:
    """CAMEL's `_process_stream_chunks_with_accumulator` breaks out of the chunk
    loop on the usage chunk and never closes the stream (chat_agent.py L4802,
    v0.2.90). The call must be recorded, complete, at that chunk: not lost, not
    failed, not left to the episode's end as a partial record."""
    recorder = Recorder(request_token_ids=True, request_logprobs=True)
    client = recorder.wrap(OpenAI(base_url=server.base_url, api_key="unused", max_retries=0))
    with recorder.episode(task_id="usage") as ep:
        stream = client.chat.completions.create(
            model="tiny", messages=[{"role": "user", "content": "hi"}], max_tokens=3, seed=1,
            stream=True, stream_options={"include_usage": True},
        )
        text = ""
        for chunk in stream:
            if chunk.usage:
                usage = chunk.usage
                break
            text += "".join(c.delta.content or "" for c in chunk.choices)
        assert len(ep.calls) == 1  # recorded at the usage chunk, with the stream still open
    check_complete_stream_call(ep, text, usage)
    assert stream is not None  # held open to the end, as CAMEL holds it


def test_async_stream_abandoned_after_usage_chunk_is_recorded(server: EmbeddedServer) -> None:
    """The async twin (chat_agent.py L5914, v0.2.90: `break`, no `aclose()`)."""
    recorder = Recorder(request_token_ids=True, request_logprobs=True)
    client = recorder.wrap(AsyncOpenAI(base_url=server.base_url, api_key="unused", max_retries=0))

    async def scenario() -> tuple[Episode, str, Any]:
        async with recorder.episode(task_id="usage") as ep:
            stream = await client.chat.completions.create(
                model="tiny", messages=[{"role": "user", "content": "hi"}], max_tokens=3, seed=1,
                stream=True, stream_options={"include_usage": True},
            )
            text = ""
            async for chunk in stream:
                if chunk.usage:
                    usage = chunk.usage
                    break
                text += "".join(c.delta.content or "" for c in chunk.choices)
            assert len(ep.calls) == 1
        return ep, text, usage

    check_complete_stream_call(*asyncio.run(scenario()))


def check_complete_stream_call(ep: Episode, text: str, usage: Any) -> None:
    assert not ep.metadata.get("failed_calls")
    (call,) = ep.calls
    assert not any("partial" in note for note in call.notes), call.notes
    check_exact_vllm_call(call, ChatTemplate())
    ids = [t for t in call.choices[0].ids.tolist() if t != END_ID]
    assert ENC.decode(ids) == text
    assert call.usage is not None and call.usage["completion_tokens"] == usage.completion_tokens


# --- AReaL ------------------------------------------------------------------------------


class FakeEngine:
    """The bit of AReaL's inference engine the client factory reads."""

    def __init__(self, version: int) -> None:
        self.version = version

    def get_version(self) -> int:
        return self.version


def scripted_answers(*answers: str) -> Any:
    """Responder replying with `answers` in turn (by the number of user turns so far)."""

    def respond(messages: list[dict[str, Any]], request: dict[str, Any]) -> str:
        turn = sum(1 for m in messages if m["role"] == "user") - 1
        return answers[min(turn, len(answers) - 1)]

    return respond


def areal_workflow(answers: tuple[str, ...], **options: Any) -> tuple[Any, list[FakeArealOpenAI], list[Episode]]:
    from examples.areal_workflow import AgentWorkflow

    clients: list[FakeArealOpenAI] = []
    episodes: list[Episode] = []

    def make_client(engine: FakeEngine, tokenizer: Any) -> FakeArealOpenAI:
        client = FakeArealOpenAI(responder=scripted_answers(*answers), version=engine.get_version())
        clients.append(client)
        return client

    workflow = AgentWorkflow(make_client=make_client, on_episode=episodes.append, **options)
    return workflow, clients, episodes


TASK = {"id": "add-2-3", "a": 2, "b": 3, "answer": 5}


def test_areal_workflow_concat_uses_arealopenai_interactions_exactly() -> None:
    workflow, clients, episodes = areal_workflow(("7", "6", "5"))
    batch = asyncio.run(workflow.arun_episode(FakeEngine(version=3), TASK))

    assert batch is not None
    (client,) = clients
    (ep,) = episodes
    interactions = list(client.cache.values())
    assert len(interactions) == 3 and client.bogus_requests == []  # no stray HTTP
    assert ep.reward == 1.0 and ep.metadata["turns"] == 3
    for call, (cid, inter) in zip(ep.calls, client.cache.items(), strict=True):
        resp = inter.model_response
        assert resp is not None
        assert call.id == cid
        assert call.prompt_source is TokenSource.AREAL and call.choices[0].source is TokenSource.AREAL
        assert call.prompt_ids.tolist() == resp.input_tokens
        assert call.choices[0].ids.tolist() == resp.output_tokens
        assert call.choices[0].logprobs is not None
        assert call.choices[0].logprobs.tolist() == resp.output_logprobs
        assert call.choices[0].versions.to_array().tolist() == resp.output_versions == [3] * len(resp.output_tokens)
    assert interactions[-1].reward == 1.0  # the reward reached AReaL's own cache too

    # One concat row: the last interaction's input + output, sampled spans from each interaction.
    last = interactions[-1].model_response
    assert last is not None
    full = last.input_tokens + last.output_tokens
    n = len(full)
    assert batch["input_ids"].shape == (1, n) and batch["input_ids"].dtype == np.int32
    assert batch["input_ids"][0].tolist() == full
    mask = np.zeros(n, dtype=np.int32)
    logprobs = np.zeros(n, dtype=np.float32)
    versions = np.full(n, -1, dtype=np.int32)
    for inter in interactions:
        r = inter.model_response
        assert r is not None
        start, end = len(r.input_tokens), len(r.input_tokens) + len(r.output_tokens)
        assert full[:start] == r.input_tokens  # each turn extends the previous one exactly
        mask[start:end] = 1
        logprobs[start:end] = r.output_logprobs
        versions[start:end] = r.output_versions
    assert batch["loss_mask"][0].tolist() == mask.tolist()
    assert batch["logprobs"][0].tolist() == logprobs.tolist()
    assert batch["versions"][0].tolist() == versions.tolist()
    # AReaL's conventions on the prompt (interop §2): mask 0, logprobs 0.0, versions -1.
    first = interactions[0].model_response
    assert first is not None
    prompt = len(first.input_tokens)
    assert not batch["loss_mask"][0, :prompt].any()
    assert not batch["logprobs"][0, :prompt].any()
    assert (batch["versions"][0, :prompt] == -1).all()
    assert batch["attention_mask"].dtype == np.bool_ and batch["attention_mask"].all()
    assert batch["rewards"].shape == (1,) and batch["rewards"].tolist() == [1.0]


def test_areal_workflow_individual_with_discount_matches_apply_reward_discount() -> None:
    workflow, clients, episodes = areal_workflow(("7", "6", "5"), mode="individual", gamma=0.9)
    batch = asyncio.run(workflow.arun_episode(FakeEngine(version=1), TASK))

    assert batch is not None
    (client,) = clients
    interactions = [i.model_response for i in client.cache.values()]
    # AReaL: rewards 0, 0, 1 with turn_discount 0.9 become 0.81, 0.9, 1 (reverse insertion order).
    assert batch["rewards"].shape == (3,)
    np.testing.assert_allclose(batch["rewards"], [0.81, 0.9, 1.0], rtol=1e-6)
    assert [c.reward for c in episodes[0].calls] == pytest.approx([0.81, 0.9, 1.0])
    width = max(len(r.input_tokens) + len(r.output_tokens) for r in interactions if r is not None)
    assert batch["input_ids"].shape == (3, width)
    for row, resp in enumerate(interactions):
        assert resp is not None
        p, k = len(resp.input_tokens), len(resp.output_tokens)
        assert batch["input_ids"][row, : p + k].tolist() == resp.input_tokens + resp.output_tokens
        assert (batch["input_ids"][row, p + k :] == 0).all()  # padding
        assert batch["loss_mask"][row].tolist() == [0] * p + [1] * k + [0] * (width - p - k)
        assert batch["logprobs"][row, p : p + k].tolist() == pytest.approx(resp.output_logprobs)
        assert not batch["logprobs"][row, :p].any() and not batch["logprobs"][row, p + k :].any()
        assert batch["versions"][row].tolist() == [-1] * p + [1] * k + [-1] * (width - p - k)
        assert batch["attention_mask"][row].tolist() == [True] * (p + k) + [False] * (width - p - k)


def test_areal_workflow_group_runs_concurrently_and_keeps_episodes_apart() -> None:
    workflow, clients, episodes = areal_workflow(("5",), n_samples=4)
    batch = asyncio.run(workflow.arun_episode(FakeEngine(version=0), TASK))

    assert batch is not None
    assert len(clients) == 4 and sorted(ep.sample for ep in episodes) == [0, 1, 2, 3]
    assert batch["rewards"].tolist() == [1.0] * 4
    for client in clients:  # each episode holds exactly its own client's interaction
        (cid,) = client.cache
        (ep,) = [e for e in episodes if e.calls[0].id == cid]
        assert ep.calls[0].prompt_ids.tolist() == client.cache[cid].model_response.input_tokens  # type: ignore[union-attr]
    assert workflow.recorder.episodes() == []  # handed back, not accumulated


def test_areal_workflow_returns_none_when_every_episode_failed() -> None:
    async def broken(task: Any, model: Any) -> float:
        await model.arun([{"role": "user", "content": "hi"}])
        raise RuntimeError("agent bug")

    workflow, clients, episodes = areal_workflow(("1",), agent=broken, n_samples=2)
    assert asyncio.run(workflow.arun_episode(FakeEngine(version=0), TASK)) is None
    assert [ep.status for ep in episodes] == [EpisodeStatus.ERROR] * 2
    assert all(ep.error == "RuntimeError: agent bug" and len(ep.calls) == 1 for ep in episodes)
    assert all(next(iter(c.cache.values())).reward is None for c in clients)  # no reward for failures


def test_areal_workflow_on_plain_asyncopenai_uses_server_ids(server: EmbeddedServer) -> None:
    from examples.areal_workflow import arun_episode

    def make_client(engine: Any, tokenizer: Any) -> AsyncOpenAI:
        return AsyncOpenAI(base_url=server.base_url, api_key="unused", max_retries=0)

    batch = asyncio.run(arun_episode(
        None, TASK, make_client=make_client, model="tiny", mode="individual",
        sampling={"max_tokens": 3, "seed": 1},
    ))
    assert batch is not None
    n = batch["input_ids"].shape[0]
    assert 1 <= n <= arithmetic.MAX_TURNS and batch["rewards"].shape == (n,)
    template = ChatTemplate()
    first = template.render(
        [{"role": "system", "content": arithmetic.SYSTEM}, {"role": "user", "content": arithmetic.question(TASK)}]
    )
    assert batch["input_ids"][0, : len(first)].tolist() == first
    assert not batch["loss_mask"][:, : len(first)].any()
    assert (batch["versions"][batch["loss_mask"] == 1] == server.weight_version).all()
    assert (batch["logprobs"][batch["loss_mask"] == 1] < 0).all()


# --- rLLM -------------------------------------------------------------------------------

# interop.md §3 (rllm/types.py)
RLLM_EPISODE = {"id", "task", "termination_reason", "is_correct", "trajectories", "metrics", "metadata"}
RLLM_TRAJECTORY = {"uid", "name", "task", "steps", "reward", "signals", "metadata"}
RLLM_STEP = {
    "id", "input", "output", "action", "reward", "done", "metadata", "prompt_ids", "response_ids",
    "logprobs", "chat_completions", "model_response", "weight_version", "advantage", "mc_return",
}
RLLM_TERMINATION = {
    "unknown", "max_prompt_length_exceeded", "max_response_length_exceeded", "env_done",
    "max_turns_exceeded", "timeout", "error",
}


def test_rllm_episodes_match_rllm_fields() -> None:
    from examples.rllm_episodes import rllm_episodes, trajectory_groups

    episodes = rllm_episodes(limit=3, samples_per_task=2)
    json.loads(json.dumps(episodes))  # JSON-ready
    tasks = [json.loads(line) for line in arithmetic_tasks()[:3]]
    assert sorted(ep["id"] for ep in episodes) == sorted(f"{t['id']}:{s}" for t in tasks for s in (0, 1))
    template = ChatTemplate()
    for ep in episodes:
        assert set(ep) == RLLM_EPISODE
        task_id, sample = ep["id"].rsplit(":", 1)
        assert (task_id, int(sample)) == (ep["metadata"]["task_id"], ep["metadata"]["sample"])
        assert ep["task"]["id"] == task_id
        assert ep["termination_reason"] in RLLM_TERMINATION
        (traj,) = ep["trajectories"]
        assert set(traj) == RLLM_TRAJECTORY and traj["name"] == "agent"
        assert traj["reward"] in (0.0, 1.0) and ep["is_correct"] == (traj["reward"] > 0)
        steps = traj["steps"]
        assert 1 <= len(steps) <= arithmetic.MAX_TURNS
        assert [s["done"] for s in steps] == [False] * (len(steps) - 1) + [True]
        for step in steps:
            assert set(step) == RLLM_STEP
            assert len(step["logprobs"]) == len(step["response_ids"]) > 0
            assert all(lp <= 0.0 for lp in step["logprobs"])
            assert step["chat_completions"][:-1] == step["input"]
            reply = step["chat_completions"][-1]
            assert reply["role"] == "assistant" and reply == step["output"]
            assert reply["content"] == step["model_response"] == step["action"]
            # Exact ids: the server's own rendering of the input; the sampled ids decode to the reply.
            assert step["prompt_ids"] == template.render(step["input"])
            assert ENC.decode([t for t in step["response_ids"] if t != END_ID]) == step["model_response"]
            assert step["weight_version"] == 0
            assert step["metadata"]["exact"] is True and step["metadata"]["token_source"] == "vllm"
        # The multi-turn history: each step's input extends the previous step's conversation.
        for prev, step in itertools.pairwise(steps):
            assert step["input"][: len(prev["chat_completions"])] == prev["chat_completions"]
        if ep["is_correct"]:
            assert arithmetic.check(steps[-1]["model_response"], ep["task"])

    groups = trajectory_groups(episodes)
    assert sorted(g["group_id"] for g in groups) == sorted(f"{t['id']}:agent" for t in tasks)
    assert all(len(g["trajectories"]) == 2 and g["weight_version"] == 0 for g in groups)


def arithmetic_tasks() -> list[str]:
    from examples.rllm_episodes import TASKS

    return [line for line in TASKS.read_text().splitlines() if line.strip()]
