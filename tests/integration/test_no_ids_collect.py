"""`rollout collect` against a server that sends logprobs but no ids, end to end.

The embedded server without `return_token_ids` answers as OpenAI does: each
sampled token named in `logprobs.content` (text and bytes), no ids. The CLI
runs as a user runs it; the journal it writes is read back.
"""

from __future__ import annotations

from pathlib import Path

from rollout.call_record import TokenSource
from rollout.export import read_jsonl
from tests.integration.test_cli import rollout, summary_rows

ARGS = ["collect", "--config", "configs/local.yaml", "limit=2", "samples_per_task=1", "progress=false",
        "backend.token_mode='off'"]  # fmt: skip
NO_IDS = "backend.request_token_ids=false"


def sampled(path: Path) -> dict[tuple[str, int, int], list[int]]:
    """Each (episode, call, choice)'s sampled ids, from an exact run's journal."""
    return {
        (e.uid, c.index, ch.index): ch.ids.tolist()
        for e in read_jsonl(path) for c in e.calls for ch in c.choices
    }  # fmt: skip


def test_without_a_tokenizer_logprobs_are_kept_and_the_run_fails_loudly(tmp_path: Path) -> None:
    out = tmp_path / "a.jsonl"
    proc = rollout(*ARGS, NO_IDS, f"output.path={out}")
    assert proc.returncode == 1, proc.stderr
    assert "backend.tokenizer" in proc.stderr
    assert "nothing here can train" in proc.stdout
    choices = [ch for e in read_jsonl(out) for c in e.calls for ch in c.choices]
    assert choices and all(ch.ids.size == 0 and ch.source == TokenSource.NONE for ch in choices)
    assert all(ch.server_logprobs is not None and ch.server_tokens == len(ch.server_logprobs) > 0 for ch in choices)
    assert int(summary_rows(proc.stdout)["sampled tokens"]) == sum(ch.num_sampled for ch in choices)


def test_a_matching_tokenizer_makes_the_run_trainable_with_the_servers_own_ids(tmp_path: Path) -> None:
    exact = tmp_path / "exact.jsonl"
    assert rollout(*ARGS, f"output.path={exact}").returncode == 0
    truth = sampled(exact)
    for name, spec in (("tiktoken", "tiktoken:cl100k_base"), ("server", "server")):
        out = tmp_path / f"{name}.jsonl"
        proc = rollout(*ARGS, NO_IDS, f"backend.tokenizer={spec}", f"output.path={out}")
        assert proc.returncode == 0, (spec, proc.stderr)
        assert int(summary_rows(proc.stdout)["trainable tokens"]) > 0
        matched = 0
        for e in read_jsonl(out):
            for c in e.calls:
                assert c.prompt_source == TokenSource.TOKENIZER and not c.exact  # flagged inexact
                for ch in c.choices:
                    if ch.source == TokenSource.TOKENIZER_MATCHED:
                        matched += 1  # same seed, same prompt: the ids the exact run recorded
                        assert ch.ids.tolist() == truth[(e.uid, c.index, ch.index)], spec
                        assert ch.logprobs is not None and len(ch.logprobs) == len(ch.ids)
                    else:  # e.g. a stop token the server's /tokenize reads as text: flagged
                        assert ch.mismatch and ch.logprobs is None and ch.server_logprobs is not None
        assert matched, spec


def test_an_unknown_tokenizer_name_is_a_config_error(tmp_path: Path) -> None:
    proc = rollout(*ARGS, NO_IDS, "backend.tokenizer=sentencepiece", f"output.path={tmp_path}/x.jsonl")
    assert proc.returncode == 2 and "backend.tokenizer" in proc.stderr
