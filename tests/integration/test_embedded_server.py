"""The embedded server through the real openai SDK over loopback HTTP."""

from __future__ import annotations

import json
import math
import urllib.request
from typing import Any

import numpy as np
import openai
import pytest

from rollout.embedded import END_ID, ChatTemplate, EmbeddedServer, Policy, get_encoding

ENC = get_encoding()
T = ChatTemplate()
USER = [{"role": "user", "content": "What is 2+3?"}]


def post(url: str, body: dict[str, Any]) -> Any:
    req = urllib.request.Request(
        url, json.dumps(body).encode(), {"Content-Type": "application/json"}
    )
    with urllib.request.urlopen(req, timeout=10) as resp:
        return json.loads(resp.read())


def chat(client: openai.OpenAI, **kw: Any) -> Any:
    args: dict[str, Any] = {"model": "tiny", "messages": USER, "max_tokens": 12, "seed": 7}
    return client.chat.completions.create(**{**args, **kw})


# ----------------------------------------------------------------- small routes


def test_models_health_tokenize(server: EmbeddedServer, client: openai.OpenAI) -> None:
    models = client.models.list()
    assert [m.id for m in models.data] == ["tiny"]
    with urllib.request.urlopen(server.url + "/health", timeout=10) as resp:
        assert json.loads(resp.read()) == {"status": "ok", "weight_version": 0}
    tools = [{"type": "function", "function": {"name": "calc"}}]
    out = post(server.url + "/tokenize", {"model": "tiny", "messages": USER, "tools": tools})
    assert out["tokens"] == T.render(USER, tools)
    assert out["count"] == len(out["tokens"]) and out["max_model_len"] == 2048
    out = post(server.url + "/tokenize", {"prompt": "hello world"})
    assert out["tokens"] == ENC.encode("hello world")
    assert post(server.url + "/detokenize", {"tokens": ENC.encode("hi there")})["prompt"] == "hi there"


# --------------------------------------------------------------------- chat


def test_chat_non_stream_fields(server: EmbeddedServer, client: openai.OpenAI) -> None:
    r = chat(client, temperature=0.7, top_p=0.9, logprobs=True, top_logprobs=3, n=2,
             extra_body={"return_token_ids": True})  # fmt: skip
    prompt = T.render(USER)
    assert r.prompt_token_ids == prompt
    assert r.weight_version == 0
    assert r.usage.prompt_tokens == len(prompt)
    assert r.usage.completion_tokens == sum(len(c.token_ids) for c in r.choices)
    assert [c.index for c in r.choices] == [0, 1]
    for c in r.choices:
        ids = c.token_ids
        assert 1 <= len(ids) <= 12
        assert c.finish_reason == ("stop" if ids[-1] == END_ID else "length")
        assert c.message.content == ENC.decode([t for t in ids if t != END_ID])
        content = c.logprobs.content
        assert [e.token for e in content] == [
            ENC.decode_single_token_bytes(t).decode() for t in ids
        ]
        assert [bytes(e.bytes) for e in content] == [ENC.decode_single_token_bytes(t) for t in ids]
        recomputed = server.policy.logprobs(prompt, ids, 0.7, 0.9)
        assert np.max(np.abs(recomputed - [e.logprob for e in content])) <= 1e-6
        for e, t, step in zip(content, ids, range(len(ids)), strict=True):
            dist = server.policy.distribution(prompt + ids[:step], 0.7, 0.9)
            assert [x.logprob for x in e.top_logprobs] == pytest.approx(
                list(dist.logprobs[:3]), abs=1e-12
            )
            assert e.logprob == pytest.approx(dist.logprob_of(t), abs=1e-12)


def test_top_logprobs_cover_the_whole_nucleus(server: EmbeddedServer, client: openai.OpenAI) -> None:
    r = chat(client, top_p=0.02, logprobs=True, top_logprobs=20, max_tokens=6,
             extra_body={"return_tokens_as_token_ids": True, "return_token_ids": True})  # fmt: skip
    content = r.choices[0].logprobs.content
    assert [e.token for e in content] == [f"token_id:{t}" for t in r.choices[0].token_ids]
    for e in content:
        probs = [math.exp(x.logprob) for x in e.top_logprobs]
        assert len(probs) < 20
        assert sum(probs) == pytest.approx(1.0, abs=1e-9)
        assert probs == sorted(probs, reverse=True)
        assert e.token in {x.token for x in e.top_logprobs}
    full = chat(client, logprobs=True, top_logprobs=20, max_tokens=3).choices[0].logprobs.content
    for e in full:
        probs = [math.exp(x.logprob) for x in e.top_logprobs]
        assert len(probs) == 20 and 0 < sum(probs) < 1.0


def test_seed_determinism(client: openai.OpenAI) -> None:
    extra = {"return_token_ids": True}
    a = chat(client, n=3, max_tokens=20, extra_body=extra)
    b = chat(client, n=3, max_tokens=20, extra_body=extra)
    assert [c.token_ids for c in a.choices] == [c.token_ids for c in b.choices]
    assert len({tuple(c.token_ids) for c in a.choices}) > 1  # choices use distinct streams
    others = [
        chat(client, seed=s, max_tokens=20, extra_body=extra).choices[0].token_ids
        for s in range(8, 13)
    ]
    assert any(o != a.choices[0].token_ids for o in others)
    greedy = [
        chat(client, temperature=0, seed=s, extra_body=extra).choices[0].token_ids for s in (1, 2)
    ]
    assert greedy[0] == greedy[1]


def test_stream_matches_non_stream(server: EmbeddedServer, client: openai.OpenAI) -> None:
    kw: dict[str, Any] = {"n": 2, "max_tokens": 15, "logprobs": True, "top_logprobs": 2,
                          "extra_body": {"return_token_ids": True}}  # fmt: skip
    full = chat(client, **kw)
    chunks = list(chat(client, stream=True, stream_options={"include_usage": True}, **kw))
    assert chunks[0].prompt_token_ids == T.render(USER)
    assert all(getattr(ch, "prompt_token_ids", None) is None for ch in chunks[1:])
    assert all(ch.weight_version == 0 for ch in chunks)
    assert chunks[-1].choices == [] and chunks[-1].usage == full.usage
    for i, want in enumerate(full.choices):
        mine = [ch.choices[0] for ch in chunks[1:-1] if ch.choices[0].index == i]
        assert [t for c in mine for t in c.token_ids] == want.token_ids
        assert "".join(c.delta.content or "" for c in mine) == want.message.content
        assert [e.logprob for c in mine for e in c.logprobs.content] == [
            e.logprob for e in want.logprobs.content
        ]
        assert [c.finish_reason for c in mine][-1] == want.finish_reason
        assert all(c.finish_reason is None for c in mine[:-1])


def test_stop_strings(client: openai.OpenAI) -> None:
    extra = {"return_token_ids": True, "ignore_eos": True}
    base = chat(client, max_tokens=30, extra_body=extra).choices[0]
    text = base.message.content
    assert len(text) >= 6
    stop = text[3:5]
    cut = text.find(stop)
    r = chat(client, max_tokens=30, stop=[stop, "never-there"], extra_body=extra).choices[0]
    assert r.finish_reason == "stop" and r.message.content == text[:cut]
    assert r.token_ids == base.token_ids[: len(r.token_ids)]
    assert stop in ENC.decode(r.token_ids) and stop not in ENC.decode(r.token_ids[:-1])
    streamed = list(chat(client, max_tokens=30, stop=stop, stream=True, extra_body=extra))
    assert "".join(ch.choices[0].delta.content or "" for ch in streamed) == text[:cut]


# ---------------------------------------------------------------- completions


def test_completions_with_token_prompt(server: EmbeddedServer, client: openai.OpenAI) -> None:
    prompts = [[9906, 1917, END_ID], ENC.encode("count: 1 2 3")]
    kw: dict[str, Any] = {"model": "tiny", "prompt": prompts, "max_tokens": 10, "seed": 3, "n": 2,
                          "temperature": 0.8, "logprobs": 2, "extra_body": {"return_token_ids": True}}  # fmt: skip
    r = client.completions.create(**kw)
    assert [c.index for c in r.choices] == [0, 1, 2, 3]
    assert r.weight_version == 0
    assert r.usage.prompt_tokens == sum(map(len, prompts))
    for c in r.choices:
        p = prompts[c.index // 2]
        assert c.prompt_token_ids == p
        assert c.text == ENC.decode([t for t in c.token_ids if t != END_ID])
        lps = server.policy.logprobs(p, c.token_ids, 0.8, 1.0)
        assert np.max(np.abs(lps - c.logprobs.token_logprobs)) <= 1e-6
        assert len(c.logprobs.top_logprobs) == len(c.token_ids)
    stream = list(client.completions.create(stream=True, **kw))
    for c in r.choices:
        mine = [ch.choices[0] for ch in stream if ch.choices[0].index == c.index]
        assert mine[0].prompt_token_ids == c.prompt_token_ids
        assert all(getattr(m, "prompt_token_ids", None) is None for m in mine[1:])
        assert [t for m in mine for t in m.token_ids] == c.token_ids
        assert "".join(m.text for m in mine) == c.text
        assert mine[-1].finish_reason == c.finish_reason
    text = client.completions.create(model="tiny", prompt="hello", max_tokens=3, seed=1,
                                     extra_body={"return_token_ids": True})  # fmt: skip
    assert text.choices[0].prompt_token_ids == ENC.encode("hello")


# ------------------------------------------------- tools, training, multi-turn


def trained_caller(tools: list[dict[str, Any]]) -> Policy:
    """A policy taught (by gradient ascent) to answer USER with "CALL 5"."""
    policy = Policy(seed=1)
    prompt = T.render(USER, tools)
    target = [*ENC.encode("CALL 5"), END_ID]
    for _ in range(30):
        policy.apply_gradient(policy.grad_logprob(prompt, target), lr=3.0)
    assert policy.logprobs(prompt, target).sum() > math.log(0.9)
    return policy


def test_tool_calls_and_prefix_property() -> None:
    tools = [{"type": "function", "function": {"name": "calc", "parameters": {"type": "object"}}}]
    with EmbeddedServer(policy=trained_caller(tools)) as server:
        client = openai.OpenAI(base_url=server.base_url, api_key="x", max_retries=0)
        kw: dict[str, Any] = {"model": "tiny", "messages": USER, "tools": tools, "temperature": 0,
                              "extra_body": {"return_token_ids": True}}  # fmt: skip
        r = client.chat.completions.create(**kw)
        c = r.choices[0]
        assert c.finish_reason == "tool_calls" and c.message.content is None
        call = c.message.tool_calls[0]
        assert call.function.name == "calc" and json.loads(call.function.arguments) == {"arg": "5"}
        assert c.token_ids == [*ENC.encode("CALL 5"), END_ID]
        chunks = list(client.chat.completions.create(stream=True, **kw))
        deltas = [ch.choices[0].delta for ch in chunks]
        assert all(not d.content for d in deltas)
        calls = [tc for d in deltas for tc in (d.tool_calls or [])]
        assert len(calls) == 1 and calls[0].function.arguments == call.function.arguments
        assert chunks[-1].choices[0].finish_reason == "tool_calls"
        plain = client.chat.completions.create(**{**kw, "tool_choice": "none"}).choices[0]
        assert plain.message.content == "CALL 5" and plain.finish_reason == "stop"

        # Turn 2 through the SDK's own message objects: exact prefix extension.
        messages = [
            *USER,
            c.message.model_dump(exclude_none=True),
            {"role": "tool", "tool_call_id": call.id, "content": "5"},
        ]
        r2 = client.chat.completions.create(**{**kw, "messages": messages})
        assert (
            r2.prompt_token_ids[: len(r.prompt_token_ids) + len(c.token_ids)]
            == r.prompt_token_ids + c.token_ids
        )


def test_multi_turn_prefix_property_end_to_end(client: openai.OpenAI) -> None:
    """Holds whenever the sampled ids are tiktoken's canonical encoding of the reply."""
    checked = 0
    for seed in range(12):
        messages: list[Any] = [{"role": "user", "content": f"game {seed}"}]
        prev: tuple[list[int], list[int]] | None = None
        for turn in range(3):
            r = client.chat.completions.create(
                model="tiny", messages=messages, max_tokens=1 + (seed + turn) % 3, seed=seed + turn,
                extra_body={"return_token_ids": True},
            )  # fmt: skip
            if prev is not None:
                prompt, completion = prev
                text_ids = [t for t in completion if t != END_ID]
                canonical = ENC.encode(ENC.decode(text_ids)) == text_ids
                extends = r.prompt_token_ids[: len(prompt) + len(completion)] == prompt + completion
                assert extends == canonical
                checked += canonical
            c = r.choices[0]
            prev = (r.prompt_token_ids, c.token_ids)
            messages += [
                c.message.model_dump(exclude_none=True),
                {"role": "user", "content": "again"},
            ]
    assert checked >= 10
