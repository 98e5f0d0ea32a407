"""A scripted server in vLLM's wire format, for driving CAMEL deterministically.

`ScriptedServer` is an httpx2 `MockTransport` handler, so the real openai SDK
(and through it CAMEL) talks to it in process. It answers requests in order
from its script (the last reply repeats): text, a tool call, or an error
status. Replies carry vLLM's exact ids (`prompt_token_ids`, per-choice
`token_ids`, logprobs) when the request asks for them, as the recorder does,
and streams end with a usage chunk when `stream_options.include_usage` is set,
the point at which CAMEL's `ChatAgent` stops reading.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any

import httpx2
from openai import AsyncOpenAI, OpenAI

from tests.fakes import ENC

END_ID = 100257
BASE_URL = "http://scripted.test/v1"


@dataclass(frozen=True)
class Reply:
    """One scripted answer: `text`, or a call of tool `tool` with `args`, or an error `status`."""

    text: str = ""
    tool: str | None = None
    args: dict[str, Any] = field(default_factory=dict)
    finish_reason: str | None = None
    status: int = 200

    @property
    def sampled_text(self) -> str:
        return f"CALL {self.tool} {json.dumps(self.args)}" if self.tool else self.text


def render(messages: list[dict[str, Any]], tools: Any) -> list[int]:
    """Each message (and the tools) encoded on its own, so a turn extends the last one exactly."""
    ids = [*ENC.encode(json.dumps(tools, sort_keys=True)), END_ID] if tools else []
    for m in messages:
        text = m.get("content") if isinstance(m.get("content"), str) else ""
        for call in m.get("tool_calls") or []:
            text += f"CALL {call['function']['name']} {call['function']['arguments']}"
        ids += [*ENC.encode(f"<{m['role']}>"), *ENC.encode(text), END_ID]
    return ids + ENC.encode("<assistant>")


class ScriptedServer:
    """Serves /v1/chat/completions from a script; keeps every request body."""

    def __init__(self, *script: Reply) -> None:
        self.script = list(script) or [Reply("ok")]
        self.requests: list[dict[str, Any]] = []
        self.replies: list[dict[str, Any]] = []

    def clients(self) -> tuple[OpenAI, AsyncOpenAI]:
        transport = httpx2.MockTransport(self)
        common: dict[str, Any] = {"api_key": "sk-scripted", "base_url": BASE_URL, "max_retries": 0}
        return (
            OpenAI(**common, http_client=httpx2.Client(transport=transport)),
            AsyncOpenAI(**common, http_client=httpx2.AsyncClient(transport=transport)),
        )

    def __call__(self, request: httpx2.Request) -> httpx2.Response:
        body = json.loads(request.content)
        self.requests.append(body)
        reply = self.script[min(len(self.requests), len(self.script)) - 1]
        if reply.status != 200:
            return httpx2.Response(reply.status, json={"error": {"message": f"scripted {reply.status}"}})
        completion = self.completion(body, reply)
        self.replies.append(completion)
        if not body.get("stream"):
            return httpx2.Response(200, json=completion)
        events = self.chunks(completion, include_usage=bool((body.get("stream_options") or {}).get("include_usage")))
        sse = "".join(f"data: {json.dumps(e)}\n\n" for e in events) + "data: [DONE]\n\n"
        return httpx2.Response(200, headers={"content-type": "text/event-stream"}, content=sse.encode())

    def completion(self, body: dict[str, Any], reply: Reply) -> dict[str, Any]:
        n = len(self.requests)
        ids = [*ENC.encode(reply.sampled_text), END_ID]
        prompt = render(body["messages"], body.get("tools"))
        message: dict[str, Any] = {"role": "assistant", "content": reply.text or None}
        if reply.tool:
            message["tool_calls"] = [{
                "id": f"call_{n}", "type": "function",
                "function": {"name": reply.tool, "arguments": json.dumps(reply.args)},
            }]
        choice: dict[str, Any] = {
            "index": 0, "message": message,
            "finish_reason": reply.finish_reason or ("tool_calls" if reply.tool else "stop"),
        }
        out: dict[str, Any] = {
            "id": f"chatcmpl-scripted-{n}", "object": "chat.completion", "created": 0,
            "model": body["model"], "choices": [choice],
            "usage": {"prompt_tokens": len(prompt), "completion_tokens": len(ids),
                      "total_tokens": len(prompt) + len(ids)},
        }
        if body.get("return_token_ids"):
            out["prompt_token_ids"] = prompt
            choice["token_ids"] = ids
        if body.get("logprobs"):
            choice["logprobs"] = {"content": [
                {"token": f"token_id:{t}", "logprob": -(j + 1) / 8, "bytes": None, "top_logprobs": []}
                for j, t in enumerate(ids)
            ]}
        return out

    @staticmethod
    def chunks(completion: dict[str, Any], *, include_usage: bool) -> list[dict[str, Any]]:
        """The completion as vLLM streams it: one chunk per token, then finish, then usage."""
        choice = completion["choices"][0]
        message = choice["message"]
        head = {k: completion[k] for k in ("id", "created", "model")} | {"object": "chat.completion.chunk"}
        ids = choice.get("token_ids") or ENC.encode(message["content"] or "")
        lps = (choice.get("logprobs") or {}).get("content")
        events: list[dict[str, Any]] = []
        for j, t in enumerate(ids):
            delta: dict[str, Any] = {"role": "assistant"} if j == 0 else {}
            if message["content"] and t != END_ID:
                delta["content"] = ENC.decode([t])
            if j == 0 and message.get("tool_calls"):
                delta["tool_calls"] = [{"index": 0, **message["tool_calls"][0]}]
            c: dict[str, Any] = {"index": 0, "delta": delta, "finish_reason": None}
            if "token_ids" in choice:
                c["token_ids"] = [t]
            if lps:
                c["logprobs"] = {"content": [lps[j]]}
            event = {**head, "choices": [c]}
            if j == 0 and "prompt_token_ids" in completion:
                event["prompt_token_ids"] = completion["prompt_token_ids"]
            events.append(event)
        events.append({**head, "choices": [{"index": 0, "delta": {}, "finish_reason": choice["finish_reason"]}]})
        if include_usage:
            events.append({**head, "choices": [], "usage": completion["usage"]})
        return events
