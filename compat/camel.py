"""`OpenAICompatibleModel` as a CAMEL `BaseModelBackend`, for when camel is installed.

`ChatAgent(model=...)` accepts only instances of camel's `BaseModelBackend`
(camel/agents/chat_agent.py `_resolve_models`, v0.2.90), so with camel
installed `compat.OpenAICompatibleModel` resolves to the class here. Importing
this module imports camel (about 1.5 s); `import compat` never does.

What runs is camel's own `run` / `arun` (its metaclass wraps them with
`preprocess_messages`, which strips `<think>` from the history and regroups
tool replies, and `postprocess_response`), its tool resolution, request
logging, stream wrappers, `token_limit` and `count_tokens_from_messages`;
under them, compat's `_run` / `_arun` with its clients, retries and
structured output. Kept from compat where camel 0.2.90 has a defect: a
custom client is used alone (camel builds a default client, which needs a
key), `timeout=0` stays 0, the caller's messages and config are not mutated,
the default token counter loads its encoding on first use (camel's needs the
network at construction), and stream + response_format in the config sends
one request (camel raises TypeError).
"""

from __future__ import annotations

import copy
from typing import Any

from camel.models import BaseModelBackend as CamelModelBackend
from camel.models._utils import try_modify_message_with_format
from camel.types import ModelType
from camel.utils import OpenAITokenCounter as CamelOpenAITokenCounter
from pydantic import BaseModel

from compat import openai_compatible
from compat.messages import validate_messages
from compat.token_counter import TOKENS_PER_MESSAGE, TOKENS_PER_NAME, OpenAITokenCounter

_Plain = openai_compatible.OpenAICompatibleModel


class CamelTokenCounter(CamelOpenAITokenCounter):
    """CAMEL's `OpenAITokenCounter` type, counting with compat's counter.

    CAMEL's tests and users check `isinstance(model.token_counter,
    camel.utils.OpenAITokenCounter)`. Its constructor loads the tiktoken
    encoding at once, which needs the network; this one loads it on first
    use, counts tool calls (camel counts them as 0) and takes compat's
    `encoding` / `fallback_encoding` options for offline use.
    """

    def __init__(
        self,
        model: Any = ModelType.GPT_4O_MINI,
        *,
        encoding: str | None = None,
        fallback_encoding: str | None = None,
    ) -> None:
        # camel's __init__ is not called: it loads the encoding eagerly.
        name = getattr(model, "value_for_tiktoken", model)
        self._counter = OpenAITokenCounter(name, encoding=encoding, fallback_encoding=fallback_encoding)
        self.model = self._counter.model
        self.tokens_per_message = TOKENS_PER_MESSAGE
        self.tokens_per_name = TOKENS_PER_NAME

    @property
    def encoding(self) -> Any:
        return self._counter.encoding

    def count_tokens_from_messages(self, messages: list[dict[str, Any]]) -> int:
        return self._counter.count_tokens_from_messages(messages)

    def encode(self, text: str) -> list[int]:
        return self._counter.encode(text)

    def decode(self, token_ids: list[int]) -> str:
        return self._counter.decode(token_ids)


class OpenAICompatibleModel(CamelModelBackend, _Plain):
    """compat's backend that CAMEL's `ChatAgent` and `ModelManager` accept.

    camel's base class comes first in the MRO, so its `run`, `arun`,
    `token_limit`, `preprocess_messages` and friends are the ones used; the
    methods camel leaves abstract, and `stream`, are taken from compat below.
    Client errors reach the caller as the client raised them, as from
    camel's class: `ChatAgent` backs off on `openai.RateLimitError` only.

    `extract_thinking_from_response=False` (camel's base-class option, which
    its OpenAICompatibleModel does not expose) keeps `<think>` blocks in the
    history and the reply as sampled: for training on exact tokens, where a
    stripped history no longer extends the previous prompt + completion.
    """

    typed_errors = False

    def __init__(self, *args: Any, extract_thinking_from_response: bool = True, **kwargs: Any) -> None:
        """compat's constructor (CAMEL's signature, plus `strict`), then camel's own state
        (request logging, `<think>` handling, `model_type` as camel's UnifiedModelType)
        on compat's copied config and resolved key, URL, timeout and counter."""
        _Plain.__init__(self, *args, **kwargs)
        CamelModelBackend.__init__(
            self, self.model_type, self.model_config_dict, self._api_key, self._url, self._token_counter,
            self._timeout, self._max_retries, extract_thinking_from_response,
        )

    _run = _Plain._run
    _arun = _Plain._arun
    stream = _Plain.stream

    @property
    def token_counter(self) -> Any:
        """The counter given, else CAMEL's default model (gpt-4o-mini) on `CamelTokenCounter`."""
        if self._token_counter is None:
            self._token_counter = CamelTokenCounter(ModelType.GPT_4O_MINI)
        return self._token_counter

    def preprocess_messages(self, messages: Any) -> Any:
        """compat's message checks (a clear error before any request), then camel's."""
        return super().preprocess_messages(validate_messages(messages))

    def _instruct(self, messages: list[dict[str, Any]], response_format: type[BaseModel]) -> list[dict[str, Any]]:
        """CAMEL's own schema prompt, on a copy of the last message (camel edits it in place)."""
        last = copy.copy(messages[-1])
        try_modify_message_with_format(last, response_format)
        return [*messages[:-1], last]
