"""vLLM's token routes on the embedded server: generate, render, derender, tokenize.

Formats as in vLLM 0.33.0 (see docs/embedded.md for the file references). The
central promise: token ids in give the same tokens and logprobs as the chat
route on the same prompt, seed and parameters, so token mode records exactly
what message mode would have sampled.
"""

from __future__ import annotations

import asyncio
import json
import math
import urllib.error
import urllib.request
from collections.abc import Iterator
from typing import Any

import numpy as np
import pytest

from rollout.embedded import END_ID, ChatTemplate, EmbeddedServer, Limits, Policy, get_encoding

ENC = get_encoding()
T = ChatTemplate()
USER = [{"role": "user", "content": "What is 2+3?"}]
TOOLS = [{"type": "function", "function": {"name": "calc", "parameters": {"type": "object"}}}]


def post(url: str, body: dict[str, Any]) -> tuple[int, Any]:
    req = urllib.request.Request(url, json.dumps(body).encode(), {"Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(req, timeout=30) as resp:
            return resp.status, json.loads(resp.read())
    except urllib.error.HTTPError as e:
        return e.code, json.loads(e.read())


def ok(url: str, body: dict[str, Any]) -> Any:
    status, reply = post(url, body)
    assert status == 200, reply
    return reply


def events(url: str, body: dict[str, Any]) -> list[Any]:
    """The JSON events of an SSE reply, checking it ends with [DONE]."""
    req = urllib.request.Request(url, json.dumps(body).encode(), {"Content-Type": "application/json"})
    with urllib.request.urlopen(req, timeout=30) as resp:
        assert resp.headers["Content-Type"].startswith("text/event-stream")
        lines = [ln for ln in resp.read().decode().split("\n\n") if ln]
    assert lines[-1] == "data: [DONE]"
    return [json.loads(ln.removeprefix("data: ")) for ln in lines[:-1]]


def generate(server: EmbeddedServer, ids: list[int], **sampling: Any) -> Any:
    return ok(server.url + "/inference/v1/generate", {"token_ids": ids, "sampling_params": sampling})


@pytest.fixture(scope="module")
def tool_server() -> Iterator[EmbeddedServer]:
    """A server whose policy learnt to answer USER (with TOOLS) by "CALL 5"."""
    policy = Policy(seed=1)
    prompt = T.render(USER, TOOLS)
    target = [*ENC.encode("CALL 5"), END_ID]
    for _ in range(30):
        policy.apply_gradient(policy.grad_logprob(prompt, target), lr=3.0)
    with EmbeddedServer(policy=policy) as srv:
        yield srv


# ------------------------------------------------------------- same as chat


CASES: list[dict[str, Any]] = [
    {"seed": 7, "max_tokens": 12},
    {"seed": 1, "max_tokens": 20, "n": 3, "temperature": 0.7, "top_p": 0.9},
    {"seed": 2, "max_tokens": 30, "ignore_eos": True, "stop": ["3", "7"]},
    {"seed": 5, "max_tokens": 30, "ignore_eos": True, "stop_token_ids": [ENC.encode("5")[0]]},
    {"seed": 4, "max_tokens": 8, "temperature": 0},
]


@pytest.mark.parametrize("case", CASES)
@pytest.mark.parametrize("top", [None, 0, 3])
def test_generate_samples_what_chat_samples(
    server: EmbeddedServer, case: dict[str, Any], top: int | None
) -> None:
    chat_lp = {"logprobs": top is not None, "top_logprobs": top or 0}
    chat = ok(server.base_url + "/chat/completions", {
        "model": "tiny", "messages": USER, "return_token_ids": True, **case, **chat_lp})  # fmt: skip
    prompt = chat["prompt_token_ids"]
    gen = generate(server, prompt, logprobs=top, **case)
    assert gen["weight_version"] == chat["weight_version"] == 0
    assert len(gen["choices"]) == len(chat["choices"])
    for g, c in zip(gen["choices"], chat["choices"], strict=True):
        assert g["index"] == c["index"]
        assert g["token_ids"] == c["token_ids"]
        assert g["finish_reason"] == c["finish_reason"]
        assert g["weight_versions"] == [{"version": "0", "start": 0, "end": len(g["token_ids"])}]
        if top is None:
            assert g["logprobs"] is None and c["logprobs"] is None
            continue
        for ge, ce in zip(g["logprobs"]["content"], c["logprobs"]["content"], strict=True):
            assert ge["logprob"] == ce["logprob"]  # bit-identical
            assert ge["top_logprobs"][0] == {k: ge[k] for k in ("token_id", "logprob", "rank")}
            tops = ge["top_logprobs"][1:]
            assert [e["logprob"] for e in tops] == [e["logprob"] for e in ce["top_logprobs"]]
            assert [ENC.decode_single_token_bytes(e["token_id"]) for e in tops] == [
                bytes(e["bytes"]) for e in ce["top_logprobs"]
            ]
            assert [e["rank"] for e in tops] == list(range(1, len(tops) + 1))


def test_generate_reply_is_vllm_033s(server: EmbeddedServer) -> None:
    prompt = T.render(USER)
    body = {"token_ids": prompt, "request_id": "abc", "return_token_ids": True,
            "sampling_params": {"max_tokens": 40, "seed": 11, "logprobs": 2, "temperature": 0.8}}  # fmt: skip
    reply = ok(server.url + "/inference/v1/generate", body)
    assert reply["request_id"] == "generate-tokens-abc"
    assert reply["output_mode"] == "tokens" and reply["model"] == "tiny"
    assert reply["prompt_token_ids"] == prompt and reply["prompt_logprobs"] is None
    c = reply["choices"][0]
    assert set(c) == {"index", "finish_reason", "stop_reason", "token_ids", "logprobs",
                      "weight_versions"}  # fmt: skip
    n = len(c["token_ids"])
    assert reply["usage"] == {"prompt_tokens": len(prompt), "completion_tokens": n,
                              "total_tokens": len(prompt) + n}  # fmt: skip
    if c["finish_reason"] == "stop":  # stopped on EOS: the end token is in token_ids
        assert c["token_ids"][-1] == END_ID and c["stop_reason"] is None
    for step, entry in enumerate(c["logprobs"]["content"]):
        dist = server.policy.distribution(prompt + c["token_ids"][:step], 0.8, 1.0)
        assert entry["rank"] == int(np.flatnonzero(dist.token_ids == entry["token_id"])[0]) + 1
        assert entry["logprob"] == pytest.approx(dist.logprob_of(entry["token_id"]), abs=1e-12)
        assert [e["token_id"] for e in entry["top_logprobs"][1:]] == list(dist.token_ids[:2])
    text = ok(server.url + "/inference/v1/generate", {**body, "output_mode": "text"})
    assert text["output_mode"] == "text"
    assert text["choices"][0]["text"] == ENC.decode([t for t in c["token_ids"] if t != END_ID])
    assert text["choices"][0]["token_ids"] == c["token_ids"]


def test_stop_reasons(server: EmbeddedServer) -> None:
    prompt = T.render(USER)
    free = generate(server, prompt, max_tokens=40, seed=3, ignore_eos=True)["choices"][0]
    ids = free["token_ids"]
    assert free["finish_reason"] == "length" and free["stop_reason"] is None
    stop_id = ids[5]
    by_id = generate(server, prompt, max_tokens=40, seed=3, ignore_eos=True,
                     stop_token_ids=[stop_id])["choices"][0]  # fmt: skip
    assert by_id["finish_reason"] == "stop" and by_id["stop_reason"] == stop_id
    assert by_id["token_ids"] == ids[: ids.index(stop_id) + 1]  # the stop token included
    text = ENC.decode(ids)
    stop = text[4:6]
    by_text = generate(server, prompt, max_tokens=40, seed=3, ignore_eos=True, stop=stop)
    assert by_text["choices"][0]["stop_reason"] == stop
    eos = generate(server, prompt, max_tokens=40, seed=3)["choices"][0]
    if eos["finish_reason"] == "stop":
        assert eos["token_ids"][-1] == END_ID and eos["stop_reason"] is None


def test_omitted_max_tokens_is_the_rest_of_the_context(server: EmbeddedServer) -> None:
    prompt = [15] * 2040
    c = generate(server, prompt, seed=1, ignore_eos=True)["choices"][0]
    assert len(c["token_ids"]) == 8 and c["finish_reason"] == "length"


@pytest.mark.parametrize("mode", ["tokens", "text"])
def test_generate_stream_concatenates_to_the_whole_reply(server: EmbeddedServer, mode: str) -> None:
    prompt = T.render(USER)
    sampling = {"max_tokens": 25, "seed": 9, "n": 2, "logprobs": 1, "stop": ["77"]}
    body = {"token_ids": prompt, "sampling_params": sampling, "return_token_ids": True,
            "output_mode": mode}  # fmt: skip
    whole = ok(server.url + "/inference/v1/generate", body)
    chunks = events(server.url + "/inference/v1/generate",
                    {**body, "stream": True, "stream_options": {"include_usage": True}})  # fmt: skip
    assert chunks[0]["prompt_token_ids"] == prompt
    assert all("prompt_token_ids" not in ch for ch in chunks[1:])
    assert all(ch["weight_version"] == 0 and ch["output_mode"] == mode for ch in chunks)
    assert chunks[-1]["choices"] == [] and chunks[-1]["usage"] == whole["usage"]
    for want in whole["choices"]:
        mine = [ch["choices"][0] for ch in chunks[:-1] if ch["choices"][0]["index"] == want["index"]]
        assert [t for m in mine for t in m["token_ids"]] == want["token_ids"]
        assert [e for m in mine for e in m["logprobs"]["content"]] == want["logprobs"]["content"]
        assert [m.get("weight_versions") for m in mine[:-1]] == [None] * (len(mine) - 1)
        assert mine[-1]["weight_versions"] == want["weight_versions"]
        assert mine[-1]["finish_reason"] == want["finish_reason"]
        assert mine[-1]["stop_reason"] == want["stop_reason"]
        if mode == "text":
            assert "".join(m["text"] for m in mine) == want["text"]
    continuous = events(server.url + "/inference/v1/generate", {**body, "stream": True,
                        "stream_options": {"continuous_usage_stats": True}})  # fmt: skip
    counts = [ch["usage"]["completion_tokens"] for ch in continuous if ch["choices"][0]["index"] == 0]
    assert counts == list(range(1, len(counts) + 1))


def test_generate_validates_like_vllm(server: EmbeddedServer) -> None:
    url = server.url + "/inference/v1/generate"
    prompt = T.render(USER)
    good = {"token_ids": prompt, "sampling_params": {"max_tokens": 2}}
    neutral = {"top_k": -1, "min_p": 0.0, "presence_penalty": 0.0, "frequency_penalty": 0,
               "repetition_penalty": 1.0, "min_tokens": 0, "include_stop_str_in_output": False,
               "spaces_between_special_tokens": True, "prompt_logprobs": None,
               "detokenize": True, "skip_special_tokens": True}  # fmt: skip
    assert post(url, {**good, "sampling_params": {"max_tokens": 2, **neutral},
                      "cache_salt": "s", "priority": 0, "parse_context": {}})[0] == 200  # fmt: skip
    for change, param in [
        ({"sampling_params": {"max_tokens": 2, "max_new_tokens": 2}}, "sampling_params.max_new_tokens"),
        ({"sampling_params": {"top_k": 5}}, "sampling_params.top_k"),
        ({"sampling_params": {"presence_penalty": 0.5}}, "sampling_params.presence_penalty"),
        ({"sampling_params": {"temperature": "1"}}, "sampling_params.temperature"),
        ({"sampling_params": {"n": 1.0}}, "sampling_params.n"),
        ({"sampling_params": {"logprobs": 21}}, "sampling_params.logprobs"),
        ({"sampling_params": {"logprobs": -1}}, "sampling_params.logprobs"),
        ({"sampling_params": {"max_tokens": 0}}, "sampling_params.max_tokens"),
        ({"sampling_params": {"top_p": 0}}, "sampling_params.top_p"),
        ({"sampling_params": {"stop": "x", "detokenize": False}}, "sampling_params"),
        ({"sampling_params": {"stop_token_ids": [100256]}}, "sampling_params.stop_token_ids"),
        ({"token_ids": []}, "token_ids"),
        ({"token_ids": [1, 100256]}, "token_ids"),
        ({"token_ids": [1, -2]}, "token_ids"),
        ({"token_ids": ["1"]}, "token_ids.0"),
        ({"token_ids": [15] * 2048}, "token_ids"),
        ({"sampling_params": {"max_tokens": 2048}}, "token_ids"),
        ({"output_mode": "derender"}, "output_mode"),
        ({"output_mode": "text", "sampling_params": {"detokenize": False}}, None),
        ({"sampling_params": None}, "sampling_params"),
    ]:
        status, reply = post(url, {**good, **change})
        assert status == 400, (change, reply)
        assert reply["error"]["param"] == param, (change, reply)
    assert post(url, {**good, "model": "other"})[0] == 404
    status, reply = post(url, {**good, "sampling_params": {"n": 128}})  # 128 x rest of context
    assert status == 400 and reply["error"]["code"] == "request_too_large"


def test_every_reply_carries_the_policy_version() -> None:
    with EmbeddedServer(seed=0) as server:
        server.set_weights(server.policy.get_weights(), 7)
        prompt = T.render(USER)
        reply = generate(server, prompt, max_tokens=3)
        assert reply["weight_version"] == 7
        assert reply["choices"][0]["weight_versions"][0]["version"] == "7"
        assert ok(server.url + "/v1/chat/completions/render",
                  {"messages": USER})["weight_version"] == 7  # fmt: skip
        derendered = ok(server.url + "/v1/chat/completions/derender", {"generate_response": reply})
        assert derendered["weight_version"] == 7


# ----------------------------------------------------------- render, derender


def test_render_is_the_generate_request_of_a_chat_request(server: EmbeddedServer) -> None:
    chat = {"model": "tiny", "messages": USER, "tools": TOOLS, "seed": 5, "n": 2, "top_p": 0.5,
            "logprobs": True, "top_logprobs": 4, "stop": "9", "return_token_ids": True}  # fmt: skip
    rendered = ok(server.url + "/v1/chat/completions/render", chat)
    prompt = T.render(USER, TOOLS)
    assert rendered["token_ids"] == prompt
    assert rendered["model"] == "tiny" and rendered["request_id"].startswith("chatcmpl-")
    assert rendered["sampling_params"] == {
        "n": 2, "temperature": 1.0, "top_p": 0.5, "seed": 5, "stop": ["9"], "stop_token_ids": None,
        "ignore_eos": False, "max_tokens": 2048 - len(prompt), "logprobs": 4, "detokenize": True,
        "skip_special_tokens": True,
    }  # fmt: skip
    assert rendered["parse_context"] == {"tools": TOOLS, "tool_choice": None}
    assert rendered["stream"] is False and rendered["return_token_ids"] is True
    status, reply = post(server.url + "/v1/chat/completions/render", {"messages": [{"role": "x"}]})
    assert status == 400 and reply["error"]["param"] == "messages"


@pytest.mark.parametrize("chat_extra", [
    {"logprobs": True, "top_logprobs": 3, "n": 2, "temperature": 0.8},
    {"max_tokens": 30, "ignore_eos": True, "stop": ["4"]},
    {"logprobs": True, "return_tokens_as_token_ids": True},
])  # fmt: skip
def test_render_generate_derender_is_the_chat_completion(
    server: EmbeddedServer, chat_extra: dict[str, Any]
) -> None:
    chat = {"model": "tiny", "messages": USER, "seed": 13, "max_tokens": 16,
            "return_token_ids": True, **chat_extra}  # fmt: skip
    want = ok(server.base_url + "/chat/completions", chat)
    rendered = ok(server.url + "/v1/chat/completions/render", chat)
    generated = ok(server.url + "/inference/v1/generate", rendered)
    got = ok(server.url + "/v1/chat/completions/derender", {
        "generate_response": generated, "prompt_token_ids": rendered["token_ids"],
        "chat_request": chat})  # fmt: skip
    assert got["id"] == generated["request_id"]
    assert got["object"] == "chat.completion" and got["model"] == "tiny"
    for key in ("choices", "usage", "prompt_token_ids", "weight_version"):
        assert got[key] == want[key], key


def test_derender_parses_tool_calls_as_chat_does(tool_server: EmbeddedServer) -> None:
    chat = {"model": "tiny", "messages": USER, "tools": TOOLS, "temperature": 0,
            "return_token_ids": True}  # fmt: skip
    want = ok(tool_server.base_url + "/chat/completions", chat)
    rendered = ok(tool_server.url + "/v1/chat/completions/render", chat)
    generated = ok(tool_server.url + "/inference/v1/generate", rendered)
    assert generated["choices"][0]["token_ids"] == [*ENC.encode("CALL 5"), END_ID]
    assert generated["choices"][0]["finish_reason"] == "stop"  # generate knows no tools
    got = ok(tool_server.url + "/v1/chat/completions/derender",
             {"generate_response": generated, "chat_request": chat})  # fmt: skip
    c, w = got["choices"][0], want["choices"][0]
    assert c["finish_reason"] == w["finish_reason"] == "tool_calls"
    assert c["message"]["content"] is None
    (call,), (wcall,) = c["message"]["tool_calls"], w["message"]["tool_calls"]
    assert call["function"] == wcall["function"] == {"name": "calc", "arguments": '{"arg": "5"}'}
    assert call["id"].startswith("call_") and call["type"] == "function"
    assert "prompt_token_ids" not in got and got["usage"]["prompt_tokens"] == 0
    plain = ok(tool_server.url + "/v1/chat/completions/derender", {
        "generate_response": generated, "chat_request": {**chat, "tool_choice": "none"},
        "prompt_tokens": 9})  # fmt: skip
    assert plain["choices"][0]["message"]["content"] == "CALL 5"
    assert plain["choices"][0]["finish_reason"] == "stop" and plain["usage"]["prompt_tokens"] == 9


def test_derender_refuses_what_it_cannot_read(server: EmbeddedServer) -> None:
    url = server.url + "/v1/chat/completions/derender"
    reply = generate(server, T.render(USER), max_tokens=3, logprobs=0)
    choice = reply["choices"][0]
    unknown_id = {**reply, "choices": [{**choice, "token_ids": [100256]}]}
    no_entries = {**reply, "choices": [{**choice, "logprobs": {"content": []}}]}
    for body, param in [
        ({"generate_response": {**reply, "output_mode": "text"}}, "generate_response.output_mode"),
        ({"generate_response": reply, "stream": True}, "stream"),
        ({"generate_response": {"choices": []}}, "generate_response.request_id"),
        ({"generate_response": unknown_id}, "generate_response.choices.0.token_ids"),
        ({"generate_response": no_entries}, "generate_response.choices.0.logprobs"),
    ]:
        status, err = post(url, body)
        assert status == 400 and err["error"]["param"] == param, (param, err)


# -------------------------------------------------------------------- tokenize


def test_tokenize_takes_vllms_chat_options(server: EmbeddedServer) -> None:
    url = server.url + "/tokenize"
    convo = [*USER, {"role": "assistant", "content": "The answer"}]
    full = ok(url, {"messages": convo, "add_generation_prompt": False})["tokens"]
    assert full == T.render(convo, add_generation_prompt=False) and full[-1] == END_ID
    cont = ok(url, {"messages": convo, "add_generation_prompt": False,
                    "continue_final_message": True, "add_special_tokens": False,
                    "chat_template_kwargs": {"enable_thinking": False}})  # fmt: skip
    assert cont["tokens"] == full[:-1]  # the last message stays open
    status, err = post(url, {"messages": convo, "continue_final_message": True})
    assert status == 400 and err["error"]["param"] == "messages"  # both true, as vLLM
    strs = ok(url, {"messages": USER, "tools": TOOLS, "return_token_strs": True})
    assert strs["tokens"] == T.render(USER, TOOLS)
    assert "".join(strs["token_strs"]) == "".join(
        ENC.decode_single_token_bytes(t).decode() for t in strs["tokens"])  # fmt: skip
    assert ok(url, {"prompt": "hi there", "return_token_strs": True})["token_strs"] == ["hi", " there"]
    assert ok(url, {"prompt": "hi"})["token_strs"] is None
    for wrong in ({"chat_template_kwargs": [1]}, {"return_token_strs": "yes"},
                  {"add_special_tokens": 1}):  # fmt: skip
        assert post(url, {"messages": USER, **wrong})[0] == 400


def test_generate_reply_fits_the_reply_limit() -> None:
    """The reply-size bound also holds for generate's layout (sampled token repeated in tops)."""
    limits = Limits(max_reply_bytes=256 * 1024)
    with EmbeddedServer(seed=0, limits=limits) as server:
        prompt = T.render(USER)
        accepted = 0
        for max_tokens in (16, 32, 64, 128):
            for stream in (False, True):
                body = {"token_ids": prompt, "request_id": "r" * 256, "stream": stream,
                        "return_token_ids": True, "stream_options": {"continuous_usage_stats": True},
                        "sampling_params": {"max_tokens": max_tokens, "ignore_eos": True,
                                            "logprobs": 20}}  # fmt: skip
                req = urllib.request.Request(server.url + "/inference/v1/generate",
                                             json.dumps(body).encode(),
                                             {"Content-Type": "application/json"})  # fmt: skip
                try:
                    with urllib.request.urlopen(req, timeout=30) as resp:
                        assert len(resp.read()) <= 256 * 1024
                        accepted += 1
                except urllib.error.HTTPError as e:
                    assert e.code == 400
        assert accepted >= 2


def test_logprobs_are_finite_numbers(server: EmbeddedServer) -> None:
    reply = generate(server, T.render(USER), max_tokens=10, logprobs=20, temperature=1e-300)
    for entry in reply["choices"][0]["logprobs"]["content"]:
        assert all(math.isfinite(e["logprob"]) for e in [entry, *entry["top_logprobs"]])


@pytest.mark.parametrize("stream", [False, True], ids=["reply", "stream"])
def test_a_server_tokenizer_records_off_the_event_loop(
    server: EmbeddedServer, monkeypatch: pytest.MonkeyPatch, stream: bool
) -> None:
    """`tokenizer="server"` asks the server for ids while recording; from async code
    that must not stall the event loop (other episodes go on meanwhile)."""
    import time

    from openai import AsyncOpenAI

    from rollout import Recorder, TokenSource
    from rollout.tokenizers import ServerTokenizer

    original = ServerTokenizer._tokens

    def slow_tokens(self: ServerTokenizer, body: dict[str, Any]) -> list[int]:
        time.sleep(0.3)  # a remote server's /tokenize round trip
        return original(self, body)

    monkeypatch.setattr(ServerTokenizer, "_tokens", slow_tokens)
    recorder = Recorder(request_token_ids=False, request_logprobs=True, tokenizer="server")
    client = recorder.wrap(AsyncOpenAI(base_url=server.base_url, api_key="unused", max_retries=0))

    async def scenario() -> tuple[Any, int]:
        ticks = 0
        done = asyncio.Event()

        async def ticker() -> None:
            nonlocal ticks
            while not done.is_set():
                ticks += 1
                await asyncio.sleep(0.01)

        task = asyncio.create_task(ticker())
        async with recorder.episode("t") as ep:
            reply = await client.chat.completions.create(
                model="tiny", messages=[{"role": "user", "content": "What is 2 + 3?"}], max_tokens=4,
                stream=stream,
            )
            if stream:
                async for _ in reply:
                    pass
        done.set()
        await task
        return ep, ticks

    ep, ticks = asyncio.run(scenario())
    (call,) = ep.calls
    assert call.choices[0].source in (TokenSource.TOKENIZER_MATCHED, TokenSource.TOKENIZER)
    assert len(call.prompt_ids) > 0
    assert ticks >= 30, ticks  # >= 0.6 s of /tokenize waits, the loop ticking every 10 ms
