"""The repository holds source, not artifacts: no wheels, archives, weights or large files.

A 2.9 MB py-spy wheel sat at the root for weeks because nothing looked. This
checks what git tracks (the tree a clone gets), so a build output or a
downloaded wheel fails the suite before it is pushed.
"""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
BINARY_SUFFIXES = (".whl", ".tar.gz", ".tgz", ".zip", ".so", ".npz", ".npy", ".bin", ".gguf",
                   ".safetensors", ".pt", ".pth", ".ckpt", ".egg")
MAX_BYTES = 256 * 1024  # the largest tracked file today is a 37 KB test module


def _tracked() -> list[str]:
    if shutil.which("git") is None or not (ROOT / ".git").exists():
        pytest.skip("not a git checkout (an installed or unpacked copy)")
    out = subprocess.run(["git", "ls-files", "-z"], cwd=ROOT, capture_output=True, check=True)
    return [p for p in out.stdout.decode().split("\0") if p]


def test_no_binary_artifacts_are_tracked() -> None:
    binaries = [p for p in _tracked() if p.lower().endswith(BINARY_SUFFIXES)]
    assert binaries == [], f"binary artifacts tracked by git (git rm them): {binaries}"


def test_no_large_files_are_tracked() -> None:
    large = {
        p: size
        for p in _tracked()
        if (ROOT / p).is_file() and (size := (ROOT / p).stat().st_size) > MAX_BYTES
    }
    assert large == {}, f"files over {MAX_BYTES} bytes tracked by git: {large}"
