"""Token-mode wire dialects, one small module each (`vllm`, `sglang`), plus what they share.

`base` holds requests-as-data and the sync/async drivers, `http` the
transport, `hermes` the client-side reply parser for servers without a
derender route.
"""

from rollout.dialects.base import Generation, Request, Sampled, adrive, drive
from rollout.dialects.http import HttpConnectionError, HttpError, HttpTimeoutError, JsonHttp

__all__ = [
    "Generation",
    "HttpConnectionError",
    "HttpError",
    "HttpTimeoutError",
    "JsonHttp",
    "Request",
    "Sampled",
    "adrive",
    "drive",
]
