"""Fixtures shared by every tier.

Tiers: `tests/unit` (no sockets: the real openai SDK over an in-process
transport), `tests/integration` (the embedded server over loopback HTTP, the
CLI as a subprocess, a real multi-node Ray cluster) and `tests/peers` (the
peers' own code: CAMEL, verl, AReaL; run by `.ci/run` in their own
environments). `python -m pytest` runs unit and integration.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import openai
import pytest

from rollout.embedded import EmbeddedServer

REPO = Path(__file__).resolve().parents[1]
"""The repository root: configs/ and examples/ live here."""

MODEL_ENV = (
    "OPENAI_API_KEY",
    "OPENAI_BASE_URL",
    "OPENAI_COMPATIBILITY_API_KEY",
    "OPENAI_COMPATIBILITY_API_BASE_URL",
    "MODEL_TIMEOUT",
)


@pytest.fixture
def clean_env(monkeypatch: pytest.MonkeyPatch) -> None:
    """No key, URL or timeout from the environment; retry pacing made instant.

    Only the waiting between retries is patched: the retry logic itself is real.
    """
    import compat.retry

    for name in MODEL_ENV:
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setattr(compat.retry, "SLEEP_SCALE", 0.0)
    monkeypatch.setattr(
        openai._base_client.BaseClient, "_calculate_retry_timeout", lambda *a, **k: 0.0
    )


@pytest.fixture(scope="module")
def server() -> Iterator[EmbeddedServer]:
    """The embedded server (seed 0) on a loopback port, shared by a test module."""
    with EmbeddedServer(seed=0) as srv:
        yield srv


@pytest.fixture(scope="module")
def client(server: EmbeddedServer) -> openai.OpenAI:
    """A plain openai client on `server`, without SDK retries."""
    return openai.OpenAI(base_url=server.base_url, api_key="unused", max_retries=0)
