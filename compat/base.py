"""`BaseModelBackend`: the public surface every model backend shares (CAMEL's API)."""

from __future__ import annotations

import os
from abc import ABC, abstractmethod
from typing import Any

from pydantic import BaseModel

from compat.messages import validate_messages
from compat.token_counter import BaseTokenCounter, OpenAITokenCounter

DEFAULT_TIMEOUT_S = 180.0
UNKNOWN_TOKEN_LIMIT = 999_999_999
"""CAMEL's context window for a model it has no entry for (camel/types/unified_model_type.py, v0.2.90)."""


def model_name(model_type: Any) -> str:
    """A model id string from a str or an enum such as CAMEL's `ModelType`."""
    return str(getattr(model_type, "value", model_type))


def resolve_tools(tools: list[dict[str, Any]] | None, config: dict[str, Any]) -> list[dict[str, Any]] | None:
    """The tools of one request, by CAMEL's rule (base_model.py `_resolve_tools`, v0.2.90):
    None means the config's tools (when a list); an empty list means no override."""
    if tools is None:
        configured = config.get("tools")
        return configured if isinstance(configured, list) else None
    return tools or None


def resolve_timeout(timeout: float | None) -> float:
    """An explicit timeout wins, 0 included; else env MODEL_TIMEOUT; else 180 s."""
    if timeout is not None:
        return float(timeout)
    return float(os.environ.get("MODEL_TIMEOUT", DEFAULT_TIMEOUT_S))


class BaseModelBackend(ABC):
    """Holds the model id, request config, credentials and token counter.

    `run` / `arun` validate the messages and resolve the tools (CAMEL's rule,
    `resolve_tools`), then call `_run` / `_arun`, which subclasses implement.
    `model_config_dict` is copied, so later changes by the caller do not leak
    into requests.
    """

    def __init__(
        self,
        model_type: Any,
        model_config_dict: dict[str, Any] | None = None,
        api_key: str | None = None,
        url: str | None = None,
        token_counter: BaseTokenCounter | None = None,
        timeout: float | None = None,
        max_retries: int = 3,
    ) -> None:
        if max_retries < 0:
            raise ValueError(f"max_retries must be >= 0, got {max_retries}")
        self.model_type = model_type
        self.model_config_dict: dict[str, Any] = dict(model_config_dict or {})
        self._api_key = api_key
        self._url = url
        self._token_counter = token_counter
        self._timeout = resolve_timeout(timeout)
        self._max_retries = max_retries

    @property
    def token_counter(self) -> BaseTokenCounter:
        """The counter given at construction, else tiktoken's for gpt-4o-mini."""
        if self._token_counter is None:
            self._token_counter = OpenAITokenCounter()
        return self._token_counter

    def count_tokens_from_messages(self, messages: list[dict[str, Any]]) -> int:
        return self.token_counter.count_tokens_from_messages(validate_messages(messages))

    @property
    def token_limit(self) -> int:
        """The model's context window, as in CAMEL 0.2.90: the model type's own
        `token_limit` (CAMEL's `ModelType` has one), else 999_999_999 for unknown.

        Never `max_tokens`: ChatAgent truncates tool output to 90 % of this
        and sizes its memory by it (camel PR 3604).
        """
        limit = getattr(self.model_type, "token_limit", None)
        return limit if isinstance(limit, int) else UNKNOWN_TOKEN_LIMIT

    @property
    def stream(self) -> bool:
        return bool(self.model_config_dict.get("stream", False))

    def run(
        self,
        messages: list[dict[str, Any]],
        response_format: type[BaseModel] | None = None,
        tools: list[dict[str, Any]] | None = None,
    ) -> Any:
        """One chat completion: a ChatCompletion, a stream, or a parsed completion."""
        tools = resolve_tools(tools, self.model_config_dict)
        return self._run(validate_messages(messages), response_format, tools)

    async def arun(
        self,
        messages: list[dict[str, Any]],
        response_format: type[BaseModel] | None = None,
        tools: list[dict[str, Any]] | None = None,
    ) -> Any:
        """The async twin of `run`."""
        tools = resolve_tools(tools, self.model_config_dict)
        return await self._arun(validate_messages(messages), response_format, tools)

    @abstractmethod
    def _run(
        self,
        messages: list[dict[str, Any]],
        response_format: type[BaseModel] | None = None,
        tools: list[dict[str, Any]] | None = None,
    ) -> Any: ...

    @abstractmethod
    async def _arun(
        self,
        messages: list[dict[str, Any]],
        response_format: type[BaseModel] | None = None,
        tools: list[dict[str, Any]] | None = None,
    ) -> Any: ...
