"""The one redactor: no API key or auth header reaches a record, log or export.

Two rules, applied to everything written (journal rows, Parquet, HTML, rLLM
dicts) and to requests as they are recorded:

- by name: a mapping key that names a credential (`api_key`, `Authorization`,
  `extra_headers`, `session_token`, `credentials`, `password`, ...) is dropped
  with its value, at any depth outside user data (messages, tools, schemas,
  the chat template's options and documents);
- by value: every known secret (keys the backend, the wrapped clients or the
  caller registered) is replaced wherever it appears in any string, as are
  `Bearer ...` tokens, `sk-...` keys, `user:secret@` in URLs and key-like
  query parameters. This catches a server that echoes the key in an error.

`register_secret` is process-wide: a key registered once is scrubbed from
every later write. Values shorter than `MIN_SECRET_LEN` are not registered
(placeholders such as "unused" would otherwise be scrubbed from prose).
"""

from __future__ import annotations

import functools
import json
import re
import threading
from typing import Any

REDACTED = "[REDACTED]"
MIN_SECRET_LEN = 8

_NAME = re.compile(
    r"(^|_)(api_?key|apikey|key|secret|secrets|password|passwd|passphrase|credential|credentials"
    r"|authorization|auth|cookie|bearer|token|headers)$"
    r"|^(access|refresh|session|id|auth|bearer)_token(s)?($|_)"
)
# Matched against the lower-cased key with "-" read as "_": api_key, apiKey
# (as apikey), X-Api-Key, Authorization, Proxy-Authorization, extra_headers,
# session_token, client_secret, ... but not max_tokens or prompt_token_ids.

USER_DATA = frozenset({"messages", "tools", "functions", "response_format", "input", "prompt",
                       "chat_template_kwargs", "documents"})  # fmt: skip
"""Request keys whose subtrees are the user's data: kept as sent (value rule only). The template's
options and documents are rendered into the prompt: a record that dropped `bos_token` there would
not say what the model saw, nor let token mode see the option change."""

_PATTERNS = (
    ("bearer", re.compile(r"(?i)\b(bearer\s+)[A-Za-z0-9._~+/=-]{8,}"), r"\1" + REDACTED),
    ("sk-", re.compile(r"\bsk-[A-Za-z0-9_-]{16,}"), REDACTED),
    ("://", re.compile(r"(?i)\b([a-z][a-z0-9+.-]*://[^/@\s:]*:)[^/@\s]+@"), r"\1" + REDACTED + "@"),
    (
        "=",
        re.compile(r"(?i)([?&](?:api[_-]?key|key|token|access_token|auth|password|secret)=)[^&#\s\"']+"),
        r"\1" + REDACTED,
    ),
)
# (trigger, pattern, replacement): every match contains its trigger (in the lower-cased
# text), and a substring test is ~100x cheaper than a regex scan, so most strings
# (messages, ids) are checked at C speed and never scanned.

_lock = threading.Lock()
_secrets: tuple[str, ...] = ()


def register_secret(value: Any) -> None:
    """Scrub `value` from everything written from now on (no-op for short or empty values)."""
    global _secrets
    if not isinstance(value, str) or len(value) < MIN_SECRET_LEN:
        return
    forms = {value, json.dumps(value)[1:-1]}  # as written raw, and inside a JSON string
    with _lock:
        _secrets = tuple(sorted(set(_secrets) | forms, key=len, reverse=True))


def is_secret_name(key: Any) -> bool:
    """Whether a mapping key names a credential (see the module docstring)."""
    return isinstance(key, str) and _is_secret_name(key)


@functools.lru_cache(maxsize=4096)
def _is_secret_name(key: str) -> bool:  # the same few keys recur in every record
    return bool(_NAME.search(key.lower().replace("-", "_")))


def redact_text(text: str) -> str:
    """`text` with known secrets and credential-shaped substrings replaced."""
    for secret in _secrets:
        if secret in text:
            text = text.replace(secret, REDACTED)
    lower = text.lower()
    for trigger, pattern, repl in _PATTERNS:
        if trigger in lower:
            text = pattern.sub(repl, text)
    return text


def redact(obj: Any, *, names: bool = True) -> Any:
    """A redacted copy of a JSON-like tree: credential-named keys, then secret values.

    With `names=False` only the value rule applies (user data such as a task).
    """
    if isinstance(obj, str):
        return redact_text(obj)
    if isinstance(obj, dict):
        out: dict[Any, Any] = {}
        for k, v in obj.items():
            if not (names and is_secret_name(k)):
                out[k] = redact(v, names=names and k not in USER_DATA)
        return out
    if isinstance(obj, (list, tuple)):
        return [redact(v, names=names) for v in obj]
    return obj
