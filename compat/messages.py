"""Validation and non-mutating helpers for OpenAI chat messages."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from compat.errors import MessageFormatError

ROLES = frozenset({"system", "developer", "user", "assistant", "tool", "function"})


def validate_messages(messages: Any) -> list[dict[str, Any]]:
    """Check the shape of `messages` and return them as a list, unchanged.

    Raises `MessageFormatError` naming the first bad message, before any
    request is sent, instead of a server-side 400 with a vaguer message.
    """
    if isinstance(messages, (str, bytes)) or not isinstance(messages, Sequence):
        raise MessageFormatError(
            f"messages must be a list of dicts, got {type(messages).__name__}"
        )
    if len(messages) == 0:
        raise MessageFormatError("messages must not be empty")
    for i, m in enumerate(messages):
        if not isinstance(m, dict):
            raise MessageFormatError(f"messages[{i}] must be a dict, got {type(m).__name__}")
        role = m.get("role")
        if role is None:
            raise MessageFormatError(f"messages[{i}] has no 'role'")
        if role not in ROLES:
            raise MessageFormatError(f"messages[{i}] has unknown role {role!r}")
        if role == "tool" and "tool_call_id" not in m:
            raise MessageFormatError(f"messages[{i}] is a tool result without 'tool_call_id'")
        if "content" not in m and not m.get("tool_calls") and role != "assistant":
            raise MessageFormatError(f"messages[{i}] (role {role!r}) has no 'content'")
    return list(messages)


def with_instruction(messages: list[dict[str, Any]], instruction: str) -> list[dict[str, Any]]:
    """A copy of `messages` whose last message carries `instruction`.

    The caller's list and dicts are left untouched: the last dict is copied
    before its text is extended; a non-text last message gets a new system
    message after it instead.
    """
    out = list(messages)
    last = out[-1]
    content = last.get("content")
    if isinstance(content, str):
        out[-1] = {**last, "content": f"{content}\n\n{instruction}"}
    else:
        out.append({"role": "system", "content": instruction})
    return out
