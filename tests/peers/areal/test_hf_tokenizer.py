"""`backend.tokenizer: hf:<path>` with a real Hugging Face tokenizer: the offline
Qwen2.5 one prepare.sh builds for this tier (transformers is installed here)."""

from __future__ import annotations

from typing import Any

import areal  # noqa: F401  (the peer: a broken install fails this tier; tests/peers/conftest.py)
import pytest

from rollout.tokenizers import HfTokenizer, load_tokenizer, pair

pytestmark = pytest.mark.peers

TEXT = "The answer is 5, because 2 + 3 = 5. Naive cafes open at nine."


def test_server_tokens_from_the_same_tokenizer_pair_with_its_ids(qwen_path: str, qwen: Any) -> None:
    ids = qwen.encode(TEXT, add_special_tokens=False)
    # What a server without ids sends: each sampled token's bytes (logprobs.content[j].bytes).
    pieces = [qwen.decode([i]).encode() for i in ids]
    tokenizer = load_tokenizer(f"hf:{qwen_path}")
    assert isinstance(tokenizer, HfTokenizer)
    paired = pair(tokenizer, pieces, TEXT)
    assert paired.matched, paired.why
    assert paired.ids == ids


def test_another_models_tokens_are_flagged_not_paired(qwen_path: str, qwen: Any) -> None:
    # A piece no Qwen token spells alone (two words, as another vocabulary might merge them).
    pieces = [b"The answer", b" is", b" 5"]
    paired = pair(HfTokenizer(qwen_path), pieces, "The answer is 5")
    assert not paired.matched and "not one token of this tokenizer" in str(paired.why)
    assert paired.ids == qwen.encode("The answer is 5", add_special_tokens=False)  # re-encoded, inexact


def test_prompts_go_through_the_tokenizers_chat_template(qwen_path: str, qwen: Any) -> None:
    messages = [{"role": "user", "content": "What is 2 + 3?"}]
    ids = HfTokenizer(qwen_path).prompt_ids(messages)
    assert qwen.chat_template  # Qwen2.5's, with its <|im_start|> turns
    text = qwen.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)
    assert "<|im_start|>user\nWhat is 2 + 3?<|im_end|>" in text
    assert ids == qwen.encode(text, add_special_tokens=False)
    assert all(isinstance(t, int) for t in ids)
