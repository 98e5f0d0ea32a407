"""Embedded server: errors, API keys, weight updates, concurrency, the CLI entry."""

from __future__ import annotations

import asyncio
import json
import logging
import signal
import subprocess
import sys
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

import httpx2
import numpy as np
import openai
import pytest

from rollout.embedded import (
    END_ID,
    ChatTemplate,
    EmbeddedServer,
    Policy,
    WeightPushError,
    push_weights,
)
from rollout.embedded.weights import weights_to_npz

USER = [{"role": "user", "content": "hi"}]


def raw(
    url: str, body: bytes | None, headers: dict[str, str] | None = None, method: str = "POST"
) -> tuple[int, Any]:
    req = urllib.request.Request(
        url, body, headers or {"Content-Type": "application/json"}, method=method
    )
    try:
        with urllib.request.urlopen(req, timeout=10) as resp:
            return resp.status, json.loads(resp.read())
    except urllib.error.HTTPError as e:
        return e.code, json.loads(e.read())


# -------------------------------------------------------------------- errors


@pytest.mark.parametrize(
    ("kw", "param"),
    [
        ({"n": 0}, "n"),
        ({"temperature": -0.1}, "temperature"),
        ({"top_p": 0}, "top_p"),
        ({"top_p": 1.5}, "top_p"),
        ({"max_tokens": 0}, "max_tokens"),
        ({"top_logprobs": 3}, "top_logprobs"),
        ({"logprobs": True, "top_logprobs": 21}, "top_logprobs"),
        ({"stop": ""}, "stop"),
        ({"messages": []}, "messages"),
        ({"messages": [{"role": "wizard", "content": "x"}]}, "messages"),
        ({"messages": [{"role": "user", "content": [{"type": "image_url"}]}]}, "messages"),
        ({"extra_body": {"return_token_ids": "yes"}}, "return_token_ids"),
    ],
)
def test_invalid_params_are_400(client: openai.OpenAI, kw: dict[str, Any], param: str) -> None:
    args: dict[str, Any] = {"model": "tiny", "messages": USER, **kw}
    with pytest.raises(openai.BadRequestError) as err:
        client.chat.completions.create(**args)
    assert err.value.status_code == 400
    body = err.value.body
    assert (
        isinstance(body, dict)
        and body["param"] == param
        and body["type"] == "invalid_request_error"
    )
    assert body["message"]


def test_unknown_model_is_404(client: openai.OpenAI) -> None:
    with pytest.raises(openai.NotFoundError) as err:
        client.chat.completions.create(model="gpt-9", messages=USER)
    assert err.value.body == {
        "message": "The model `gpt-9` does not exist.",
        "type": "invalid_request_error",
        "param": "model",
        "code": "model_not_found",
    }
    with pytest.raises(openai.NotFoundError):
        client.completions.create(model="gpt-9", prompt=[1, 2])


def test_too_long_prompts_are_400(client: openai.OpenAI) -> None:
    long = [{"role": "user", "content": " ".join(["word"] * 2100)}]
    with pytest.raises(openai.BadRequestError) as err:
        client.chat.completions.create(model="tiny", messages=long)
    assert isinstance(err.value.body, dict) and err.value.body["code"] == "context_length_exceeded"
    with pytest.raises(openai.BadRequestError, match="maximum context length"):
        client.chat.completions.create(model="tiny", messages=USER, max_tokens=2048)
    with pytest.raises(openai.BadRequestError, match="maximum context length"):
        client.completions.create(model="tiny", prompt=[15] * 2048)


def test_bad_json_and_bad_routes(server: EmbeddedServer) -> None:
    status, body = raw(server.base_url + "/chat/completions", b"{not json")
    assert status == 400 and body["error"]["code"] == "invalid_json"
    status, body = raw(server.base_url + "/chat/completions", b"[1, 2]")
    assert status == 400 and body["error"]["type"] == "invalid_request_error"
    status, body = raw(
        server.base_url + "/completions", json.dumps({"model": "tiny", "prompt": [1, 100256]}).encode()
    )
    assert status == 400 and body["error"]["param"] == "prompt"
    status, body = raw(server.base_url + "/nothing-here", b"{}")
    assert status == 404 and set(body["error"]) == {"message", "type", "param", "code"}
    status, body = raw(server.base_url + "/chat/completions", None, method="GET")
    assert status == 405 and "error" in body


# ------------------------------------------------------------------ API key


def test_api_key_enforced_and_never_logged(caplog: pytest.LogCaptureFixture) -> None:
    key = "sk-very-secret-123"
    caplog.set_level(logging.DEBUG)
    with EmbeddedServer(api_key=key, latency_s=0.001, latency_per_token_s=0.0005) as server:
        assert key not in repr(server)
        good = openai.OpenAI(base_url=server.base_url, api_key=key, max_retries=0)
        assert good.chat.completions.create(model="tiny", messages=USER, max_tokens=3).choices
        bad = openai.OpenAI(base_url=server.base_url, api_key="sk-wrong", max_retries=0)
        with pytest.raises(openai.AuthenticationError) as err:
            bad.chat.completions.create(model="tiny", messages=USER)
        assert err.value.status_code == 401
        assert isinstance(err.value.body, dict) and err.value.body["code"] == "invalid_api_key"
        with pytest.raises(openai.AuthenticationError):
            bad.models.list()
        status, body = raw(server.base_url + "/chat/completions", b"{}")
        assert status == 401 and key not in json.dumps(body)
        status, _ = raw(server.url + "/tokenize", json.dumps({"prompt": "x"}).encode())
        assert status == 401
        with pytest.raises(WeightPushError, match="401"):
            push_weights(server.base_url, server.policy.get_weights(), 1)
        assert push_weights(server.base_url, server.policy.get_weights(), 1, api_key=key) == 1
        with urllib.request.urlopen(server.url + "/health", timeout=10) as resp:
            assert resp.status == 200
    assert key not in caplog.text


# ----------------------------------------------------------- weight updates


def test_weight_update_changes_outputs_and_version() -> None:
    with EmbeddedServer(seed=0) as server:
        client = openai.OpenAI(base_url=server.base_url, api_key="x", max_retries=0)
        kw: dict[str, Any] = {"model": "tiny", "messages": USER, "max_tokens": 8, "seed": 1,
                              "extra_body": {"return_token_ids": True}}  # fmt: skip
        before = client.chat.completions.create(**kw)
        assert before.weight_version == 0
        weights = server.policy.get_weights()
        weights["b"][:] = -50.0
        weights["b"][-1] = 50.0  # the end token
        assert push_weights(server.base_url, weights, version=7) == 7
        assert server.weight_version == 7
        after = client.chat.completions.create(**kw)
        assert after.weight_version == 7
        assert after.choices[0].token_ids == [END_ID] != before.choices[0].token_ids
        assert after.choices[0].message.content == ""
        chunks = list(client.chat.completions.create(stream=True, **kw))
        assert {ch.weight_version for ch in chunks} == {7}
        assert (
            client.completions.create(model="tiny", prompt=[1, 2], max_tokens=3).weight_version == 7
        )

        # No version -> previous + 1.
        policy = Policy(seed=5)
        status, body = raw(
            server.url + "/update_weights",
            weights_to_npz(policy.get_weights()),
            {"Content-Type": "application/octet-stream"},
        )
        assert (status, body["weight_version"]) == (200, 8)
        assert np.array_equal(server.policy.W, policy.W)
        assert push_weights(server.url, policy.get_weights(), version=3) == 3

        # Broken uploads are 400 and change nothing.
        status, body = raw(
            server.url + "/update_weights?version=9",
            b"not an npz",
            {"Content-Type": "application/octet-stream"},
        )
        assert status == 400 and body["error"]["param"] == "weights"
        with pytest.raises(RuntimeError, match="shape"):
            push_weights(server.url, {"W": np.zeros((3, 3)), "b": np.zeros(3)}, 10)
        assert server.weight_version == 3
        server.set_weights(weights, 11)  # in-process form
        assert client.chat.completions.create(**kw).weight_version == 11


# ------------------------------------------------------------- concurrency


async def _many(base_url: str, count: int) -> list[Any]:
    http = openai.DefaultAsyncHttpx2Client(
        limits=httpx2.Limits(max_connections=1000, max_keepalive_connections=1000)
    )
    async with openai.AsyncOpenAI(
        base_url=base_url, api_key="x", max_retries=0, http_client=http
    ) as client:

        async def one(i: int) -> Any:
            kw: dict[str, Any] = {"model": "tiny", "messages": [{"role": "user", "content": f"q{i % 7}"}],
                                  "max_tokens": 4, "seed": i, "extra_body": {"return_token_ids": True}}  # fmt: skip
            if i % 5 == 0:
                stream = await client.chat.completions.create(stream=True, **kw)
                return [t async for ch in stream for c in ch.choices for t in (c.token_ids or [])]
            r = await client.chat.completions.create(**kw)
            return r.choices[0].token_ids

        return await asyncio.gather(*(one(i) for i in range(count)))


def test_500_simultaneous_requests(server: EmbeddedServer) -> None:
    results = asyncio.run(_many(server.base_url, 500))
    assert len(results) == 500
    assert all(1 <= len(r) <= 4 for r in results)
    template = ChatTemplate()
    for i in (0, 1, 5, 499):  # each reply is what its seed gives, despite interleaving
        prompt = template.render([{"role": "user", "content": f"q{i % 7}"}])
        want, _ = server.policy.generate(prompt, 4, np.random.default_rng([i, 0]))
        assert results[i] == want


# ----------------------------------------------------------------- the CLI


def test_rollout_serve_runs_until_interrupted(tmp_path: Path) -> None:
    path = tmp_path / "p.npz"
    Policy(seed=2).save(path)
    args = ["--port", "0", "--model", "m2", "--weights", str(path), "--api-key", "k1"]
    proc = subprocess.Popen(
        [sys.executable, "-m", "rollout.cli", "serve", *args], stdout=subprocess.PIPE, text=True
    )
    try:
        assert proc.stdout is not None
        line = proc.stdout.readline()
        assert "k1" not in line
        base_url = next(w for w in line.split() if w.startswith("http://"))
        client = openai.OpenAI(base_url=base_url, api_key="k1", max_retries=0)
        assert [m.id for m in client.models.list().data] == ["m2"]
        assert client.chat.completions.create(model="m2", messages=USER, max_tokens=2).choices
    finally:
        proc.send_signal(signal.SIGINT)
        assert proc.wait(timeout=10) == 0


def test_client_leaving_mid_stream_does_not_hurt_the_server() -> None:
    with EmbeddedServer(latency_per_token_s=0.002) as server:
        client = openai.OpenAI(base_url=server.base_url, api_key="x", max_retries=0)
        kw: dict[str, Any] = {"model": "tiny", "messages": USER, "max_tokens": 200,
                              "extra_body": {"ignore_eos": True}}  # fmt: skip
        stream = client.chat.completions.create(stream=True, **kw)
        next(iter(stream))
        stream.close()
        status, body = raw(
            server.url + "/tokenize", json.dumps({"messages": [{"role": "x"}]}).encode()
        )
        assert status == 400 and body["error"]["param"] == "messages"
        r = client.chat.completions.create(**{**kw, "max_tokens": 3})
        assert r.usage.completion_tokens == 3 and r.choices[0].finish_reason == "length"
