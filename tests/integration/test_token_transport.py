"""Token mode's requests go out as the wrapped client's own: headers, key, query, timeout.

A gateway (aiohttp, 127.0.0.1) sits in front of the embedded server: it
refuses requests without its own header (401, as API gateways do), records
who each request spoke as, and can slow or break one route. Every test
drives the real openai SDK through `Recorder.wrap`.
"""

from __future__ import annotations

import asyncio
import ssl
import threading
from collections.abc import Awaitable, Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import aiohttp
import openai
import pytest
from aiohttp import web

from rollout import Recorder
from rollout.embedded import EmbeddedServer
from rollout.tokenmode import HttpTimeoutError

GENERATE = "/inference/v1/generate"
TLS = Path(__file__).parent.parent / "data" / "tls"
TOKEN_ROUTES = ("/v1/models", "/tokenize", GENERATE)
SYSTEM = {"role": "system", "content": "Answer with the number only."}


class Gateway:
    """Forwards to the embedded server what carries `X-Gateway-Key: open-sesame`."""

    def __init__(self, upstream: EmbeddedServer) -> None:
        self.upstream = upstream
        self.seen: list[tuple[str, str, str, str]] = []  # (path, authorization, gateway key, query)
        self.delay: dict[str, float] = {}
        self.revoked: set[str] = set()  # keys the gateway refuses on the token routes
        self.open = False  # True: no gateway key needed
        self.cut: set[str] = set()
        self.url = ""

    async def handle(self, request: web.Request) -> web.StreamResponse:
        auth = request.headers.get("Authorization", "")
        key = request.headers.get("X-Gateway-Key", "")
        self.seen.append((request.path, auth, key, request.query_string))
        if key != "open-sesame" and not self.open:
            return web.json_response({"error": {"message": "no gateway key"}}, status=401)
        if auth in self.revoked and request.path in TOKEN_ROUTES:
            return web.json_response({"error": {"message": "key revoked for this route"}}, status=401)
        if request.path in self.delay:
            await asyncio.sleep(self.delay[request.path])
        if request.path in self.cut:  # promise a body, send a piece of it, hang up
            response = web.StreamResponse(headers={"Content-Type": "application/json", "Content-Length": "500"})
            await response.prepare(request)
            await response.write(b'{"choices": [')
            assert request.transport is not None
            request.transport.close()
            return response
        async with aiohttp.ClientSession() as s, s.request(
            request.method, self.upstream.url + request.path, data=await request.read(),
            headers={"Content-Type": request.headers.get("Content-Type", "application/json")},
        ) as r:  # fmt: skip
            return web.Response(body=await r.read(), status=r.status, content_type="application/json")

    def hits(self, path: str) -> list[tuple[str, str, str, str]]:
        return [s for s in self.seen if s[0] == path]


@contextmanager
def serving(
    handle: Callable[[web.Request], Awaitable[web.StreamResponse]], tls: ssl.SSLContext | None = None
) -> Iterator[str]:
    """An aiohttp app answering every path with `handle`, on 127.0.0.1 in a thread; its root URL."""
    app = web.Application()
    app.router.add_route("*", "/{tail:.*}", handle)
    loop = asyncio.new_event_loop()
    runner = web.AppRunner(app)
    loop.run_until_complete(runner.setup())
    site = web.TCPSite(runner, "127.0.0.1", 0, ssl_context=tls)
    loop.run_until_complete(site.start())
    thread = threading.Thread(target=loop.run_forever, daemon=True)
    thread.start()
    try:
        yield f"{'https' if tls else 'http'}://127.0.0.1:{runner.addresses[0][1]}"
    finally:
        asyncio.run_coroutine_threadsafe(runner.cleanup(), loop).result(10)
        loop.call_soon_threadsafe(loop.stop)
        thread.join(10)


@pytest.fixture
def gateway(server: EmbeddedServer) -> Iterator[Gateway]:
    gw = Gateway(server)
    with serving(gw.handle) as url:
        gw.url = url + "/v1"
        yield gw


def client(mode: str, gw: Gateway, recorder: Recorder, key: str = "sk-one", **options: Any) -> Any:
    options.setdefault("default_headers", {"X-Gateway-Key": "open-sesame"})
    options.setdefault("base_url", gw.url)
    cls = openai.OpenAI if mode == "sync" else openai.AsyncOpenAI
    return recorder.wrap(cls(api_key=key, max_retries=0, **options))


def turns(mode: str, wrapped: Any, n: int = 3, seed: int = 0, **extra: Any) -> list[Any]:
    """`n` calls, each extending the last (so calls 2.. can go as token ids)."""

    async def run() -> list[Any]:
        messages: list[dict[str, Any]] = [SYSTEM, {"role": "user", "content": "What is 2 + 3?"}]
        replies = []
        try:
            for turn in range(n):
                kw = {"model": "tiny", "messages": messages, "max_tokens": 3, "seed": seed * 10 + turn}
                if turn > 0:
                    kw.update(extra)
                result = wrapped.chat.completions.create(**kw)
                reply = await result if mode == "async" else result
                replies.append(reply)
                said = reply.choices[0].message.model_dump(exclude_none=True)
                messages = [*messages, said, {"role": "user", "content": f"Wrong ({seed}). What is 2 + 3?"}]
        finally:
            if mode == "async":
                await wrapped.close()
        return replies

    return asyncio.run(run())


def recorder() -> Recorder:
    return Recorder(request_token_ids=True, request_logprobs=True)


@pytest.mark.parametrize("mode", ["sync", "async"])
def test_a_gateway_header_and_query_reach_the_token_routes(mode: str, gateway: Gateway) -> None:
    """Before: token mode sent only the auth header, the gateway answered 401, and token
    mode turned itself off: every call went as messages."""
    rec = recorder()
    wrapped = client(mode, gateway, rec, default_query={"api-version": "2026-01"})
    with rec.episode("t") as ep:
        turns(mode, wrapped)
    assert [c.sent_as for c in ep.calls] == ["messages", "tokens", "tokens"], [c.fallback for c in ep.calls]
    for path in TOKEN_ROUTES:
        hits = gateway.hits(path)
        assert hits, path
        assert all(key == "open-sesame" and query == "api-version=2026-01" for _, _, key, query in hits), hits
    assert not [s for s in gateway.seen if s[2] != "open-sesame"]


@pytest.mark.parametrize("mode", ["sync", "async"])
def test_two_clients_on_one_url_each_send_their_own_key(mode: str, gateway: Gateway) -> None:
    """Before: one transport per URL, built from the first client, so the second client's
    token-mode requests carried the first client's key."""
    rec = recorder()
    gateway.open = True  # only the keys differ (the old code also dropped the gateway header)
    first, second = client(mode, gateway, rec, key="sk-first"), client(mode, gateway, rec, key="sk-second")
    with rec.episode("a") as a:
        turns(mode, first, seed=1)
    mark = len(gateway.seen)
    with rec.episode("b") as b:
        turns(mode, second, seed=2)
    assert [c.sent_as for c in a.calls] == [c.sent_as for c in b.calls] == ["messages", "tokens", "tokens"]
    before, after = gateway.seen[:mark], gateway.seen[mark:]
    assert {auth for _, auth, _, _ in before} == {"Bearer sk-first"}
    assert {auth for _, auth, _, _ in after} == {"Bearer sk-second"}
    assert any(path == GENERATE for path, *_ in after)


@pytest.mark.parametrize("mode", ["sync", "async"])
def test_a_client_refused_by_the_gateway_does_not_turn_token_mode_off_for_another(
    mode: str, gateway: Gateway
) -> None:
    """Server facts are kept per URL *and* credentials: one client's 401 is its own."""
    rec = recorder()
    gateway.revoked.add("Bearer sk-revoked")
    with rec.episode("r") as refused:
        turns(mode, client(mode, gateway, rec, key="sk-revoked"))
    assert [c.sent_as for c in refused.calls] == ["messages"] * 3
    assert "401" in (refused.calls[1].fallback or "")
    with rec.episode("g") as ep:
        turns(mode, client(mode, gateway, rec, key="sk-good"))
    assert [c.sent_as for c in ep.calls] == ["messages", "tokens", "tokens"]


@pytest.mark.parametrize("where", ["per_call", "client"])
@pytest.mark.parametrize("mode", ["sync", "async"])
def test_a_timed_out_generation_fails_the_call_and_is_not_sent_again(mode: str, where: str, gateway: Gateway) -> None:
    """As the SDK's own timeout would: a typed timeout to the agent, a trace in the episode,
    and no second generation of the same turn as messages."""
    rec = recorder()
    gateway.open = True
    gateway.delay[GENERATE] = 3.0
    if where == "client":
        wrapped, extra = client(mode, gateway, rec, timeout=1.0), {}
    else:
        wrapped, extra = client(mode, gateway, rec), {"timeout": 1.0}
    with pytest.raises(HttpTimeoutError) as failed, rec.episode("t") as ep:
        turns(mode, wrapped, n=2, **extra)
    assert isinstance(failed.value, TimeoutError)
    assert len(ep.calls) == 1
    assert len(gateway.hits(GENERATE)) == 1
    assert len(gateway.hits("/v1/chat/completions")) == 1  # the first call only: nothing re-sent
    assert ep.status.value == "timeout"
    assert "HttpTimeoutError" in ep.metadata["failed_calls"][0]["error"]


@pytest.mark.parametrize("mode", ["sync", "async"])
def test_a_call_s_longer_timeout_lets_a_long_generation_finish(mode: str, gateway: Gateway) -> None:
    """A client timeout shorter than the generation, a call's own longer one: the call's wins."""
    rec = recorder()
    gateway.open = True
    gateway.delay[GENERATE] = 1.5
    wrapped = client(mode, gateway, rec, timeout=0.5)
    with rec.episode("t") as ep:
        turns(mode, wrapped, n=2, timeout=10.0)
    assert [c.sent_as for c in ep.calls] == ["messages", "tokens"]


@pytest.mark.parametrize("mode", ["sync", "async"])
def test_a_cut_reply_reaches_the_agent_as_a_fallback_not_an_untyped_error(mode: str, gateway: Gateway) -> None:
    """Before: the sync client let `http.client.IncompleteRead` escape to the agent."""
    rec = recorder()
    gateway.open = True
    gateway.cut.add(GENERATE)
    with rec.episode("t") as ep:
        replies = turns(mode, client(mode, gateway, rec))
    assert all(isinstance(r, openai.types.chat.ChatCompletion) for r in replies)
    assert [c.sent_as for c in ep.calls] == ["messages"] * 3
    assert "token route failed" in (ep.calls[1].fallback or "")


@pytest.mark.parametrize("mode", ["sync", "async"])
def test_token_mode_goes_through_the_proxy_the_environment_names(
    mode: str, server: EmbeddedServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Before: token mode's own client ignored HTTP_PROXY, so behind a proxy its requests
    went straight to the server (or, where only the proxy can reach it, nowhere)."""
    seen: list[str] = []

    async def forward(request: web.Request) -> web.StreamResponse:  # an HTTP forward proxy
        seen.append(request.path)
        async with aiohttp.ClientSession() as s, s.request(
            request.method, server.url + request.path_qs, data=await request.read(),
            headers={"Content-Type": request.headers.get("Content-Type", "application/json")},
        ) as r:  # fmt: skip
            return web.Response(body=await r.read(), status=r.status, content_type="application/json")

    for name in ("HTTPS_PROXY", "https_proxy", "ALL_PROXY", "all_proxy", "NO_PROXY", "no_proxy", "http_proxy"):
        monkeypatch.delenv(name, raising=False)
    with serving(forward) as proxy:
        monkeypatch.setenv("HTTP_PROXY", proxy)
        rec = recorder()
        cls = openai.OpenAI if mode == "sync" else openai.AsyncOpenAI
        wrapped = rec.wrap(cls(base_url=server.base_url, api_key="k", max_retries=0))
        with rec.episode("t") as ep:
            turns(mode, wrapped)
    assert [c.sent_as for c in ep.calls] == ["messages", "tokens", "tokens"]
    assert {"/v1/chat/completions", "/v1/models", "/tokenize", GENERATE} <= set(seen), seen


@pytest.mark.parametrize(
    ("mode", "how"),
    [
        ("sync", "http_client"),
        ("sync", "SSL_CERT_FILE"),
        ("async", "http_client"),
        ("async", "SSL_CERT_FILE"),
        ("async", "aiohttp_client"),
    ],
)
def test_token_mode_trusts_the_ca_bundle_the_client_trusts(
    mode: str, how: str, gateway: Gateway, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A server whose certificate only the client's CA bundle verifies. Before: token mode's
    own client used the system's CAs (it did honour SSL_CERT_FILE), the probe failed, and
    every call went as messages."""
    gateway.open = True  # only the CA is under test
    tls = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    tls.load_cert_chain(TLS / "server.pem", TLS / "server.key")
    options: dict[str, Any] = {}
    if how == "SSL_CERT_FILE":
        monkeypatch.setenv("SSL_CERT_FILE", str(TLS / "ca.pem"))
    else:
        trusted = ssl.create_default_context(cafile=str(TLS / "ca.pem"))
        factory = {"aiohttp_client": openai.DefaultAioHttpClient,
                   "http_client": openai.DefaultHttpxClient if mode == "sync" else openai.DefaultAsyncHttpxClient}[how]  # fmt: skip
        options["http_client"] = factory(verify=trusted)
    with serving(gateway.handle, tls) as url:
        rec = recorder()
        with rec.episode("t") as ep:
            turns(mode, client(mode, gateway, rec, base_url=url + "/v1", **options))
    assert [c.sent_as for c in ep.calls] == ["messages", "tokens", "tokens"], [c.fallback for c in ep.calls]


@pytest.mark.parametrize("mode", ["sync", "async"])
def test_a_key_changed_on_the_client_goes_with_its_next_token_request(mode: str, gateway: Gateway) -> None:
    """Token mode keeps each client's settings while the client is unchanged (`sdk_state`); a key
    set on the client between calls must still be the one its next token-mode request sends."""
    rec = recorder()
    gateway.open = True
    wrapped = client(mode, gateway, rec, key="sk-old")
    marks: list[int] = []

    async def run() -> None:
        messages: list[dict[str, Any]] = [SYSTEM, {"role": "user", "content": "What is 2 + 3?"}]
        try:
            with rec.episode("t"):
                for turn in range(4):
                    if turn == 2:
                        wrapped.api_key = "sk-new"
                        marks.append(len(gateway.seen))
                    result = wrapped.chat.completions.create(model="tiny", messages=messages, max_tokens=3, seed=turn)
                    reply = await result if mode == "async" else result
                    said = reply.choices[0].message.model_dump(exclude_none=True)
                    messages = [*messages, said, {"role": "user", "content": f"Again ({turn})."}]
        finally:
            if mode == "async":
                await wrapped.close()

    asyncio.run(run())
    (ep,) = rec.episodes()
    assert [c.sent_as for c in ep.calls] == ["messages", "tokens", "tokens", "tokens"], [c.fallback for c in ep.calls]
    before, after = gateway.seen[: marks[0]], gateway.seen[marks[0] :]
    assert {auth for _, auth, _, _ in before} == {"Bearer sk-old"}
    assert {auth for _, auth, _, _ in after} == {"Bearer sk-new"} and any(p == GENERATE for p, *_ in after)
