"""The request as a record stores it: a snapshot taken when the call is made.

No headers, keys or transport objects are kept, and what the agent may edit
later (its message list) is copied, so a record never changes after the call.
"""

from __future__ import annotations

from typing import Any

from rollout.redact import is_secret_name, redact

# Never stored: per-call transport plumbing, and (with credential-named keys, by the
# one redactor's naming rule) credentials.
_DROP_KEYS = frozenset(
    {"extra_headers", "extra_query", "api_key", "authorization", "headers", "timeout", "http_client"}
)


def unset(value: Any) -> bool:
    """The openai SDK's "argument not given" sentinels (its helpers pass them explicitly)."""
    return type(value).__name__ in ("NotGiven", "Omit")


def scrub(kwargs: dict[str, Any], memo: dict[int, dict[str, Any]] | None = None) -> dict[str, Any]:
    """The request as it may be stored: no headers, keys or transport objects.

    Messages are copied, so later edits by the agent cannot change the record.
    With `memo` (one per episode), a message already copied for an earlier call
    and still equal is shared instead of copied again: a multi-turn episode
    resends its whole history every turn, which would otherwise cost memory
    quadratic in its length. `extra_body` goes through the one redactor.
    """
    out: dict[str, Any] = {}
    for k, v in kwargs.items():
        if k in _DROP_KEYS or is_secret_name(k) or unset(v):
            continue
        if k == "response_format" and isinstance(v, type):
            v = {"type": "pydantic", "name": v.__name__}
        elif k == "extra_body" and isinstance(v, dict):
            v = redact(v)
        elif k == "messages":
            v = [_copy_message(m, memo) for m in v]
        out[k] = v
    return out


def _copy_message(m: Any, memo: dict[int, dict[str, Any]] | None) -> Any:
    if not isinstance(m, dict):
        return m
    if memo is not None:
        seen = memo.get(id(m))
        if seen is not None and seen == m:
            return seen
    copied = dict(m)
    if memo is not None:
        memo[id(m)] = copied
    return copied
