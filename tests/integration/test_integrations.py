"""The three integration examples, run for real: CAMEL, AReaL, rLLM.

- CAMEL (`examples/camel_agent.py`): CAMEL's own `ChatAgent` and
  `OpenAICompatibleModel` on recording clients, against the embedded server
  and against a scripted vLLM-format server that forces a tool call. Skipped
  when camel-ai is not installed (`pip install -e ".[camel]"`).
- AReaL (`examples/areal_workflow.py`): in the peer tier, on AReaL's own client
  (tests/peers/areal).
- rLLM (`examples/rllm_episodes.py`): exported dicts loaded by rLLM's
  `Episode.from_dict` and turned into verl rows by its transform (both restated
  at a pinned commit in tests/unit/test_rllm_contract.py), ids against the
  embedded server's chat template.
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
from rollout import Episode, Recorder, TokenSource, assemble
from rollout.embedded import END_ID, ChatTemplate, EmbeddedServer
from tests.fakes import ENC

# --- shared -------------------------------------------------------------------------


def check_exact_vllm_call(call: Any, template: ChatTemplate, episode: Episode | None = None) -> None:
    """A call recorded from the embedded server: prompt ids are the server's own
    rendering of the request (first calls), or, sent as tokens (token mode), the
    parent's prompt and sampled ids and then the new messages' tokens; completion
    ids decode to the reply."""
    if call.sent_as == "tokens":
        assert episode is not None and call.parent is not None
        assert call.prompt_source is TokenSource.TOKEN_IN and call.fallback is None
        parent = episode.calls[call.parent]
        head = [*parent.prompt_ids.tolist(), *parent.choices[0].ids.tolist()]
        assert call.prompt_ids.tolist()[: len(head)] == head
    else:
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
            check_exact_vllm_call(call, template, ep)
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
    for ep in (run_ep, arun_ep, stream_ep):
        for call in ep.calls:
            check_exact_vllm_call(call, template, ep)
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
# examples/areal_workflow.py returns torch tensors (torch is an optional extra), so it is
# tested in the peer tier against AReaL's own ArealOpenAI, check_trajectory_format and
# concat_padded_tensors: tests/peers/areal/test_areal_workflow.py.


# --- rLLM -------------------------------------------------------------------------------


def test_rllm_episodes_load_in_rllm_with_the_servers_ids() -> None:
    from examples.rllm_episodes import collect_episodes, trajectory_groups
    from rollout.export import to_rllm
    from tests.unit.test_rllm_contract import Episode as RllmEpisode
    from tests.unit.test_rllm_contract import TerminationReason, transform_rows

    ours = collect_episodes(limit=3, samples_per_task=2)
    episodes = to_rllm(ours)
    json.loads(json.dumps(episodes))  # JSON-ready
    tasks = [json.loads(line) for line in arithmetic_tasks()[:3]]
    assert sorted(ep["id"] for ep in episodes) == sorted(f"{t['id']}:{s}" for t in tasks for s in (0, 1))
    template = ChatTemplate()
    loaded = []
    for ep in episodes:
        rllm = RllmEpisode.from_dict(ep)  # rLLM's own loader (restated, pinned commit)
        assert rllm.to_dict() == ep  # and back, unchanged
        assert isinstance(rllm.termination_reason, TerminationReason)
        loaded.append(rllm)
        task_id, sample = ep["id"].rsplit(":", 1)
        assert (task_id, int(sample)) == (ep["info"]["task_id"], ep["info"]["sample"])
        assert ep["task"]["id"] == task_id
        (traj,) = ep["trajectories"]
        assert traj["name"] == "agent"
        assert traj["reward"] in (0.0, 1.0) and ep["is_correct"] == (traj["reward"] > 0)
        steps = traj["steps"]
        assert 1 <= len(steps) <= arithmetic.MAX_TURNS
        assert [s["done"] for s in steps] == [False] * (len(steps) - 1) + [True]
        for step in steps:
            mo = step["model_output"]
            assert len(step["logprobs"]) == len(step["response_ids"]) > 0
            assert all(lp <= 0.0 for lp in step["logprobs"])
            assert (mo["prompt_ids"], mo["completion_ids"], mo["logprobs"]) == (
                step["prompt_ids"], step["response_ids"], step["logprobs"]
            )
            reply = step["chat_completions"][-1]
            assert reply["role"] == "assistant" and reply["content"] == step["model_response"]
            # Exact ids: the sampled ids decode to the reply; the first prompt is the
            # server's own rendering, later prompts were sent as tokens (checked below).
            if step is steps[0]:
                assert step["prompt_ids"] == template.render(step["chat_completions"][:-1])
            assert ENC.decode([t for t in step["response_ids"] if t != END_ID]) == step["model_response"]
            assert step["weight_version"] == 0 and step["advantage"] is None
            assert step["info"]["exact"] is True and step["info"]["token_source"] == "vllm"
        # The multi-turn history: each step's conversation extends the previous step's,
        # and (token mode) its prompt ids extend the previous prompt and sampled ids.
        for prev, step in itertools.pairwise(steps):
            cc = step["chat_completions"]
            assert cc[: len(prev["chat_completions"])] == prev["chat_completions"]
            head = prev["prompt_ids"] + prev["response_ids"]
            assert step["prompt_ids"][: len(head)] == head
        if ep["is_correct"]:
            assert arithmetic.check(steps[-1]["model_response"], ep["task"])
    # rLLM's transform keeps every step: each sampled token is trained in some row.
    rows = transform_rows(loaded)
    assert sum(sum(m) for m in rows.masks) == sum(len(c.choices[0].ids) for e in ours for c in e.calls)

    groups = trajectory_groups(episodes)
    assert sorted(g["group_id"] for g in groups) == sorted(f"{t['id']}:agent" for t in tasks)
    assert all(len(g["trajectories"]) == 2 and g["weight_version"] == 0 for g in groups)


@pytest.mark.parametrize("token_mode", ["auto", "off"])
def test_rllm_transform_rows_equal_to_verl_on_the_embedded_server(token_mode: str) -> None:
    from examples.rllm_episodes import collect_episodes
    from rollout.export import to_rllm, to_verl
    from tests.unit.test_rllm_contract import Episode as RllmEpisode
    from tests.unit.test_rllm_contract import batch_rows, transform_rows

    # Token mode: one row per episode. Off: max_tokens=4 replies stop on length and
    # the next turn re-renders them, so some turns do not extend the previous one
    # and start new rows, in both, training each sampled token once.
    backend = {"kind": "embedded", "token_mode": token_mode, "sampling": {"temperature": 1.0, "max_tokens": 4}}
    ours = collect_episodes(limit=3, samples_per_task=2, backend=backend)
    pad = 2**30  # no token the server samples or renders
    verl = to_verl(ours, pad_id=pad, uid="episode")["tensors"]
    rows = transform_rows([RllmEpisode.from_dict(d) for d in to_rllm(ours)])
    theirs = batch_rows(rows, pad, verl["prompts"].shape[1], verl["responses"].shape[1])
    assert len(rows.prompts) == len(verl["prompts"])
    for key in ("prompts", "responses", "input_ids", "response_mask", "rollout_log_probs"):
        np.testing.assert_array_equal(theirs[key], verl[key], err_msg=key)
    np.testing.assert_array_equal(theirs["attention_mask"], verl["attention_mask"].astype(bool))
    np.testing.assert_array_equal(theirs["traj_rewards"], verl["rm_scores"])
    sampled = sum(len(c.choices[0].ids) for e in ours for c in e.calls)
    assert int(verl["response_mask"].sum()) == sampled
    if token_mode == "auto":
        assert len(verl["prompts"]) == len(ours)


def arithmetic_tasks() -> list[str]:
    from examples.rllm_episodes import TASKS

    return [line for line in TASKS.read_text().splitlines() if line.strip()]
