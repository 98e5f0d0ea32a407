"""Structured output as a plan of attempts, shared by the sync and async paths.

A plan is a generator: it yields `Attempt`s (which client method to call,
with which kwargs) and receives each reply, or has the call's exception
thrown into it. The sync and async drivers in the backend only execute
attempts, so the logic exists once. Two plans:

- `native_plan`, for clients whose `parse` goes where their `create` goes:
  CAMEL's requests (camel/models/openai_compatible_model.py `_request_parse`,
  v0.2.90): `parse` with the pydantic model; on a reply that does not
  validate (or a 400), `parse` again with `{"type": "json_object"}` and the
  schema in the prompt.
- `fallback_plan`, for clients without such a parse (AReaL's and other RL
  clients): `create` with a `json_schema` format, then `json_object` with
  the schema in the prompt, then the prompt alone (for clients that drop
  `response_format` silently).

Each reply is validated with pydantic. When none validates, the last reply
comes back with `parsed=None`, as CAMEL's does (ChatAgent then goes on), or,
with `strict`, a `StructuredOutputError` carries its raw text. A reply that
calls a tool is an answer, returned as is. The caller's messages are never
mutated.
"""

from __future__ import annotations

import copy
import json
import logging
import re
from collections.abc import Callable, Generator
from dataclasses import dataclass, field
from json import JSONDecodeError
from typing import Any

from pydantic import BaseModel, ValidationError

from compat.clients import attr_path, forwarded, resolve
from compat.errors import StructuredOutputError, UnsupportedResponseFormatError
from compat.messages import with_instruction

logger = logging.getLogger(__name__)

NATIVE_PARSE_PATHS = ("chat.completions.parse", "beta.chat.completions.parse")
CREATE = "chat.completions.create"

Instruct = Callable[[list[dict[str, Any]], type[BaseModel]], list[dict[str, Any]]]
"""Returns a copy of the messages that asks for JSON matching the model's schema."""

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
# What CAMEL's `_request_parse` answers with its json_object retry; anything
# else (a truncated reply included) propagates, as there.
_PARSE_RETRY_NAMES = frozenset({"ValidationError", "JSONDecodeError", "BadRequestError"})


def _defining_class(cls: type, name: str) -> type | None:
    return next((k for k in cls.__mro__ if name in k.__dict__), None)


def native_parse_path(client: Any) -> str | None:
    """The client's parse method, if it goes where its `create` goes; else None.

    RL clients replace `create` and keep the SDK's `parse`: AReaL's subclasses
    the completions resource and overrides only `create`; others put their own
    object at `chat` and keep the SDK's `beta`. That parse would bypass the
    engine and send a real HTTP request to a placeholder URL. So a parse is
    used only when the class structure shows it shares `create`'s route:
    `chat.completions.parse` defined with or below `create`, or the SDK's
    `beta.chat.completions.parse` beside the SDK's own, unpatched `create`.
    Proxies in front of the resource are seen through (`compat.clients.Forwarding`).
    """
    completions = forwarded(attr_path(client, "chat.completions"))
    if completions is None or "create" in getattr(completions, "__dict__", {}):
        return None  # no resource, or `create` patched on the instance
    create_at = _defining_class(type(completions), "create")
    if create_at is None:
        return None
    parse_at = _defining_class(type(completions), "parse")
    own_parse = parse_at is not None and issubclass(parse_at, create_at)
    if own_parse and resolve(client, NATIVE_PARSE_PATHS[0]) is not None:
        return NATIVE_PARSE_PATHS[0]
    sdk_create = create_at.__module__.partition(".")[0] == "openai"
    if sdk_create and resolve(client, NATIVE_PARSE_PATHS[1]) is not None:
        return NATIVE_PARSE_PATHS[1]
    return None


def native_stream_path(parse_path: str) -> str:
    """The SDK's stream helper beside a native parse (it builds on the same resource)."""
    return parse_path.removesuffix(".parse") + ".stream"


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


def tool_calls(reply: Any) -> Any:
    return _get(_get(_first_choice(reply), "message"), "tool_calls")


def validated(reply: Any, response_format: type[BaseModel]) -> BaseModel | None:
    """The reply's text as a `response_format`, or None when it does not validate."""
    text = reply_text(reply)
    if text is None:
        return None
    try:
        return response_format.model_validate_json(extract_json(text))
    except ValidationError:
        return None


def as_parsed(reply: Any, parsed: BaseModel | None) -> Any:
    """The reply as the SDK's parse returns it: a `ParsedChatCompletion` whose
    first message carries `parsed` (None: the text did not validate).

    Unknown wire fields such as vLLM's token ids are kept. A reply that is not
    ChatCompletion-shaped (it then has no text to parse) comes back as is.
    """
    from openai.types.chat import ParsedChatCompletion

    if parsed is None and isinstance(reply, ParsedChatCompletion):
        return reply
    data = reply.model_dump() if hasattr(reply, "model_dump") else copy.deepcopy(reply)
    if not isinstance(data, dict) or not data.get("choices"):
        return reply
    for choice in data["choices"]:
        choice.setdefault("message", {})["parsed"] = None
    built = ParsedChatCompletion[type(parsed) if parsed is not None else BaseModel].model_validate(data)  # type: ignore[misc]
    built.choices[0].message.parsed = parsed
    return built


@dataclass
class StructuredRequest:
    """One structured-output request, as both plans share it: what to send, how
    to ask again for JSON, and how to end when no reply validates."""

    messages: list[dict[str, Any]]
    response_format: type[BaseModel]
    request: dict[str, Any]
    instruct: Instruct
    strict: bool = False
    tried: list[str] = field(default_factory=list)

    def kwargs(self, messages: list[dict[str, Any]], response_format: Any) -> dict[str, Any]:
        """The request's kwargs with these messages and format (None: no format)."""
        base = {k: v for k, v in self.request.items() if k not in ("messages", "response_format", "stream")}
        fmt = {} if response_format is None else {"response_format": response_format}
        return {"messages": messages, **base, **fmt}

    def answer(self, reply: Any) -> Any:
        """The reply, parsed; or as is when it is a tool call or a refusal; else None."""
        message = _get(_first_choice(reply), "message")
        if _get(message, "parsed") is not None or _get(message, "refusal") or tool_calls(reply):
            return reply
        parsed = validated(reply, self.response_format)
        return None if parsed is None else as_parsed(reply, parsed)

    def give_up(self, reply: Any) -> Any:
        """No reply validated: the last one with `parsed=None`, or with `strict` an error."""
        if self.strict or reply is None:
            raise StructuredOutputError(
                f"no reply validated against {self.response_format.__name__}",
                None if reply is None else reply_text(reply),
                self.tried,
            )
        return as_parsed(reply, None)


def native_plan(req: StructuredRequest, path: str) -> Generator[Attempt, Any, Any]:
    """CAMEL's two parse requests; the second's reply is final."""
    req.tried.append("native parse")
    try:
        reply = yield Attempt("native", path, req.kwargs(req.messages, req.response_format))
    except Exception as exc:
        if not any(cls.__name__ in _PARSE_RETRY_NAMES for cls in type(exc).__mro__):
            raise
        logger.info("native parse failed (%s); retrying with json_object", type(exc).__name__)
    else:
        answer = req.answer(reply)
        if answer is not None:
            return answer
    req.tried.append("native parse json_object")
    instructed = req.instruct(req.messages, req.response_format)
    reply = yield Attempt("native_json_object", path, req.kwargs(instructed, {"type": "json_object"}))
    answer = req.answer(reply)
    return answer if answer is not None else req.give_up(reply)


def fallback_plan(req: StructuredRequest) -> Generator[Attempt, Any, Any]:
    """`create` with json_schema, then json_object + schema prompt, then the prompt alone."""
    instructed = req.instruct(req.messages, req.response_format)
    strategies = [
        ("json_schema", req.messages, json_schema_format(req.response_format)),
        ("json_object", instructed, {"type": "json_object"}),
        ("instruction", instructed, None),
    ]
    last = None
    for strategy, msgs, fmt in strategies:
        req.tried.append(strategy)
        try:
            reply = yield Attempt(strategy, CREATE, req.kwargs(msgs, fmt))
        except Exception as exc:
            if not is_rejection(exc):
                raise
            logger.info("%s rejected (%s); falling back", strategy, type(exc).__name__)
            continue
        answer = req.answer(reply)
        if answer is not None:
            return answer
        last = reply
        logger.info("%s reply did not validate; falling back", strategy)
    return req.give_up(last)


def one_attempt(attempt: Attempt) -> Generator[Attempt, Any, Any]:
    """A plan of one attempt whose reply is final (an OpenAI format dict, sent as is)."""
    return (yield attempt)


def default_instruct(messages: list[dict[str, Any]], response_format: type[BaseModel]) -> list[dict[str, Any]]:
    return with_instruction(messages, schema_instruction(response_format))
