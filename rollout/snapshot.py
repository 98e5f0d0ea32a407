"""The request as a record stores it: a snapshot taken when the call is made.

No headers, keys or transport objects are kept, and what the agent may edit
later (its message list) is copied, so a record never changes after the call.
"""

from __future__ import annotations

import copy
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


def scrub(kwargs: dict[str, Any], memo: dict[int, Any] | None = None) -> dict[str, Any]:
    """The request as it may be stored: no headers, keys or transport objects.

    Everything the agent could edit later is deep-copied (a message's content
    list, a tool's schema, a stop list), so a record never changes after its
    call. With `memo` (one per episode), a message or tools list already copied
    for an earlier call and still equal is shared instead of copied again: a
    multi-turn episode resends its whole history every turn, which would
    otherwise cost memory quadratic in its length. `extra_body` goes through
    the one redactor (which copies).
    """
    out: dict[str, Any] = {}
    for k, v in kwargs.items():
        if k in _DROP_KEYS or is_secret_name(k) or unset(v):
            continue
        if k == "response_format" and isinstance(v, type):
            v = {"type": "pydantic", "name": v.__name__}
        elif k == "extra_body" and isinstance(v, dict):
            v = redact(v)
        elif k == "messages" and isinstance(v, (list, tuple)):
            v = [_shared(m, memo) for m in v]
        elif k == "tools":
            v = _shared(v, memo)
        else:
            v = frozen_copy(v)
        out[k] = v
    return out


def plain(value: Any) -> Any:
    """`value` as plain JSON data, in a copy that shares no dict or list with it: pydantic
    objects dumped, None-valued keys and the SDK's "not given" sentinels left out (as
    `model_dump(exclude_none=True)` leaves them out). How a record keeps a reply's message
    and usage, how messages are compared with recorded ones, and what token mode sends."""
    if value is None or unset(value):
        return None
    if isinstance(value, type):  # `parse(response_format=Model)`: recorded by name (`scrub`)
        return {"type": "pydantic", "name": value.__name__}
    if hasattr(value, "model_dump"):
        value = value.model_dump(exclude_none=True)
    if isinstance(value, dict):
        return {k: plain(v) for k, v in value.items() if v is not None and not unset(v)}
    if isinstance(value, (list, tuple)):
        return [plain(v) for v in value]
    return value


def frozen_copy(value: Any) -> Any:
    """A deep copy of a JSON-like value (dicts, lists, pydantic models); scalars as they are."""
    if isinstance(value, (str, int, float, bool)) or value is None:
        return value
    if isinstance(value, dict):
        return {k: frozen_copy(v) for k, v in value.items()}
    if isinstance(value, tuple):
        return tuple(frozen_copy(v) for v in value)
    if isinstance(value, list):
        return [frozen_copy(v) for v in value]
    if isinstance(value, type):  # `parse(text_format=Model)`: recorded by name, as response_format
        return {"type": "pydantic", "name": value.__name__}
    copier = getattr(value, "model_copy", None)
    if callable(copier):  # a pydantic message or tool param
        return copier(deep=True)
    try:
        return copy.deepcopy(value)
    except Exception:  # an object that cannot be copied is kept as its text, never shared
        return repr(value)


def _shared(value: Any, memo: dict[int, Any] | None) -> Any:
    """`frozen_copy(value)`, or the copy made for an earlier call if `value` is still equal to it."""
    if isinstance(value, (str, int, float, bool)) or value is None:
        return value
    if memo is not None:
        seen = memo.get(id(value))
        if seen is not None and type(seen) is type(value) and seen == value:
            return seen
    copied = frozen_copy(value)
    if memo is not None:
        memo[id(value)] = copied
    return copied
