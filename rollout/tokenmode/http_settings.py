"""What one token-mode request is sent with: the client's network, timeouts, headers.

Read off the wrapped openai client (and the agent's call), so token mode's
own requests go out as the SDK would send them: the same proxy and CA
context for the URL, the same timeout rules, the same headers.
"""

from __future__ import annotations

import asyncio
import ssl
import sys
import urllib.parse
import urllib.request
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

DEFAULT_TIMEOUT = (5.0, 600.0)
"""(connect, deadline) seconds when the client names none: the openai SDK's default."""


@dataclass(frozen=True, slots=True)
class Timeouts:
    """How long one request may take: to connect, and in all (None: no limit)."""

    connect: float | None
    total: float | None

    @staticmethod
    def of(value: Any, default: Timeouts | None = None) -> Timeouts:
        """From an SDK timeout: a number, an `httpx.Timeout`, None, or NOT_GIVEN (the default)."""
        if type(value).__name__ in ("NotGiven", "Omit"):
            return default or Timeouts(*DEFAULT_TIMEOUT)
        if value is None:
            return Timeouts(None, None)
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return Timeouts(float(value), float(value))
        read = getattr(value, "read", None)
        connect = getattr(value, "connect", None)
        if hasattr(value, "read"):
            return Timeouts(None if connect is None else float(connect), None if read is None else float(read))
        return default or Timeouts(*DEFAULT_TIMEOUT)

    def phases(self, remaining: float | None) -> dict[str, float | None]:
        """httpx's per-phase timeouts, none longer than what is left of the deadline."""
        connect = self.connect if remaining is None or self.connect is None else min(self.connect, remaining)
        return {"connect": connect, "read": remaining, "write": remaining, "pool": remaining}


@dataclass(frozen=True, slots=True)
class CallOptions:
    """One call's own `timeout=`, `extra_headers` and `extra_query`, for its token-mode requests."""

    timeout: Any = None  # an SDK timeout value; None here means "not given"
    timeout_given: bool = False
    headers: Mapping[str, Any] | None = None
    query: Mapping[str, Any] | None = None

    @staticmethod
    def of(kwargs: Mapping[str, Any]) -> CallOptions | None:
        """The call's options, or None when it sets none (the common case)."""
        timeout = kwargs.get("timeout", MISSING)
        headers = sdk_value(kwargs.get("extra_headers"))
        query = sdk_value(kwargs.get("extra_query"))
        given = timeout is not MISSING and type(timeout).__name__ not in ("NotGiven", "Omit")
        if not given and not headers and not query:
            return None
        return CallOptions(timeout if given else None, given, headers or None, query or None)


MISSING: Any = object()


def sdk_value(value: Any) -> Any:
    return None if value is None or type(value).__name__ in ("NotGiven", "Omit") else value


def merge_headers(*layers: Mapping[str, Any] | None) -> dict[str, str]:
    """Headers merged case-insensitively, later layers winning; an SDK `Omit` value removes one."""
    out: dict[str, str] = {}
    names: dict[str, str] = {}  # lower-cased name -> the name as `out` spells it
    for layer in layers:
        if not layer:
            continue
        for name, value in layer.items():
            name = name if type(name) is str else str(name)
            low = name.lower()
            old = names.pop(low, None)
            if old is not None:
                del out[old]
            if isinstance(value, str):
                out[name] = value
                names[low] = name
    return out


def is_async_http(client: Any) -> bool:
    send = getattr(client, "send", None)
    return send is not None and asyncio.iscoroutinefunction(send)


def httpx_module(client: Any) -> Any:
    """The httpx flavour the client is built on (`httpx2` for openai 3, `httpx` before)."""
    name = type(client).__module__.split(".", 1)[0] if client is not None else ""
    module = sys.modules.get(name) if name else None
    if module is not None and hasattr(module, "TimeoutException"):
        return module
    for candidate in type(client).__mro__ if client is not None else ():
        module = sys.modules.get(candidate.__module__.split(".", 1)[0])
        if module is not None and hasattr(module, "TimeoutException"):
            return module
    try:
        import httpx2

        return httpx2
    except ImportError:  # pragma: no cover - openai < 3
        import httpx

        return httpx


@dataclass(frozen=True, slots=True)
class ClientNetwork:
    """The CA context and proxy the wrapped client's transport uses for the server's URL.

    `known` is False for a transport whose settings cannot be read (a mock or
    custom transport, a SOCKS proxy): requests then go through the client itself.
    """

    known: bool
    ssl: ssl.SSLContext | None = None
    proxy: str | None = None
    proxy_headers: dict[str, str] | None = None

    @staticmethod
    def of(client: Any, root: str) -> ClientNetwork:
        if client is None:
            return ClientNetwork(True, _default_ssl(), *_env_proxy(root))
        try:
            transport = client._transport_for_url(httpx_module(client).URL(root))
        except Exception:  # not an httpx client
            return ClientNetwork(False)
        if hasattr(transport, "ssl_context") and hasattr(transport, "proxy"):  # the SDK's aiohttp transport
            proxy = transport.proxy
            if proxy is None:
                return ClientNetwork(True, transport.ssl_context)
            headers = dict(proxy.headers) if proxy.headers else None
            return ClientNetwork(True, transport.ssl_context, str(proxy.url), headers)
        pool = getattr(transport, "_pool", None)
        context = getattr(pool, "_ssl_context", None)
        kind = type(pool).__name__
        if kind in ("ConnectionPool", "AsyncConnectionPool"):
            return ClientNetwork(True, context)
        if kind in ("HTTPProxy", "AsyncHTTPProxy"):
            url = getattr(pool, "_proxy_url")  # noqa: B009
            port = f":{url.port}" if url.port else ""
            proxy = f"{url.scheme.decode()}://{url.host.decode()}{port}"
            headers = {k.decode(): v.decode() for k, v in getattr(pool, "_proxy_headers", [])} or None
            return ClientNetwork(True, context, proxy, headers)
        return ClientNetwork(False)


def _default_ssl() -> ssl.SSLContext | None:
    try:
        import httpx2

        return httpx2.create_ssl_context()  # the SDK's default: certifi, or SSL_CERT_FILE / SSL_CERT_DIR
    except ImportError:  # pragma: no cover - openai < 3
        return None


def _env_proxy(root: str) -> tuple[str | None, None]:
    """The proxy the environment names for `root` (HTTP(S)_PROXY, NO_PROXY), read once."""
    parts = urllib.parse.urlsplit(root)
    proxies = urllib.request.getproxies()
    proxy = proxies.get(parts.scheme) or proxies.get("all")
    if proxy and parts.hostname and not urllib.request.proxy_bypass(parts.hostname):
        return proxy, None
    return None, None
