"""Client-side reply parsing for servers that cannot derender: Hermes / Qwen tool calls.

Qwen 2.5 / 3 and other Hermes-style chat templates emit each tool call as
`<tool_call>{"name": ..., "arguments": {...}}</tool_call>` and reasoning as
`<think>...</think>`. vLLM's `/v1/chat/completions/derender` parses these
server-side with the model's own parser; where that route is missing this
module gives the same `message` shape (`content`, `tool_calls`,
`reasoning_content`). Text that is not a well-formed call stays content.
"""

from __future__ import annotations

import json
import re
import uuid
from typing import Any

_CALL = re.compile(r"<tool_call>\s*(.*?)\s*</tool_call>", re.DOTALL)
_THINK = re.compile(r"^\s*(?:<think>)?(.*?)</think>", re.DOTALL)


def _tool_call(body: str) -> dict[str, Any] | None:
    try:
        data = json.loads(body)
    except ValueError:
        return None
    if not isinstance(data, dict) or not isinstance(data.get("name"), str):
        return None
    args = data.get("arguments", data.get("parameters", {}))
    return {
        "id": f"call_{uuid.uuid4().hex[:24]}",
        "type": "function",
        "function": {
            "name": data["name"],
            "arguments": args if isinstance(args, str) else json.dumps(args, ensure_ascii=False),
        },
    }


def parse_message(text: str, *, tools: bool = True, reasoning: bool = True) -> dict[str, Any]:
    """The assistant message a Hermes-style completion text stands for."""
    message: dict[str, Any] = {"role": "assistant"}
    if reasoning and "</think>" in text:
        think = _THINK.match(text)
        if think is not None:
            message["reasoning_content"] = think.group(1).strip()
            text = text[think.end() :].lstrip("\n")
    calls: list[dict[str, Any]] = []
    if tools and "<tool_call>" in text:
        kept: list[str] = []
        last = 0
        for m in _CALL.finditer(text):
            call = _tool_call(m.group(1))
            if call is None:
                continue  # malformed: leave it in the content, as the server would
            calls.append(call)
            kept.append(text[last : m.start()])
            last = m.end()
        kept.append(text[last:])
        if calls:
            text = "".join(kept)
    message["content"] = (text.strip() or None) if calls else text
    if calls:
        message["tool_calls"] = calls
    return message
