"""An OpenAI-compatible model backend with CAMEL's public API.

`from compat import OpenAICompatibleModel` replaces
`from camel.models import OpenAICompatibleModel`; injected clients (AReaL's
`ArealOpenAI`, an rLLM gateway client, a plain `openai` client or anything with
`.chat.completions.create`) are first-class.

With camel installed, `compat.OpenAICompatibleModel` is `compat.camel`'s
subclass, which is also a CAMEL `BaseModelBackend`, so
`ChatAgent(model=compat.OpenAICompatibleModel(...))` works. It is resolved on
first access: `import compat` stays fast and never imports camel.
"""

from __future__ import annotations

import importlib as _importlib
import importlib.util as _importlib_util
import typing as _typing

from compat.base import BaseModelBackend
from compat.clients import ClientPair, Forwarding, is_async_callable, is_async_client, resolve
from compat.errors import (
    CompatError,
    MessageFormatError,
    ModelCallError,
    ModelTimeoutError,
    StructuredOutputError,
    TokenizerUnavailableError,
    UnsupportedResponseFormatError,
)
from compat.retry import CALL_RETRY, EPISODE_RETRY, RetryPolicy, is_transient, retry_after_s
from compat.threads import to_thread
from compat.token_counter import BaseTokenCounter, OpenAITokenCounter, load_encoding

if _typing.TYPE_CHECKING:
    from compat.openai_compatible import OpenAICompatibleModel

_LAZY = frozenset({"OpenAICompatibleModel"})

__all__ = [
    "CALL_RETRY",
    "EPISODE_RETRY",
    "BaseModelBackend",
    "BaseTokenCounter",
    "ClientPair",
    "CompatError",
    "Forwarding",
    "MessageFormatError",
    "ModelCallError",
    "ModelTimeoutError",
    "OpenAICompatibleModel",
    "OpenAITokenCounter",
    "RetryPolicy",
    "StructuredOutputError",
    "TokenizerUnavailableError",
    "UnsupportedResponseFormatError",
    "is_async_callable",
    "is_async_client",
    "is_transient",
    "load_encoding",
    "resolve",
    "retry_after_s",
    "to_thread",
]


def __getattr__(name: str) -> _typing.Any:
    """`OpenAICompatibleModel`: the CAMEL backend when camel is installed, else the plain one."""
    if name != "OpenAICompatibleModel":
        raise AttributeError(f"module 'compat' has no attribute {name!r}")
    camel = _importlib_util.find_spec("camel") is not None
    module = _importlib.import_module("compat.camel" if camel else "compat.openai_compatible")
    globals()[name] = module.OpenAICompatibleModel
    return module.OpenAICompatibleModel
