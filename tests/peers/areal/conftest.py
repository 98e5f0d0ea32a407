"""The AReaL tier's shared fixtures: the offline Qwen2.5-Instruct tokenizer that
`prepare.sh` builds (`build_tokenizer.py`) under the peers' cache."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import pytest

HOME = Path(os.environ.get("ROLLOUT_PEERS_HOME", Path.home() / ".cache/rollout-compat/peers"))


@pytest.fixture(scope="session")
def qwen_path() -> str:
    """Its directory (what `hf:<path>` names); a missing build fails the tier, never skips it."""
    path = HOME / "cache" / "qwen25_tokenizer"
    if not (path / "tokenizer.json").exists():
        pytest.fail(f"no tokenizer at {path}: run bash tests/peers/setup.sh areal")
    return str(path)


@pytest.fixture(scope="session")
def qwen(qwen_path: str) -> Any:
    """The tokenizer itself, as transformers loads it."""
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(qwen_path)
