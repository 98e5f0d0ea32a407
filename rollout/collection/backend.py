"""Building the model each episode talks to, from a picklable `BackendSpec`.

One `Backend` per process (or Ray actor): it starts the embedded server when
asked, builds one wrapped sync + async client per server URL, and hands each
episode a `compat.OpenAICompatibleModel` on the least-loaded healthy server.
All calls of an episode use that server (its prefix cache stays warm).
"""

from __future__ import annotations

import importlib
import logging
import os
import sys
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from compat import OpenAICompatibleModel, is_async_client
from rollout.collection.config import BackendSpec
from rollout.errors import ConfigError
from rollout.recorder import Recorder

logger = logging.getLogger(__name__)


def import_object(path: str) -> Any:
    """`"package.module:attr"` -> the object, with an error that names what is missing."""
    module_name, sep, attr = path.partition(":")
    if not sep or not module_name or not attr:
        raise ValueError(f"import path {path!r} must look like 'package.module:name'")
    try:
        module = importlib.import_module(module_name)
    except ModuleNotFoundError as exc:
        # Agents usually live in the user's project, like the config paths:
        # resolve them from the working directory, as `python -m` would.
        if os.getcwd() in sys.path:
            raise ValueError(f"cannot import module {module_name!r} for {path!r}: {exc}") from exc
        sys.path.append(os.getcwd())
        return import_object(path)
    except ImportError as exc:
        raise ValueError(f"cannot import module {module_name!r} for {path!r}: {exc}") from exc
    try:
        return getattr(module, attr)
    except AttributeError:
        raise ValueError(f"module {module_name!r} has no attribute {attr!r}") from None


@dataclass
class ServerSlot:
    """One inference server and the recording clients that reach it."""

    url: str
    sync_client: Any
    async_client: Any
    in_flight: int = 0
    healthy: bool = True


def _async_http_client() -> Any:
    """aiohttp transport when available: httpx's pool degrades with thousands of waiters."""
    try:
        import openai

        return openai.DefaultAioHttpClient()
    except Exception:  # older openai or missing extra: the SDK default is fine
        return None


def _default_clients(url: str, api_key: str | None, spec: BackendSpec) -> tuple[Any, Any]:
    from openai import AsyncOpenAI, OpenAI

    key = api_key or "unused"
    # Retries happen once, in the compat model (the wrapped clients count as
    # custom clients there); SDK retries on top would multiply the budget.
    common: dict[str, Any] = {"base_url": url, "api_key": key, "timeout": spec.timeout_s, "max_retries": 0}
    http = _async_http_client()
    async_client = AsyncOpenAI(**common, **({"http_client": http} if http is not None else {}))
    return OpenAI(**common), async_client


class Backend:
    """Servers, clients and the recorder for one worker process."""

    def __init__(self, spec: BackendSpec, urls: list[str], recorder: Recorder) -> None:
        self.spec = spec
        self.recorder = recorder
        api_key = os.environ.get(spec.api_key_env) if spec.api_key_env else None
        if spec.api_key_env and api_key is None:
            raise ConfigError(f"backend.api_key_env names {spec.api_key_env!r}, which is not set")
        factory: Callable[..., Any] | None = (
            import_object(spec.client_factory) if spec.client_factory else None
        )
        self.servers: list[ServerSlot] = []
        for url in urls or [""]:
            if factory is not None:
                client = factory(url=url, model=spec.model, api_key=api_key)
                is_async = is_async_client(client)
                sync_c, async_c = (None, client) if is_async else (client, None)
            else:
                sync_c, async_c = _default_clients(url, api_key, spec)
            self.servers.append(
                ServerSlot(
                    url=url,
                    sync_client=None if sync_c is None else recorder.wrap(sync_c),
                    async_client=None if async_c is None else recorder.wrap(async_c),
                )
            )

    def acquire(self, preferred: int | None = None) -> ServerSlot:
        """`preferred` if healthy, else the healthy server with the fewest episodes in flight."""
        if preferred is not None and 0 <= preferred < len(self.servers) and self.servers[preferred].healthy:
            slot = self.servers[preferred]
            slot.in_flight += 1
            return slot
        pool = [s for s in self.servers if s.healthy] or self.servers
        slot = min(pool, key=lambda s: s.in_flight)
        slot.in_flight += 1
        return slot

    def release(self, slot: ServerSlot, *, failed_transport: bool = False) -> None:
        slot.in_flight -= 1
        if failed_transport and len(self.servers) > 1:
            logger.warning("server %s failed; routing new episodes elsewhere", slot.url)
            slot.healthy = False

    def model(self, slot: ServerSlot, seed: int | None = None) -> OpenAICompatibleModel:
        """A CAMEL-compatible model on `slot`; the seed makes the episode reproducible."""
        config = dict(self.spec.sampling)
        if seed is not None:
            config.setdefault("seed", seed)
        return EpisodeModel(
            self.spec.model,
            model_config_dict=config,
            client=slot.sync_client,
            async_client=slot.async_client,
            timeout=self.spec.timeout_s,
            max_retries=self.spec.max_retries,
        )

    async def aclose(self) -> None:
        await self.recorder.aclose()  # token mode's connections on this loop
        for slot in self.servers:
            for client in (slot.sync_client, slot.async_client):
                close = getattr(client, "close", None)
                if close is None:
                    continue
                try:
                    result = close()
                    if hasattr(result, "__await__"):
                        await result
                except Exception as exc:  # closing is best effort
                    logger.debug("closing client failed: %s", exc)


def recorder_for(spec: BackendSpec, policy_version: int | None = None) -> Recorder:
    """The recorder a worker records with: what the backend config asks of the servers."""
    return Recorder(
        request_token_ids=spec.request_token_ids,
        request_logprobs=spec.request_logprobs,
        token_mode=spec.token_mode,
        tokenizer=spec.tokenizer,
        local_template=spec.local_template,
        policy_version=policy_version,
        keep_finished=False,
    )


class EpisodeModel(OpenAICompatibleModel):
    """The model an episode gets: each call's seed is the episode seed + its call number.

    One fixed seed for every turn would replay the same sampling noise on
    each turn; a per-call offset keeps turns independent and runs repeatable.
    """

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.requests = 0  # requests prepared so far (a retry reuses its request, seed included)

    def prepare_request(self, kwargs: dict[str, Any]) -> dict[str, Any]:
        if isinstance(kwargs.get("seed"), int):
            kwargs["seed"] += self.requests
            self.requests += 1
        return kwargs


class EmbeddedHandle:
    """The in-process embedded server, started for the duration of a run."""

    def __init__(self, spec: BackendSpec) -> None:
        from rollout.embedded import EmbeddedServer, Policy

        settings = spec.embedded
        policy = Policy.load(settings.weights) if settings.weights else Policy(seed=settings.seed)
        self.server = EmbeddedServer(
            policy=policy,
            model_name=spec.model,
            latency_s=settings.latency_ms / 1000,
            latency_per_token_s=settings.latency_per_token_ms / 1000,
            seed=settings.seed,
        )

    def __enter__(self) -> list[str]:
        self.server.start()
        return [self.server.base_url]

    def __exit__(self, *exc: Any) -> None:
        try:
            self.server.stop()
        except Exception as err:  # cleanup must not replace the error that ended the run
            logger.warning("stopping the embedded server failed: %s: %s", type(err).__name__, err)
