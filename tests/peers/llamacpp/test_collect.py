"""`rollout collect --config configs/llamacpp.yaml` against the real llama-server, as a user runs it."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from rollout import TokenSource, assemble
from rollout.export import read_jsonl
from tests.peers.llamacpp.conftest import LlamaServer

pytestmark = pytest.mark.peers

REPO = Path(__file__).resolve().parents[3]


def test_collect_writes_one_exact_row_per_episode(llama: LlamaServer, tmp_path: Path) -> None:
    out = tmp_path / "llamacpp.jsonl"
    proc = subprocess.run(
        [sys.executable, "-m", "rollout.cli", "collect", "--config", "configs/llamacpp.yaml",
         f"backend.urls=[{llama.base_url}]", f"output.path={out}", "limit=6", "progress=false"],
        cwd=REPO, capture_output=True, text=True, timeout=600,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stdout + proc.stderr
    episodes = read_jsonl(out)
    assert len(episodes) == 12  # 6 tasks x 2 samples
    calls = [c for ep in episodes for c in ep.calls]
    assert all(c.exact for c in calls), [c.notes for c in calls if not c.exact]
    first = [ep.calls[0] for ep in episodes]
    assert all(c.prompt_source is TokenSource.SERVER_RENDER for c in first)
    later = [c for ep in episodes for c in ep.calls[1:]]
    assert later and all(c.sent_as == "tokens" for c in later)
    result = assemble(episodes)
    assert len(result) == len(episodes) and result.num_drift == 0
    print(f"llama.cpp collect: {len(episodes)} episodes, {len(calls)} calls, {len(later)} as tokens, "
          f"{len(result)} rows, drift {result.num_drift}")  # fmt: skip
