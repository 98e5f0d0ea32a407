"""Typed errors: each names the problem and, where there is one, the fix."""

from __future__ import annotations


class CompatError(Exception):
    """Base class for every error this package raises."""


class MessageFormatError(CompatError, ValueError):
    """The messages are not a list of OpenAI chat messages."""


class UnsupportedResponseFormatError(CompatError, TypeError):
    """`response_format` is neither a pydantic model class nor an OpenAI format dict."""


class StructuredOutputError(CompatError):
    """No strategy produced output that validates against the response format.

    Raised only by a backend built with `strict=True`; by default the reply
    comes back with `parsed=None`, as CAMEL's does. `raw_text` is the last
    reply's text, so the caller can see what came back.
    """

    def __init__(self, message: str, raw_text: str | None, attempts: list[str]) -> None:
        super().__init__(f"{message} (tried: {', '.join(attempts)}); last raw text: {raw_text!r}")
        self.raw_text = raw_text
        self.attempts = attempts


class ModelCallError(CompatError):
    """The client failed, after the configured retries. `__cause__` is the last failure."""

    def __init__(self, message: str, attempts: int, status_code: int | None = None) -> None:
        super().__init__(message)
        self.attempts = attempts
        self.status_code = status_code


class ModelTimeoutError(ModelCallError, TimeoutError):
    """A call did not finish within the backend's timeout."""


class TokenizerUnavailableError(CompatError):
    """A tiktoken encoding could not be loaded (typically: no network).

    Deliberately not a `RuntimeError`: CAMEL's `ChatAgent` reads any
    RuntimeError raised while it builds its context as "token limit exceeded"
    and indexes `args[1]` (camel/agents/chat_agent.py L2952, v0.2.90), which
    would bury this message under an IndexError.
    """
