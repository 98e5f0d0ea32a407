"""The embedded server's lifecycle: its own event loop on a background thread.

Requests run as coroutines on that one loop; each choice samples token by
token and yields to the loop between steps, so hundreds of concurrent
requests interleave. Use it as a context manager
(``with EmbeddedServer() as srv: srv.base_url``); ``rollout serve`` runs the
same server in the foreground.
"""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Mapping

import numpy as np
from aiohttp import web

from .app import build_app
from .policy import Policy
from .policy_api import ServedPolicy
from .state import Limits, ServerState

BACKLOG = 4096


async def _start_site(state: ServerState, host: str, port: int) -> tuple[web.AppRunner, int]:
    timeout = state.limits.read_timeout_s
    runner = web.AppRunner(
        build_app(state),
        access_log=None,
        shutdown_timeout=1.0,
        # A connection that has not delivered a whole request line and headers
        # within the read timeout is closed, as is an idle keep-alive one
        # (aiohttp's own default is an hour).
        keepalive_timeout=timeout,
        # After refusing a body, read and drop the rest for at most this long.
        lingering_time=min(timeout, 2.0),
    )
    await runner.setup()
    site = web.TCPSite(runner, host, port, backlog=BACKLOG)
    await site.start()
    bound = port
    for addr in runner.addresses:
        if isinstance(addr, tuple) and len(addr) >= 2:
            bound = int(addr[1])
            break
    return runner, bound


class EmbeddedServer:
    """The server on a background thread; a context manager for tests and examples."""

    def __init__(
        self,
        policy: ServedPolicy | None = None,
        host: str = "127.0.0.1",
        port: int = 0,
        api_key: str | None = None,
        model_name: str = "tiny",
        latency_s: float = 0.0,
        latency_per_token_s: float = 0.0,
        seed: int = 0,
        limits: Limits | None = None,
    ) -> None:
        self.host = host
        self.port = port
        self.state = ServerState(
            policy or Policy(seed=seed), model_name, api_key, latency_s, latency_per_token_s,
            seed, limits,
        )  # fmt: skip
        self._loop: asyncio.AbstractEventLoop | None = None
        self._runner: web.AppRunner | None = None
        self._thread: threading.Thread | None = None

    def __repr__(self) -> str:  # never show the key
        return f"EmbeddedServer(url={self.url!r}, model={self.state.model_name!r})"

    @property
    def url(self) -> str:
        """Root URL (``/health``, ``/tokenize``, ``/update_weights`` live here)."""
        return f"http://{self.host}:{self.port}"

    @property
    def base_url(self) -> str:
        """OpenAI base URL (``.../v1``) for ``openai.OpenAI(base_url=...)``."""
        return f"{self.url}/v1"

    @property
    def model_name(self) -> str:
        return self.state.model_name

    @property
    def policy(self) -> ServedPolicy:
        """The policy serving new requests (do not mutate; use set_weights)."""
        return self.state.snapshot.policy

    @property
    def weight_version(self) -> int:
        return self.state.snapshot.version

    def set_weights(self, weights: Mapping[str, np.ndarray], version: int) -> None:
        """In-process weight update (same effect as ``POST /update_weights``)."""
        self.state.set_weights(weights, version)

    def start(self) -> EmbeddedServer:
        """Listen (raises ``OSError`` when the port is taken); returns self."""
        ready = threading.Event()
        failure: list[BaseException] = []

        def main() -> None:
            loop = asyncio.new_event_loop()
            self._loop = loop
            asyncio.set_event_loop(loop)
            try:
                self._runner, self.port = loop.run_until_complete(
                    _start_site(self.state, self.host, self.port)
                )
            except BaseException as e:
                failure.append(e)
                ready.set()
                loop.close()
                return
            ready.set()
            loop.run_forever()
            loop.close()

        self._thread = threading.Thread(target=main, name="embedded-server", daemon=True)
        self._thread.start()
        ready.wait()
        if failure:
            raise failure[0]
        return self

    def stop(self) -> None:
        loop, runner = self._loop, self._runner
        if loop is None or runner is None or self._thread is None:
            return
        try:
            asyncio.run_coroutine_threadsafe(runner.cleanup(), loop).result(timeout=10)
        finally:
            loop.call_soon_threadsafe(loop.stop)
            self._thread.join(timeout=10)
            self._loop = self._runner = self._thread = None

    def __enter__(self) -> EmbeddedServer:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()
