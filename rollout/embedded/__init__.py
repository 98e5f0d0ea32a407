"""The embedded default: a tiny numpy policy behind a local vLLM-style server.

``Policy`` samples and differentiates; ``ChatTemplate`` renders messages to
cl100k ids; ``EmbeddedServer`` serves both over OpenAI-compatible HTTP.
"""

from .policy import ENCODING_NAME, END_ID, Distribution, Policy, PolicyConfig, get_encoding
from .server import EmbeddedServer, push_weights, serve_main
from .template import ChatTemplate, TemplateError

__all__ = [
    "ENCODING_NAME",
    "END_ID",
    "ChatTemplate",
    "Distribution",
    "EmbeddedServer",
    "Policy",
    "PolicyConfig",
    "TemplateError",
    "get_encoding",
    "push_weights",
    "serve_main",
]
