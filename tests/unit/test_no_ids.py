"""Servers that send logprobs but no token ids (OpenAI, llama.cpp, hosted APIs).

The real openai SDK talks to `tests.fakes.WireServer` in its plain dialect:
`logprobs.content[j]` names each sampled token, no ids anywhere. Checked: the
server's logprobs and token count are kept without a tokenizer; a tokenizer's
ids carry them only when each id is the server's token (flagged inexact, and
trainable); a tokenizer that does not match is flagged and its logprobs never
reach an export as rollout logprobs.
"""

from __future__ import annotations

import re
from typing import Any

import numpy as np
import pytest

from rollout import PerServer, Recorder, TokenSource, assemble, load_tokenizer
from rollout.collection import ConfigError, load_config
from rollout.export import to_areal, to_rllm, to_verl
from rollout.tokenizers import TiktokenTokenizer, pair
from tests.fakes import ENC, WireServer, logprob_for
from tests.unit.test_wrap import M, run_in_episode, wrapped

TEXT = "a b c"  # cl100k: "a", " b", " c"


def reply(messages: list[dict[str, Any]], body: dict[str, Any]) -> str:
    return TEXT


def server_logprobs(ids: list[int]) -> list[float]:
    """What the plain WireServer reports for cl100k ids (float32-exact values)."""
    return [logprob_for(t, j) for j, t in enumerate(ids)]


def one_choice(server: WireServer, mode: str, tokenizer: Any = None, **kwargs: Any) -> Any:
    rec = Recorder(tokenizer=tokenizer)
    kwargs.setdefault("logprobs", True)
    ep = run_in_episode(rec, wrapped(server, mode, rec), mode, model="m", messages=M, **kwargs)
    (call,) = ep.calls
    return ep, call


@pytest.mark.parametrize("stream", [False, True])
@pytest.mark.parametrize("mode", ["sync", "async"])
def test_without_a_tokenizer_the_servers_logprobs_and_count_are_kept(mode: str, stream: bool) -> None:
    ep, call = one_choice(WireServer(dialect="plain", responder=reply), mode, stream=stream)
    (choice,) = call.choices
    ids = ENC.encode(TEXT)
    assert choice.ids.tolist() == [] and choice.source == TokenSource.NONE and choice.logprobs is None
    assert choice.server_logprobs is not None
    assert choice.server_logprobs.tolist() == server_logprobs(ids)
    assert choice.server_tokens == choice.num_sampled == len(ids)
    assert not choice.trainable
    assert any(f"{len(ids)} logprobs are kept unpaired" in n for n in call.notes)
    (sample,) = assemble(ep)
    assert sample.num_sampled == 0  # nothing to train on, and the record says why


def test_without_logprobs_the_usage_count_is_kept() -> None:
    _, call = one_choice(WireServer(dialect="plain", responder=reply), "sync", logprobs=False)
    (choice,) = call.choices
    assert choice.server_logprobs is None and choice.server_tokens == len(ENC.encode(TEXT))


@pytest.mark.parametrize("stream", [False, True])
@pytest.mark.parametrize("mode", ["sync", "async"])
def test_a_matching_tiktoken_tokenizer_pairs_ids_and_logprobs_flagged_inexact(mode: str, stream: bool) -> None:
    ep, call = one_choice(
        WireServer(dialect="plain", responder=reply), mode, tokenizer="tiktoken:cl100k_base", stream=stream
    )
    (choice,) = call.choices
    ids = ENC.encode(TEXT)
    assert choice.source == TokenSource.TOKENIZER_MATCHED
    assert choice.ids.tolist() == ids
    assert choice.logprobs is not None and choice.logprobs.tolist() == server_logprobs(ids)
    assert choice.server_logprobs is None and choice.mismatch is None
    assert not choice.exact and not call.exact and choice.trainable
    (sample,) = assemble(ep)
    assert not sample.exact and sample.has_logprobs
    assert sample.tokens[sample.loss_mask].tolist() == ids
    batch = to_verl([sample])
    assert batch["non_tensors"]["is_exact"].tolist() == [False]
    mask = batch["tensors"]["response_mask"][0].astype(bool)
    assert batch["tensors"]["rollout_log_probs"][0][mask].tolist() == server_logprobs(ids)


def test_non_canonical_server_tokens_are_paired_by_their_bytes() -> None:
    """A server may sample "a" " " "b" where re-encoding the text gives "a" " b": each
    piece is looked up as one token, so the ids are the sampled ones, not re-encoded."""
    chars = WireServer(dialect="plain", responder=reply, pieces=list)  # one token per character
    _, call = one_choice(chars, "sync", tokenizer=TiktokenTokenizer("cl100k_base"))
    (choice,) = call.choices
    assert choice.source == TokenSource.TOKENIZER_MATCHED
    assert choice.ids.tolist() == [ENC.encode_single_token(c) for c in TEXT]
    assert choice.ids.tolist() != ENC.encode(TEXT)
    assert choice.logprobs is not None and len(choice.logprobs) == len(TEXT)


def words(text: str) -> list[str]:
    """Another model's tokens: words with their trailing space ("a ", "b ", "c")."""
    return re.findall(r"\S+\s*|\s+", text)


@pytest.mark.parametrize("mode", ["sync", "async"])
def test_a_mismatched_tokenizer_is_flagged_and_its_logprobs_are_not_exported(mode: str) -> None:
    # Same count (3 tokens each way), other boundaries: re-encoded ids must not get these logprobs.
    assert len(words(TEXT)) == len(ENC.encode(TEXT))
    server = WireServer(dialect="plain", responder=reply, pieces=words)
    ep, call = one_choice(server, mode, tokenizer="tiktoken:cl100k_base")
    (choice,) = call.choices
    assert choice.source == TokenSource.TOKENIZER and not choice.trainable
    assert choice.mismatch is not None and "not one token" in choice.mismatch
    assert any(choice.mismatch in n for n in call.notes)
    assert choice.logprobs is None
    assert choice.server_logprobs is not None and choice.server_logprobs.tolist() == [-0.125, -0.25, -0.375]
    (sample,) = assemble(ep)
    assert not sample.has_logprobs and sample.num_sampled == 0
    verl = to_verl([sample])
    assert "rollout_log_probs" not in verl["tensors"] and verl["meta_info"]["num_missing_logprobs"] == 1
    assert not verl["tensors"]["response_mask"].any()
    areal = to_areal([sample])
    assert not areal["logprobs"].any() and not areal["loss_mask"].any()
    (step,) = to_rllm(ep)[0]["trajectories"][0]["steps"]
    assert step["logprobs"] == [] and step["model_output"]["logprobs"] == []


def test_pair_says_why_it_did_not_pair() -> None:
    tok = TiktokenTokenizer("cl100k_base")
    assert pair(tok, None, TEXT).why is not None  # nothing to check against
    partial = pair(tok, [b"a", None, b" c"], TEXT)
    assert not partial.matched and "1 of 3 server tokens have no text" in str(partial.why)
    matched = pair(tok, [b"a", b" b", b" c"], TEXT)
    assert matched.matched and matched.ids == ENC.encode(TEXT)


def test_tokenizer_names_are_checked_with_clear_errors() -> None:
    assert isinstance(load_tokenizer("server"), PerServer)
    assert isinstance(load_tokenizer("tiktoken:cl100k_base"), TiktokenTokenizer)
    with pytest.raises(ConfigError, match="must be 'server', 'tiktoken:<encoding>' or 'hf:"):
        load_tokenizer("cl100k_base")
    with pytest.raises(ConfigError, match=r"backend\.tokenizer"):
        load_config(overrides=["backend.tokenizer=tiktoken"])
    assert load_config(overrides=["backend.tokenizer=hf:Qwen/Qwen3-0.6B"]).backend.tokenizer == "hf:Qwen/Qwen3-0.6B"


def test_a_hugging_face_tokenizer_without_transformers_is_a_config_error(monkeypatch: pytest.MonkeyPatch) -> None:
    import sys

    monkeypatch.setitem(sys.modules, "transformers", None)  # as if not installed
    load_tokenizer.cache_clear()
    with pytest.raises(ConfigError, match=r"pip install 'rollout-compat\[hf\]'"):
        load_tokenizer("hf:gpt2")
    load_tokenizer.cache_clear()


def test_records_of_a_run_without_ids_are_compact() -> None:
    _, call = one_choice(WireServer(dialect="plain", responder=reply), "sync")
    (choice,) = call.choices
    assert isinstance(choice.server_logprobs, np.ndarray) and choice.server_logprobs.dtype == np.float32
    assert choice.nbytes == choice.server_logprobs.nbytes  # no ids, no per-token versions


# --- llama.cpp: each logprob entry names its token's id ------------------------------


@pytest.mark.parametrize("mode", ["sync", "async"])
def test_llamacpp_logprob_ids_are_the_exact_sampled_ids(mode: str) -> None:
    _, call = one_choice(WireServer(dialect="llamacpp", responder=reply), mode)
    (choice,) = call.choices
    ids = ENC.encode(TEXT)
    assert choice.source == TokenSource.LOGPROB_IDS and choice.exact
    assert choice.ids.tolist() == ids
    assert choice.logprobs is not None and choice.logprobs.tolist() == server_logprobs(ids)


def test_llamacpp_logprob_ids_that_miss_sampled_tokens_are_not_exact() -> None:
    """llama.cpp leaves a stop string's tokens out of its logprobs; usage still counts them."""
    _, call = one_choice(WireServer(dialect="llamacpp", responder=reply, unnamed_tail=1), "sync")
    (choice,) = call.choices
    assert choice.source == TokenSource.NONE and not choice.exact
    assert any("logprobs name 2 of the 3 sampled tokens" in n for n in call.notes), call.notes


def test_llamacpp_logprob_ids_in_a_stream_without_usage_are_not_exact() -> None:
    _, call = one_choice(WireServer(dialect="llamacpp", responder=reply), "sync", stream=True)
    assert not call.choices[0].exact
    assert any("no usage to check" in n for n in call.notes), call.notes
