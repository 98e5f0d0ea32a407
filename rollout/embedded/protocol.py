"""Request validation and OpenAI/vLLM wire shapes for the embedded server.

Kept apart from the HTTP layer so the rules (which parameter is invalid, with
which status and ``param``) are plain functions that are easy to read.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass
from functools import cache
from typing import Any

from rollout.errors import RolloutError

from .policy import get_encoding
from .state import Limits
from .template import PromptTooLongError, encode_text

MAX_TOP_LOGPROBS = 20
MAX_N = 128


class ApiError(RolloutError):
    """An OpenAI-style error reply: ``{"error": {message, type, param, code}}``."""

    def __init__(
        self,
        status: int,
        message: str,
        param: str | None = None,
        code: str | None = None,
        type_: str = "invalid_request_error",
    ) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.param = param
        self.code = code
        self.type = type_

    def body(self) -> dict[str, Any]:
        return {
            "error": {
                "message": self.message,
                "type": self.type,
                "param": self.param,
                "code": self.code,
            }
        }


def bad(param: str, message: str, code: str | None = "invalid_value") -> ApiError:
    return ApiError(400, message, param=param, code=code)


@dataclass(frozen=True)
class SamplingRequest:
    """Sampling and reply options of a request, whichever route it came by."""

    n: int = 1
    temperature: float = 1.0
    top_p: float = 1.0
    max_tokens: int | None = None
    stop: tuple[str, ...] = ()
    seed: int | None = None
    logprobs: bool = False
    top_logprobs: int = 0
    return_token_ids: bool = False
    tokens_as_ids: bool = False
    stream: bool = False
    include_usage: bool = False
    ignore_eos: bool = False
    stop_token_ids: frozenset[int] = frozenset()
    skip_special_tokens: bool = True
    continuous_usage: bool = False
    """Usage in every stream chunk (vLLM's ``stream_options.continuous_usage_stats``)."""


def opt_bool(body: Mapping[str, Any], key: str, default: bool = False) -> bool:
    value = body.get(key)
    if value is None:
        return default
    if not isinstance(value, bool):
        raise bad(key, f"'{key}' must be a boolean")
    return value


def _opt_int(body: Mapping[str, Any], key: str, lo: int, hi: int | None = None) -> int | None:
    value = body.get(key)
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int):
        raise bad(key, f"'{key}' must be an integer")
    if value < lo or (hi is not None and value > hi):
        limit = f"between {lo} and {hi}" if hi is not None else f">= {lo}"
        raise bad(key, f"'{key}' must be {limit}, got {value}")
    return value


def _opt_float(body: Mapping[str, Any], key: str, default: float) -> float:
    value = body.get(key)
    if value is None:
        return default
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        raise bad(key, f"'{key}' must be a finite number")
    return float(value)


def parse_sampling(body: Mapping[str, Any], chat: bool) -> SamplingRequest:
    """Validate the sampling parameters of a request body (400 on error)."""
    n = _opt_int(body, "n", 1, MAX_N)
    temperature = _opt_float(body, "temperature", 1.0)
    if temperature < 0:
        raise bad("temperature", f"'temperature' must be >= 0, got {temperature}")
    top_p = _opt_float(body, "top_p", 1.0)
    if not 0.0 < top_p <= 1.0:
        raise bad("top_p", f"'top_p' must be in (0, 1], got {top_p}")
    max_tokens = _opt_int(body, "max_tokens", 1)
    if chat and body.get("max_completion_tokens") is not None:
        max_tokens = _opt_int(body, "max_completion_tokens", 1)
    stop_raw = body.get("stop")
    if stop_raw is None:
        stop: tuple[str, ...] = ()
    elif isinstance(stop_raw, str):
        stop = (stop_raw,)
    elif isinstance(stop_raw, list) and all(isinstance(s, str) for s in stop_raw):
        stop = tuple(stop_raw)
    else:
        raise bad("stop", "'stop' must be a string or a list of strings")
    if any(not s for s in stop):
        raise bad("stop", "stop strings must be non-empty")
    seed = _opt_int(body, "seed", -(2**63), 2**64 - 1)
    if chat:
        logprobs = opt_bool(body, "logprobs")
        top = _opt_int(body, "top_logprobs", 0, MAX_TOP_LOGPROBS)
        if top and not logprobs:
            raise bad("top_logprobs", "'top_logprobs' requires 'logprobs' to be true")
    else:
        top = _opt_int(body, "logprobs", 0, MAX_TOP_LOGPROBS)
        logprobs = top is not None
    stream = opt_bool(body, "stream")
    options = body.get("stream_options")
    if options is not None and not isinstance(options, Mapping):
        raise bad("stream_options", "'stream_options' must be an object")
    include_usage = bool(stream and options and opt_bool(options, "include_usage"))
    stop_ids = body.get("stop_token_ids")
    return SamplingRequest(
        n=n or 1,
        temperature=temperature,
        top_p=top_p,
        max_tokens=max_tokens,
        stop=stop,
        seed=seed,
        logprobs=logprobs,
        top_logprobs=top or 0,
        return_token_ids=opt_bool(body, "return_token_ids"),
        tokens_as_ids=opt_bool(body, "return_tokens_as_token_ids"),
        stream=stream,
        include_usage=include_usage,
        ignore_eos=opt_bool(body, "ignore_eos"),
        stop_token_ids=frozenset(parse_token_ids(stop_ids, "stop_token_ids") if stop_ids else ()),
        skip_special_tokens=opt_bool(body, "skip_special_tokens", True),
    )


def check_model(body: Mapping[str, Any], served: str) -> None:
    """404 for a model name other than the served one (no name is fine)."""
    model = body.get("model")
    if model is not None and model != served:
        raise ApiError(
            404, f"The model `{model}` does not exist.", param="model", code="model_not_found"
        )


def context_error(prompt_tokens: int, limit: int, param: str, asked: int | None = None,
                  at_least: bool = False) -> ApiError:  # fmt: skip
    """vLLM's 400 for a prompt (plus completion) over the context length."""
    has = f"at least {prompt_tokens}" if at_least else str(prompt_tokens)
    tail = f" and {asked} tokens with the completion" if asked is not None else ""
    return ApiError(
        400,
        f"This model's maximum context length is {limit} tokens; the request has "
        f"{has} prompt tokens{tail}.",
        param=param,
        code="context_length_exceeded",
    )


def completion_budget(
    prompt_len: int, max_model_len: int, params: SamplingRequest, param: str
) -> int:
    """max_tokens to use; 400 when the prompt (plus max_tokens) exceeds the context."""
    limit = max_model_len
    if prompt_len >= limit or (params.max_tokens and prompt_len + params.max_tokens > limit):
        asked = prompt_len + (params.max_tokens or 0)
        raise context_error(prompt_len, limit, param, asked=asked)
    return params.max_tokens or (limit - prompt_len)


def check_request_size(tokens: int, reply_bytes: int, limits: Limits) -> None:
    """400 when a request may generate, or reply, more than this server allows.

    Checked from the parameters before any sampling, so a request that would
    build a 400 MB reply costs nothing (issue 12.11); vLLM answers its own
    limits (``max_logprobs``, the context length) the same way.
    """
    if tokens > limits.max_generated_tokens:
        raise ApiError(
            400,
            f"The request may generate {tokens} tokens (n x max_tokens over its prompts); "
            f"this server allows {limits.max_generated_tokens}. Lower n or max_tokens.",
            param="max_tokens",
            code="request_too_large",
        )
    if reply_bytes > limits.max_reply_bytes:
        raise ApiError(
            400,
            f"The reply could reach {reply_bytes} bytes; this server allows "
            f"{limits.max_reply_bytes}. Lower n, max_tokens or top_logprobs.",
            param="max_tokens",
            code="request_too_large",
        )


def parse_tools(body: Mapping[str, Any]) -> tuple[list[Any], bool]:
    """``tools`` and whether replies may become tool calls (not with tool_choice "none")."""
    tools = body.get("tools")
    if tools is None:
        return [], False
    if not isinstance(tools, list) or not all(
        isinstance(t, Mapping) and isinstance(t.get("function"), Mapping) for t in tools
    ):
        raise bad("tools", "'tools' must be a list of {type: function, function: {...}}")
    choice = body.get("tool_choice")
    return tools, bool(tools) and choice != "none"


def raw_prompts(body: Mapping[str, Any]) -> list[str | list[Any]]:
    """``prompt`` as str, [str], [int] or [[int]] -> one entry per prompt (not yet checked)."""
    raw = body.get("prompt")
    if isinstance(raw, str):
        return [raw]
    if isinstance(raw, list) and raw:
        if all(isinstance(p, (str, list)) for p in raw):
            return list(raw)
        return [raw]
    raise bad("prompt", "'prompt' must be a string, a list of strings, or token ids")


def prompt_ids(raw: str | list[Any], max_model_len: int) -> list[int]:
    """One prompt's ids; a prompt that cannot fit is refused before tokenizing or checking it."""
    if isinstance(raw, str):
        try:
            return encode_text(raw, max_model_len)
        except PromptTooLongError as e:
            raise context_error(e.at_least, max_model_len, "prompt", at_least=True) from None
    if len(raw) >= max_model_len:
        raise context_error(len(raw), max_model_len, "prompt")
    return parse_token_ids(raw, "prompt")


@cache
def _invalid_ids() -> tuple[int, frozenset[int]]:
    """The largest id and the ids below it that are no token (cl100k has gaps)."""
    enc = get_encoding()
    invalid = set()
    for t in range(enc.max_token_value + 1):
        try:
            enc.decode_single_token_bytes(t)
        except KeyError:
            invalid.add(t)
    return enc.max_token_value, frozenset(invalid)


def parse_token_ids(value: Any, param: str) -> list[int]:
    """A list of valid cl100k token ids (400 on unknown ids); C-speed checks, no per-id decode."""
    if not isinstance(value, list) or not all(type(t) is int for t in value):
        raise bad(param, f"'{param}' must be a list of integers")
    top, invalid = _invalid_ids()
    if value and (min(value) < 0 or max(value) > top or not invalid.isdisjoint(value)):
        unknown = next(t for t in value if t < 0 or t > top or t in invalid)
        raise bad(param, f"'{param}' contains unknown token id {unknown}")
    return value
