"""Token mode: an episode's later calls go to the server as token ids.

One package holds it all, beside the recorder that records what it sends:

- `stitch`: which calls can go as tokens (the parent, the new messages, the
  parameters) and why others fall back to messages;
- `server`: one server's facts (its dialect, its template's end-of-turn
  tokens, cached renders) and the bridge: the new messages rendered by the
  server's own template;
- `dialect`, `vllm`, `sglang`, `llamacpp`: one object per wire protocol, chosen by the
  probe; `hermes` parses replies on the client where the server cannot;
- `local_template`: the chat template, decoding and parsing on the client (a
  `LocalTemplate`, such as `HFTemplate`), so a call is one generate request;
- `call`: sends one stitched turn and turns the generation into the record's
  choices and the `ChatCompletion` (or replayed stream, `replay`) the agent gets;
- `plan`, `transport`: requests as data, run by a sync or an async driver over HTTP.
"""

from rollout.tokenmode import llamacpp, sglang, vllm  # noqa: F401  (defining a dialect registers it)
from rollout.tokenmode.call import TokenCall
from rollout.tokenmode.dialect import Dialect
from rollout.tokenmode.local_template import HFTemplate, LocalTemplate, load_template
from rollout.tokenmode.plan import Generation, Request, Sampled
from rollout.tokenmode.server import TokenServer, TokenServers, server_for
from rollout.tokenmode.stitch import (
    AMBIGUOUS_PARENT,
    BRANCH,
    EDITED_HISTORY,
    FIRST_CALL,
    INEXACT_PARENT,
    MULTIMODAL,
    NO_NEW_MESSAGES,
    NO_SERVER,
    TOOLS_CHANGED,
    StitchedTurn,
    Unavailable,
    plan_turn,
)
from rollout.tokenmode.transport import (
    HttpConnectionError,
    HttpError,
    HttpReplyTooLarge,
    HttpTimeoutError,
)

__all__ = [
    "AMBIGUOUS_PARENT",
    "BRANCH",
    "EDITED_HISTORY",
    "FIRST_CALL",
    "INEXACT_PARENT",
    "MULTIMODAL",
    "NO_NEW_MESSAGES",
    "NO_SERVER",
    "TOOLS_CHANGED",
    "Dialect",
    "Generation",
    "HFTemplate",
    "HttpConnectionError",
    "HttpError",
    "HttpReplyTooLarge",
    "HttpTimeoutError",
    "LocalTemplate",
    "Request",
    "Sampled",
    "StitchedTurn",
    "TokenCall",
    "TokenServer",
    "TokenServers",
    "Unavailable",
    "load_template",
    "plan_turn",
    "server_for",
]
