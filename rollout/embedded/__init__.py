"""The embedded default: a tiny numpy policy behind a local vLLM-style server.

``Policy`` samples and differentiates; ``ChatTemplate`` renders messages to
cl100k ids; ``EmbeddedServer`` serves both over OpenAI-compatible HTTP
(``rollout serve`` in the foreground); ``push_weights`` updates a running one.

Modules by job: ``policy``, ``template`` and ``engine`` (token-by-token
generation) are the model; ``protocol`` (OpenAI routes) and
``token_protocol`` (vLLM's token routes) validate requests, ``payloads``
builds replies; ``handlers``, ``token_routes``, ``httpio`` and ``app`` are the
HTTP side, with ``state`` (snapshot, ``Limits``) and ``weights`` (checked
uploads); ``server`` runs it on a thread, ``client`` pushes weights to it.
"""

from .client import WeightPushError, push_weights
from .policy import ENCODING_NAME, END_ID, Distribution, Policy, PolicyConfig, get_encoding
from .server import EmbeddedServer
from .state import Limits
from .template import TOOL_CALL_PREFIX, ChatTemplate, ClientTemplate, TemplateError

__all__ = [
    "ENCODING_NAME",
    "END_ID",
    "TOOL_CALL_PREFIX",
    "ChatTemplate",
    "ClientTemplate",
    "Distribution",
    "EmbeddedServer",
    "Limits",
    "Policy",
    "PolicyConfig",
    "TemplateError",
    "WeightPushError",
    "get_encoding",
    "push_weights",
]
