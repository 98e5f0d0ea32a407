"""An OpenAI-compatible model backend with CAMEL's public API.

`from compat import OpenAICompatibleModel` replaces
`from camel.models import OpenAICompatibleModel`; injected clients (AReaL's
`ArealOpenAI`, an rLLM gateway client, a plain `openai` client or anything with
`.chat.completions.create`) are first-class.
"""

from compat.base import BaseModelBackend
from compat.clients import ClientPair
from compat.errors import (
    CompatError,
    MessageFormatError,
    ModelCallError,
    ModelTimeoutError,
    StructuredOutputError,
    TokenizerUnavailableError,
    UnsupportedResponseFormatError,
)
from compat.openai_compatible import OpenAICompatibleModel
from compat.token_counter import BaseTokenCounter, OpenAITokenCounter

__all__ = [
    "BaseModelBackend",
    "BaseTokenCounter",
    "ClientPair",
    "CompatError",
    "MessageFormatError",
    "ModelCallError",
    "ModelTimeoutError",
    "OpenAICompatibleModel",
    "OpenAITokenCounter",
    "StructuredOutputError",
    "TokenizerUnavailableError",
    "UnsupportedResponseFormatError",
]
