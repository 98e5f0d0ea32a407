"""A peer tier whose peer does not import fails; it never passes green by skipping.

The peer folders import their peer unconditionally and tests/peers/conftest.py
leaves them out only where the peer is absent and no peer tier is running.
Here, for each peer this environment lacks, its folder is run as
tests/peers/run.sh runs it in the peer's venv (ROLLOUT_PEER set): as if the
venv's install were broken.
"""

from __future__ import annotations

import importlib.util
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
PEERS = ["areal", "camel", "verl"]


def _run(path: str, *args: str, **env: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "pytest", "-p", "no:cacheprovider", "-o", "addopts=", "-q",
         "-m", "peers", path, *args],
        cwd=ROOT, capture_output=True, text=True, timeout=300,
        env={**os.environ, "PYTHONPATH": str(ROOT), **env},
    )  # fmt: skip


@pytest.mark.parametrize("peer", PEERS)
def test_a_peer_tier_without_its_peer_fails(peer: str) -> None:
    if importlib.util.find_spec(peer) is not None:
        pytest.skip(f"{peer} is installed here; its tier runs for real")
    tier = _run(f"tests/peers/{peer}", ROLLOUT_PEER=peer)
    assert tier.returncode not in (0, 5), tier.stdout[-2000:]  # 5: nothing collected
    # The peer, or the first of its tier's requirements this environment lacks (torch).
    assert "ImportError while importing test module" in tier.stdout, tier.stdout[-2000:]
    # The main tier leaves the folder out (only this folder: the others, llama.cpp's among
    # them, start real servers where their peer is installed).
    others = [f"--ignore={d}" for d in sorted(ROOT.glob("tests/peers/*/")) if d.name != peer]
    main = _run("tests/peers", *others, ROLLOUT_PEER="")
    assert main.returncode in (0, 5) and f"'{peer}'" not in main.stdout, main.stdout[-2000:]
