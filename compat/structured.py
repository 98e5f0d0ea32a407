"""Structured output as a plan of attempts, shared by the sync and async paths.

`parse_plan` is a generator: it yields `Attempt`s (which client method to
call, with which kwargs) and receives each reply, or has the call's exception
thrown into it. The sync and async drivers in the backend only execute
attempts, so the fallback logic exists once:

1. the client's native `chat.completions.parse` / `beta.chat.completions.parse`;
2. `create` with `response_format={"type": "json_schema", ...}`;
3. `create` with `response_format={"type": "json_object"}` and the schema in
   the prompt;
4. `create` with only the schema in the prompt (for clients such as AReaL's
   that silently drop `response_format`).

Each reply is validated with pydantic; the first that validates wins. The
caller's messages are never mutated.
"""

from __future__ import annotations

import copy
import json
import logging
import re
from collections.abc import Generator
from dataclasses import dataclass, field
from json import JSONDecodeError
from typing import Any

from pydantic import BaseModel, ValidationError

from compat.clients import resolve
from compat.errors import StructuredOutputError, UnsupportedResponseFormatError
from compat.messages import with_instruction

logger = logging.getLogger(__name__)

NATIVE_PARSE_PATHS = ("chat.completions.parse", "beta.chat.completions.parse")
CREATE = "chat.completions.create"

# Errors that mean "this strategy is not available here", so try the next one.
# Matched by class name so duck-typed clients with their own exceptions work.
_REJECTION_NAMES = frozenset(
    {
        "BadRequestError",
        "UnprocessableEntityError",
        "NotFoundError",
        "LengthFinishReasonError",
        "ContentFilterFinishReasonError",
        "NotImplementedError",
    }
)


def _defining_class(cls: type, name: str) -> type | None:
    return next((k for k in cls.__mro__ if name in k.__dict__), None)


def native_parse_path(client: Any) -> str | None:
    """The client's parse method, if it goes where its `create` goes.

    RL clients such as AReaL's subclass the SDK's completions resource and
    override only `create`; the inherited `parse` (and the SDK's
    `beta.chat.completions.parse`) would then bypass the engine and send a
    real HTTP request to a bogus URL. Such a parse is not used.
    """
    if client is None:
        return None
    completions = getattr(getattr(client, "chat", None), "completions", None)
    # See through recording proxies (rollout.wrap) to the real resource.
    completions = getattr(completions, "__wrapped__", completions)
    if completions is not None:
        create_at = _defining_class(type(completions), "create")
        parse_at = _defining_class(type(completions), "parse")
        overridden_below = (
            create_at is not None
            and parse_at is not None
            and create_at is not parse_at
            and issubclass(create_at, parse_at)
        )
        if overridden_below:  # create overridden, parse inherited: parse bypasses it
            return None
    for path in NATIVE_PARSE_PATHS:
        if resolve(client, path) is not None:
            return path
    return None


def is_rejection(exc: BaseException) -> bool:
    if isinstance(exc, (ValidationError, JSONDecodeError, NotImplementedError, TypeError)):
        return True
    return any(cls.__name__ in _REJECTION_NAMES for cls in type(exc).__mro__)


@dataclass
class Attempt:
    """One client call the plan asks for."""

    strategy: str
    path: str
    kwargs: dict[str, Any] = field(default_factory=dict)


def check_response_format(response_format: Any) -> type[BaseModel]:
    if isinstance(response_format, type) and issubclass(response_format, BaseModel):
        return response_format
    raise UnsupportedResponseFormatError(
        "response_format must be a pydantic BaseModel subclass for structured output, "
        f"got {response_format!r}"
    )


def json_schema_format(model: type[BaseModel]) -> dict[str, Any]:
    return {
        "type": "json_schema",
        "json_schema": {"name": model.__name__, "schema": model.model_json_schema()},
    }


def schema_instruction(model: type[BaseModel]) -> str:
    schema = json.dumps(model.model_json_schema(), separators=(",", ":"))
    return f"Reply with only a JSON object that matches this JSON schema:\n{schema}"


_FENCE = re.compile(r"```(?:json)?\s*(.*?)```", re.DOTALL)


def extract_json(text: str) -> str:
    """The JSON object inside a reply that may wrap it in prose or a code fence."""
    fenced = _FENCE.search(text)
    if fenced:
        return fenced.group(1).strip()
    start, end = text.find("{"), text.rfind("}")
    return text[start : end + 1] if 0 <= start < end else text


def reply_text(reply: Any) -> str | None:
    choice = _first_choice(reply)
    message = _get(choice, "message")
    content = _get(message, "content")
    return content if isinstance(content, str) else None


def _get(obj: Any, key: str) -> Any:
    if obj is None:
        return None
    if isinstance(obj, dict):
        return obj.get(key)
    return getattr(obj, key, None)


def _first_choice(reply: Any) -> Any:
    choices = _get(reply, "choices") or []
    return choices[0] if choices else None


def with_parsed(reply: Any, parsed: BaseModel) -> Any:
    """A ChatCompletion-shaped reply whose first message carries `.parsed`.

    openai replies become `ParsedChatCompletion`s (unknown wire fields such as
    vLLM's token ids are kept); other objects get `.parsed` set on a copy.
    """
    from openai.types.chat import ParsedChatCompletion

    data = reply.model_dump() if hasattr(reply, "model_dump") else copy.deepcopy(reply)
    if not isinstance(data, dict) or not data.get("choices"):
        raise StructuredOutputError("reply is not ChatCompletion-shaped", reply_text(reply), [])
    for choice in data["choices"]:
        choice.setdefault("message", {})["parsed"] = None
    built = ParsedChatCompletion[type(parsed)].model_validate(data)  # type: ignore[misc]
    built.choices[0].message.parsed = parsed
    return built


def parse_plan(
    *,
    messages: list[dict[str, Any]],
    response_format: type[BaseModel],
    request: dict[str, Any],
    native_path: str | None,
) -> Generator[Attempt, Any, Any]:
    """Yield attempts until one reply validates; return the parsed reply."""
    tried: list[str] = []
    last_text: str | None = None
    base = {k: v for k, v in request.items() if k not in ("response_format", "stream")}

    if native_path is not None:
        tried.append("native parse")
        try:
            reply = yield Attempt(
                "native", native_path, {**base, "messages": messages, "response_format": response_format}
            )
            message = _get(_first_choice(reply), "message")
            if _get(message, "parsed") is not None or _get(message, "refusal"):
                return reply
            last_text = reply_text(reply)
        except Exception as exc:
            if not is_rejection(exc):
                raise
            logger.info("native parse failed (%s); falling back", type(exc).__name__)

    instruction = schema_instruction(response_format)
    fallbacks = [
        ("json_schema", messages, json_schema_format(response_format)),
        ("json_object", with_instruction(messages, instruction), {"type": "json_object"}),
        ("instruction", with_instruction(messages, instruction), None),
    ]
    for strategy, msgs, fmt in fallbacks:
        tried.append(strategy)
        kwargs = {**base, "messages": msgs}
        if fmt is not None:
            kwargs["response_format"] = fmt
        try:
            reply = yield Attempt(strategy, CREATE, kwargs)
        except Exception as exc:
            if not is_rejection(exc):
                raise
            logger.info("%s rejected (%s); falling back", strategy, type(exc).__name__)
            continue
        text = reply_text(reply)
        last_text = text
        if text is None:
            continue
        try:
            parsed = response_format.model_validate_json(extract_json(text))
        except ValidationError:
            logger.info("%s reply did not validate; falling back", strategy)
            continue
        return with_parsed(reply, parsed)
    raise StructuredOutputError(
        f"no reply validated against {response_format.__name__}", last_text, tried
    )
