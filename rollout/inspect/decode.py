"""The one token decoder both views share: an id to its text, never an exception.

Ids the encoding does not know (a Qwen id from vLLM is often >= 100277, the
end of cl100k) are shown as `#id`, flagged undecoded, instead of crashing.
"""

from __future__ import annotations

import logging
from collections.abc import Callable

logger = logging.getLogger(__name__)

Decoder = Callable[[int], str]
"""One token id -> its text; may raise for ids it does not know."""


def default_decoder() -> Decoder | None:
    """Single-token decoder on the offline cl100k encoding, or None if unavailable."""
    try:
        from compat import load_encoding

        enc = load_encoding("cl100k_base")
    except Exception as exc:
        logger.warning("no cl100k encoding (%s): tokens are shown as #id", exc)
        return None

    def decode(token: int) -> str:
        # Partial UTF-8 sequences (one token of a multi-byte character) show as \xNN.
        return enc.decode_single_token_bytes(int(token)).decode("utf-8", "backslashreplace")

    return decode


def token_text(decode: Decoder | None, token: int) -> tuple[str, bool]:
    """(text, decoded) for one token; `#id` when it cannot be decoded."""
    if decode is None:
        return f"#{token}", False
    try:
        text = decode(token)
    except Exception:
        return f"#{token}", False
    if not isinstance(text, str):
        return f"#{token}", False
    return text, True
