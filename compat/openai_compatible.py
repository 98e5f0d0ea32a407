"""`OpenAICompatibleModel`: CAMEL's backend API over any OpenAI-shaped client.

Drop-in for `camel.models.OpenAICompatibleModel` (same constructor, `run` /
`arun`, structured output, streaming, token counting), with injected clients
treated as first-class:

- either client alone serves `run` and `arun` (see `compat.clients`);
- with a custom client no default client is built and no API key is needed;
- structured output works on clients without `parse` (see `compat.structured`);
- the caller's messages and config are never mutated.

Requests are built as CAMEL 0.2.90 builds them, so the same input sends the
same request. When camel is installed, `compat.OpenAICompatibleModel` is the
subclass in `compat.camel`, which is also a CAMEL `BaseModelBackend`.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Generator, Iterator
from contextlib import contextmanager
from typing import Any, ClassVar

from pydantic import BaseModel

from compat.base import BaseModelBackend, model_name
from compat.clients import ClientPair, resolve
from compat.errors import (
    CompatError,
    ModelCallError,
    ModelTimeoutError,
    UnsupportedResponseFormatError,
)
from compat.retry import CALL_RETRY, in_chain, is_transient
from compat.structured import (
    CREATE,
    Attempt,
    StructuredRequest,
    check_response_format,
    default_instruct,
    fallback_plan,
    json_schema_format,
    native_parse_path,
    native_plan,
    native_stream_path,
    one_attempt,
)
from compat.token_counter import BaseTokenCounter

logger = logging.getLogger(__name__)

ResponseFormat = type[BaseModel] | dict[str, Any]


def _advance(plan: Generator[Attempt, Any, Any], reply: Any, error: Exception | None) -> Attempt:
    """Hand a plan the outcome of its last attempt; returns its next attempt."""
    return plan.throw(error) if error is not None else plan.send(reply)


class OpenAICompatibleModel(BaseModelBackend):
    """A backend for any server or client that speaks OpenAI chat completions.

    `strict=True`: a structured reply that does not validate raises
    `StructuredOutputError` with its raw text, instead of coming back with
    `parsed=None` as CAMEL's does.
    """

    typed_errors: ClassVar[bool] = True
    """Client failures surface as `ModelCallError`; the CAMEL subclass lets the
    client's own errors through, as CAMEL's class does."""

    def __init__(
        self,
        model_type: Any,
        model_config_dict: dict[str, Any] | None = None,
        api_key: str | None = None,
        url: str | None = None,
        token_counter: BaseTokenCounter | None = None,
        timeout: float | None = None,
        max_retries: int = 3,
        client: Any | None = None,
        async_client: Any | None = None,
        *,
        strict: bool = False,
        **kwargs: Any,
    ) -> None:
        self._strict = strict
        api_key = api_key if api_key is not None else os.environ.get("OPENAI_COMPATIBILITY_API_KEY")
        url = url if url is not None else os.environ.get("OPENAI_COMPATIBILITY_API_BASE_URL")
        super().__init__(
            model_type, model_config_dict, api_key, url, token_counter, timeout, max_retries
        )
        self._custom = client is not None or async_client is not None
        if self._custom:
            if kwargs:
                logger.info("ignoring client kwargs %s: custom clients were given", sorted(kwargs))
            self._client = client
            self._async_client = async_client
            # The SDK retries on its own; a custom client gets our retries and timeout.
            self._retries = max_retries
        else:
            self._client, self._async_client = self._build_clients(kwargs)
            self._retries = 0
        self._clients = ClientPair(
            self._client, self._async_client, timeout=self._timeout, enforce_timeout=self._custom
        )

    def _build_clients(self, kwargs: dict[str, Any]) -> tuple[Any, Any]:
        from openai import AsyncOpenAI, OpenAI

        common: dict[str, Any] = {
            "timeout": self._timeout,
            "max_retries": self._max_retries,
            "base_url": self._url,
            "api_key": self._api_key,
        }
        # An `http_client` fits only one of the two SDK clients; give it to that one.
        http_client = kwargs.pop("http_client", None)
        is_async_http = http_client is not None and hasattr(http_client, "aclose")
        sync_extra = {"http_client": http_client} if http_client is not None and not is_async_http else {}
        async_extra = {"http_client": http_client} if is_async_http else {}
        return (
            OpenAI(**common, **kwargs, **sync_extra),
            AsyncOpenAI(**common, **kwargs, **async_extra),
        )

    @property
    def model_name(self) -> str:
        return model_name(self.model_type)

    @property
    def client(self) -> Any | None:
        """The sync client calls go through (injected or built), or None."""
        return self._client

    @property
    def async_client(self) -> Any | None:
        """The async client calls go through (injected or built), or None."""
        return self._async_client

    # --- request building (shared by both paths) ------------------------------

    def _chat_kwargs(self, messages: list[dict[str, Any]], tools: list[dict[str, Any]] | None) -> dict[str, Any]:
        """`create` kwargs as CAMEL builds them (base_model.py `_prepare_request_config`,
        v0.2.90): messages, model, then the config; `tools` (already resolved, see
        `compat.base.resolve_tools`) replace the config's, and `parallel_tool_calls`
        is dropped without them, since OpenAI rejects it there."""
        config = {k: v for k, v in self.model_config_dict.items() if k not in ("messages", "model")}
        if not config.get("response_format"):  # a falsy format would be sent as null
            config.pop("response_format", None)
        if tools:
            config["tools"] = tools
        else:
            config.pop("parallel_tool_calls", None)
        return self.prepare_request({"messages": messages, "model": self.model_name, **config})

    def prepare_request(self, kwargs: dict[str, Any]) -> dict[str, Any]:
        """Adjust one logical request before it is sent (retries reuse the result).

        The extension point for subclasses, e.g. a per-call seed; the default
        returns `kwargs` unchanged. `kwargs` is a fresh dict, safe to modify.
        """
        return kwargs

    def _response_format(self, response_format: Any) -> ResponseFormat | None:
        fmt = response_format or self.model_config_dict.get("response_format")
        if not fmt:
            return None
        if isinstance(fmt, dict):
            if fmt.get("type") not in ("text", "json_object", "json_schema"):
                raise UnsupportedResponseFormatError(
                    f"response_format dict must have type text, json_object or json_schema, got {fmt!r}"
                )
            return fmt
        return check_response_format(fmt)

    def _side(self, asynchronous: bool) -> Any:
        """The client a sync (or async) call goes to, as `ClientPair` picks it."""
        first, second = (self._async_client, self._client) if asynchronous else (self._client, self._async_client)
        return first if first is not None else second

    def _instruct(self, messages: list[dict[str, Any]], response_format: type[BaseModel]) -> list[dict[str, Any]]:
        """A copy of `messages` asking for JSON that matches the schema (the json_object retry)."""
        return default_instruct(messages, response_format)

    def _parse_plan(
        self, messages: list[dict[str, Any]], response_format: ResponseFormat, tools: Any, asynchronous: bool
    ) -> Generator[Attempt, Any, Any]:
        """Every response_format goes to parse, as in CAMEL; a format dict is sent once, as is."""
        request = self._chat_kwargs(messages, tools)
        path = native_parse_path(self._side(asynchronous))
        if isinstance(response_format, dict):
            request.pop("stream", None)
            return one_attempt(Attempt("format", path or CREATE, {**request, "response_format": response_format}))
        req = StructuredRequest(messages, response_format, request, self._instruct, self._strict)
        return native_plan(req, path) if path is not None else fallback_plan(req)

    def _stream_parse_attempt(
        self, messages: list[dict[str, Any]], response_format: ResponseFormat, tools: Any, asynchronous: bool
    ) -> Attempt:
        """The SDK's stream manager beside a native parse (CAMEL's path), else a create stream.

        A manager is used only from a client of the caller's own kind: `ClientPair`
        bridges chunk streams across the sync/async divide, not managers."""
        kwargs = self._chat_kwargs(messages, tools)
        kwargs.pop("stream", None)
        client = self._async_client if asynchronous else self._client
        path = native_parse_path(client)
        if path is not None and resolve(client, native_stream_path(path)) is not None:
            return Attempt("native_stream", native_stream_path(path), {**kwargs, "response_format": response_format})
        fmt = response_format if isinstance(response_format, dict) else json_schema_format(response_format)
        return Attempt("json_schema_stream", CREATE, {**kwargs, "stream": True, "response_format": fmt})

    @contextmanager
    def _typed_errors(self) -> Iterator[None]:
        try:
            yield
        except CompatError:
            raise
        except Exception as exc:
            if not self.typed_errors:
                raise
            raise ModelCallError(
                f"{self.model_name}: {type(exc).__name__}: {exc}",
                attempts=1,
                status_code=getattr(exc, "status_code", None),
            ) from exc

    def _give_up(self, exc: Exception, attempts: int) -> Exception:
        """What a call raises once its retries are spent (`exc` itself without typed errors)."""
        if not self.typed_errors:
            return exc
        refused = in_chain(exc, ConnectionError)
        timed_out = refused is None and (
            isinstance(exc, TimeoutError) or any(c.__name__ == "APITimeoutError" for c in type(exc).__mro__)
        )
        kind = ModelTimeoutError if timed_out else ModelCallError
        detail = f"{type(exc).__name__}: {exc}"
        if refused is not None:  # some transports report a refused connection as a timeout
            detail = f"could not connect: {type(refused).__name__}: {refused}"
        err = kind(
            f"{self.model_name}: failed after {attempts} attempt(s): {detail}",
            attempts=attempts,
            status_code=getattr(exc, "status_code", None),
        )
        err.__cause__ = exc
        return err

    # --- sync path --------------------------------------------------------------

    def _run(
        self,
        messages: list[dict[str, Any]],
        response_format: type[BaseModel] | None = None,
        tools: list[dict[str, Any]] | None = None,
    ) -> Any:
        fmt = self._response_format(response_format)
        with self._typed_errors():
            if fmt is None:
                return self._request_chat_completion(messages, tools)
            if self.stream:
                return self._request_stream_parse(messages, fmt, tools)
            return self._request_parse(messages, fmt, tools)

    def _request_chat_completion(
        self, messages: list[dict[str, Any]], tools: list[dict[str, Any]] | None = None
    ) -> Any:
        return self._execute(Attempt("chat", CREATE, self._chat_kwargs(messages, tools)))

    def _request_parse(
        self,
        messages: list[dict[str, Any]],
        response_format: ResponseFormat,
        tools: list[dict[str, Any]] | None = None,
    ) -> Any:
        plan = self._parse_plan(messages, response_format, tools, asynchronous=False)
        attempt = next(plan)
        while True:
            try:
                outcome: tuple[Any, Exception | None] = (self._execute(attempt), None)
            except Exception as exc:
                outcome = (None, exc)
            try:
                attempt = _advance(plan, *outcome)
            except StopIteration as done:
                return done.value

    def _request_stream_parse(
        self,
        messages: list[dict[str, Any]],
        response_format: ResponseFormat,
        tools: list[dict[str, Any]] | None = None,
    ) -> Any:
        return self._execute(self._stream_parse_attempt(messages, response_format, tools, asynchronous=False))

    def _execute(self, attempt: Attempt) -> Any:
        for i in range(self._retries + 1):
            try:
                return self._clients.call(attempt.path, **attempt.kwargs)
            except Exception as exc:
                if not is_transient(exc):
                    raise
                if i == self._retries:
                    raise self._give_up(exc, i + 1)  # noqa: B904 (its cause is set; or it is `exc`)
                CALL_RETRY.sleep(i, exc)
        raise AssertionError("unreachable")

    # --- async path (the twin of the above) ------------------------------------

    async def _arun(
        self,
        messages: list[dict[str, Any]],
        response_format: type[BaseModel] | None = None,
        tools: list[dict[str, Any]] | None = None,
    ) -> Any:
        fmt = self._response_format(response_format)
        with self._typed_errors():
            if fmt is None:
                return await self._arequest_chat_completion(messages, tools)
            if self.stream:
                return await self._arequest_stream_parse(messages, fmt, tools)
            return await self._arequest_parse(messages, fmt, tools)

    async def _arequest_chat_completion(
        self, messages: list[dict[str, Any]], tools: list[dict[str, Any]] | None = None
    ) -> Any:
        return await self._aexecute(Attempt("chat", CREATE, self._chat_kwargs(messages, tools)))

    async def _arequest_parse(
        self,
        messages: list[dict[str, Any]],
        response_format: ResponseFormat,
        tools: list[dict[str, Any]] | None = None,
    ) -> Any:
        plan = self._parse_plan(messages, response_format, tools, asynchronous=True)
        attempt = next(plan)
        while True:
            try:
                outcome: tuple[Any, Exception | None] = (await self._aexecute(attempt), None)
            except Exception as exc:
                outcome = (None, exc)
            try:
                attempt = _advance(plan, *outcome)
            except StopIteration as done:
                return done.value

    async def _arequest_stream_parse(
        self,
        messages: list[dict[str, Any]],
        response_format: ResponseFormat,
        tools: list[dict[str, Any]] | None = None,
    ) -> Any:
        attempt = self._stream_parse_attempt(messages, response_format, tools, asynchronous=True)
        return await self._aexecute(attempt)

    async def _aexecute(self, attempt: Attempt) -> Any:
        for i in range(self._retries + 1):
            try:
                return await self._clients.acall(attempt.path, **attempt.kwargs)
            except Exception as exc:
                if not is_transient(exc):
                    raise
                if i == self._retries:
                    raise self._give_up(exc, i + 1)  # noqa: B904 (its cause is set; or it is `exc`)
                await CALL_RETRY.asleep(i, exc)
        raise AssertionError("unreachable")
