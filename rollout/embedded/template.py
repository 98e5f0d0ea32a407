"""Chat template of the embedded policy: OpenAI messages -> cl100k token ids.

Layout (special tokens are structural markers that plain text can never
produce, because message text is encoded with special tokens disabled)::

    [<|fim_suffix|> tools-json <|endoftext|>]                      if tools
    <|fim_prefix|> role [<|endofprompt|> name] <|fim_middle|> content <|endoftext|>
    ...
    <|fim_prefix|> assistant <|fim_middle|>                        generation prompt

Each message's content is encoded on its own, so tokens never merge across a
message boundary, and the end token that closes an assistant message is the
same token the policy samples to stop. Hence, for an extended conversation
(turn k messages + the assistant reply + new messages), turn k+1's prompt ids
start with turn k's prompt ids + the completion ids, provided re-rendering
the reply gives back the sampled ids. It does NOT when:

* the sampled ids are not tiktoken's canonical encoding of their decoded text
  (e.g. "1" then "2" decodes to "12", which re-encodes as the single token
  "12"; likewise "\\n" "\\n" -> "\\n\\n");
* a stop string cut the text (the ids include the token that completed it);
* a tool call is not exactly ``CALL`` or ``CALL <arg>`` with no stray
  whitespace (the reply comes back as structured ``tool_calls`` and is
  re-rendered from its arguments);
* the client edits, drops or reorders earlier messages, or changes ``tools``.
"""

from __future__ import annotations

import json
import uuid
from collections.abc import Mapping, Sequence
from functools import cache, lru_cache
from typing import Any

from rollout.errors import TemplateError

from .policy import END_ID, get_encoding

FIM_PREFIX = 100258
"""Starts a message header."""
FIM_MIDDLE = 100259
"""Ends a message header; content follows."""
FIM_SUFFIX = 100260
"""Starts the tool-definitions block."""
END_OF_PROMPT = 100276
"""Separates the role from an optional ``name`` in a header."""

ROLES = frozenset({"system", "developer", "user", "assistant", "tool"})
TOOL_CALL_PREFIX = "CALL"
MAX_TOKEN_BYTES = 128
"""The longest cl100k token, in bytes: text of n characters is >= n / 128 tokens."""


@cache
def token_bytes(token_id: int) -> bytes:
    """A token's bytes (cached: replies draw from a small vocabulary, once per token)."""
    return get_encoding().decode_single_token_bytes(token_id)


def token_str(token_id: int, as_ids: bool) -> str:
    """How a token is named in logprobs: its text, or vLLM's ``token_id:N``."""
    if as_ids:
        return f"token_id:{token_id}"
    return token_bytes(token_id).decode("utf-8", errors="replace")


class PromptTooLongError(TemplateError):
    """The rendered prompt would exceed the token limit; ``at_least`` is a lower bound."""

    def __init__(self, at_least: int, limit: int) -> None:
        super().__init__(f"the prompt has at least {at_least} tokens (limit {limit})")
        self.at_least = at_least
        self.limit = limit


def encode_text(text: str, limit: int | None = None) -> list[int]:
    """Encode plain text; special-token look-alikes stay ordinary text.

    With ``limit``, text that cannot fit is refused from its length alone,
    before any tokenizing (a multi-megabyte prompt costs nothing).
    """
    if limit is not None and len(text) > limit * MAX_TOKEN_BYTES:
        raise PromptTooLongError(-(-len(text) // MAX_TOKEN_BYTES), limit)
    if len(text) <= CACHED_TEXT_CHARS:
        return list(_encode_cached(text))
    return list(get_encoding().encode(text, disallowed_special=()))


CACHED_TEXT_CHARS = 1024


@lru_cache(maxsize=1024)
def _encode_cached(text: str) -> tuple[int, ...]:
    """Short texts recur (roles, system prompts, each earlier turn of an episode, re-rendered
    on every call): tokenize them once. Bounded: 1024 texts of <= 1 KiB (tens of MiB at worst)."""
    return tuple(get_encoding().encode(text, disallowed_special=()))


def content_text(content: Any, where: str = "content") -> str:
    """Text of a message content: a string, None, or a list of text parts."""
    if content is None:
        return ""
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        parts: list[str] = []
        for part in content:
            if isinstance(part, str):
                parts.append(part)
            elif isinstance(part, Mapping) and isinstance(part.get("text"), str):
                parts.append(part["text"])
            else:
                raise TemplateError(f"{where}: only text content parts are supported")
        return "".join(parts)
    raise TemplateError(f"{where} must be a string, a list of text parts or null")


def parse_tool_call(text: str) -> str | None:
    """The argument of a ``CALL <arg>`` completion, or None if it is not one."""
    if not text.startswith(TOOL_CALL_PREFIX):
        return None
    return text[len(TOOL_CALL_PREFIX) :].strip()


def tool_call_arguments(arg: str) -> str:
    """JSON ``arguments`` string of a tool call: ``{"arg": "<arg>"}``."""
    return json.dumps({"arg": arg})


def tool_call_text(arguments: str) -> str:
    """Inverse of the tool-call format, used to re-render assistant tool_calls."""
    try:
        parsed = json.loads(arguments)
    except (TypeError, ValueError):
        parsed = None
    if isinstance(parsed, dict) and isinstance(parsed.get("arg"), str):
        arg = parsed["arg"]
    else:
        arg = arguments if isinstance(arguments, str) else json.dumps(arguments)
    return f"{TOOL_CALL_PREFIX} {arg}" if arg else TOOL_CALL_PREFIX


class ChatTemplate:
    """Renders messages; stateless, safe to share between requests."""

    end_id = END_ID

    @property
    def generation_prompt(self) -> list[int]:
        return self._header("assistant", None)

    def _header(self, role: str, name: str | None) -> list[int]:
        ids = [FIM_PREFIX, *encode_text(role)]
        if name:
            ids += [END_OF_PROMPT, *encode_text(name)]
        ids.append(FIM_MIDDLE)
        return ids

    def render_tools(self, tools: Sequence[Any] | None, limit: int | None = None) -> list[int]:
        """Tool block: the tools list as compact, key-sorted JSON."""
        if not tools:
            return []
        try:
            text = json.dumps(list(tools), sort_keys=True, separators=(",", ":"))
        except RecursionError:
            raise TemplateError("tools are nested too deeply to render") from None
        return [FIM_SUFFIX, *encode_text(text, limit), END_ID]

    def render_message(self, message: Any, index: int = 0, limit: int | None = None) -> list[int]:
        """One message, header to end token (``limit``: see :func:`encode_text`)."""
        where = f"messages[{index}]"
        if not isinstance(message, Mapping):
            raise TemplateError(f"{where} must be an object")
        role = message.get("role")
        if role not in ROLES:
            raise TemplateError(f"{where}.role must be one of {sorted(ROLES)}")
        name = message.get("name")
        if name is not None and not isinstance(name, str):
            raise TemplateError(f"{where}.name must be a string")
        text = content_text(message.get("content"), f"{where}.content")
        tool_calls = message.get("tool_calls") if role == "assistant" else None
        if tool_calls:
            if not isinstance(tool_calls, list):
                raise TemplateError(f"{where}.tool_calls must be a list")
            calls: list[str] = []
            for j, call in enumerate(tool_calls):
                fn = call.get("function") if isinstance(call, Mapping) else None
                if not isinstance(fn, Mapping):
                    raise TemplateError(f"{where}.tool_calls[{j}].function is missing")
                calls.append(tool_call_text(fn.get("arguments", "")))
            text = text + "\n".join(calls)
        elif message.get("content") is None and role != "assistant":
            raise TemplateError(f"{where}.content is required for role {role!r}")
        return [*self._header(role, name), *encode_text(text, limit), END_ID]

    def render(
        self,
        messages: Any,
        tools: Sequence[Any] | None = None,
        add_generation_prompt: bool = True,
        continue_final_message: bool = False,
        limit: int | None = None,
    ) -> list[int]:
        """Prompt ids for ``messages`` (plus the assistant header by default).

        ``continue_final_message`` leaves the last message open (no end
        token) for the model to continue, as vLLM's ``/tokenize`` does.
        ``limit`` stops rendering with :class:`PromptTooLongError` as soon as
        the prompt cannot fit in that many tokens.
        """
        if not isinstance(messages, Sequence) or isinstance(messages, str) or not messages:
            raise TemplateError("messages must be a non-empty list")
        if add_generation_prompt and continue_final_message:
            raise TemplateError(
                "add_generation_prompt and continue_final_message cannot both be true"
            )
        ids = self.render_tools(tools, limit)
        for i, message in enumerate(messages):
            room = None if limit is None else limit - len(ids)
            try:
                ids += self.render_message(message, i, room)
            except PromptTooLongError as e:
                raise PromptTooLongError(len(ids) + e.at_least, e.limit) from None
            if limit is not None and len(ids) > limit:
                raise PromptTooLongError(len(ids), limit)
        if continue_final_message:
            ids.pop()  # the last message's end token
        if add_generation_prompt:
            ids += self.generation_prompt
        return ids


class ClientTemplate:
    """This model's template, decoding and reply parsing, for token mode on the client
    (`Recorder(local_template=ClientTemplate())`, see `rollout.tokenmode.local_template`):
    the renders of ``/tokenize`` and the messages of the chat route, computed locally."""

    def __init__(self) -> None:
        self._template = ChatTemplate()

    def render(self, messages: list[Any], tools: Any, chat_template_kwargs: Any, *,
               generation_prompt: bool) -> list[int]:  # fmt: skip
        return self._template.render(messages, tools or None, add_generation_prompt=generation_prompt)

    def decode(self, ids: list[int], *, skip_special_tokens: bool) -> str:
        """The chat route's text drops the end token; ``/detokenize`` keeps every token."""
        if skip_special_tokens:
            ids = [t for t in ids if t != END_ID]
        return get_encoding().decode(ids)

    def parse(self, text: str, *, tools: list[Any] | None) -> dict[str, Any]:
        """A ``CALL <arg>`` completion is a call of the first tool, when the call has tools."""
        arg = parse_tool_call(text) if tools else None
        if arg is None:
            return {"content": text}
        first = tools[0] if tools else None
        fn = first.get("function", {}) if isinstance(first, Mapping) else {}
        call = {"id": f"call_{uuid.uuid4().hex[:24]}", "type": "function",
                "function": {"name": fn.get("name", "tool"), "arguments": tool_call_arguments(arg)}}  # fmt: skip
        return {"content": None, "tool_calls": [call]}
