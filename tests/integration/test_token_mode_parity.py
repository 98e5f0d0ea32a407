"""Token mode accepts what messages mode accepts, sends what the agent asked, and replies alike.

Issue 18 §1-§2. Most tests are differential: the same episode with token
mode on and off, through the real openai SDK against the embedded server,
and the agent must see the same thing where the prompt ids match. Servers
that misbehave (malformed replies, `abort`) are small aiohttp proxies in
front of the embedded server.
"""

from __future__ import annotations

import asyncio
import copy
import json
import math
import threading
from collections.abc import Callable, Iterator
from typing import Any

import openai
import pytest
from aiohttp import web

from rollout import Episode, Recorder, TokenRecordError
from rollout.embedded import EmbeddedServer
from rollout.tokenmode import TOOLS_CHANGED

SYSTEM = {"role": "system", "content": "Answer with the number only."}
TOOLS = [{"type": "function", "function": {"name": "add", "description": "a + b",
                                           "parameters": {"type": "object", "properties": {}}}}]  # fmt: skip


def user(text: str) -> dict[str, Any]:
    return {"role": "user", "content": text}


def recording(url: str, **options: Any) -> tuple[Recorder, openai.OpenAI, openai.AsyncOpenAI]:
    recorder = Recorder(request_token_ids=True, request_logprobs=True, **options)
    sync = recorder.wrap(openai.OpenAI(base_url=url, api_key="unused", max_retries=0))
    async_ = recorder.wrap(openai.AsyncOpenAI(base_url=url, api_key="unused", max_retries=0))
    return recorder, sync, async_


def as_message(reply: Any) -> dict[str, Any]:
    return reply.choices[0].message.model_dump(exclude_none=True)


def episode(
    url: str, mode: str, turns: int = 3, *, is_async: bool = False, recorder_options: dict[str, Any] | None = None,
    **kw: Any,
) -> tuple[Episode, list[Any]]:  # fmt: skip
    """`turns` calls, each answering the last reply with "Again."; (episode, replies)."""
    recorder, client, aclient = recording(url, token_mode=mode, **(recorder_options or {}))

    def args(k: int) -> dict[str, Any]:
        return {"model": "tiny", "seed": k, **({"max_tokens": 4} if "max_tokens" not in kw else {}), **kw}

    if not is_async:
        with recorder.episode("t") as ep:
            messages: list[Any] = [SYSTEM, user("What is 2 + 3?")]
            replies = []
            for k in range(turns):
                replies.append(client.chat.completions.create(messages=messages, **args(k)))
                messages = [*messages, as_message(replies[-1]), user("Again.")]
        recorder.close()
        return ep, replies

    async def run() -> tuple[Episode, list[Any]]:
        async with recorder.episode("t") as ep:
            messages: list[Any] = [SYSTEM, user("What is 2 + 3?")]
            replies = []
            for k in range(turns):
                replies.append(await aclient.chat.completions.create(messages=messages, **args(k)))
                messages = [*messages, as_message(replies[-1]), user("Again.")]
        await recorder.aclose()
        return ep, replies

    return asyncio.run(run())


def seen(reply: Any, *, logprobs: bool = True) -> list[Any]:
    """What the agent sees of a reply: per choice content, tool calls, finish reason, logprobs."""
    out = []
    for c in reply.choices:
        lp = c.logprobs.model_dump() if logprobs and c.logprobs is not None else None
        calls = [(t.function.name, t.function.arguments) for t in c.message.tool_calls or []]
        out.append((type(reply).__name__, c.message.content, calls, c.finish_reason, lp))
    return [out, reply.usage.model_dump() if reply.usage else None]


def assert_same_where_prompts_match(
    on: tuple[Episode, list[Any]], off: tuple[Episode, list[Any]], *, logprobs: bool = True
) -> int:
    """The agent saw the same replies in both modes wherever the server saw the same prompt ids;
    returns how many calls that covered (the first call always)."""
    matched = 0
    for a, b, ra, rb in zip(on[0].calls, off[0].calls, on[1], off[1], strict=True):
        if a.prompt_ids.tolist() == b.prompt_ids.tolist():
            assert seen(ra, logprobs=logprobs) == seen(rb, logprobs=logprobs)
            assert [c.ids.tolist() for c in a.choices] == [c.ids.tolist() for c in b.choices]
            matched += 1
    assert matched >= 1
    return matched


Tamper = Callable[[str, Any, Any], Any]
"""(path, request JSON, upstream reply JSON) -> the reply JSON to send instead (or `RAW(bytes)`)."""


class RAW(bytes):
    """A reply body sent as it is (not JSON-encoded by the proxy)."""


DERENDER = "/v1/chat/completions/derender"


class Proxy:
    """A real HTTP server in front of the embedded server that rewrites chosen replies."""

    def __init__(self, upstream: EmbeddedServer, tamper: Tamper, refuse: tuple[str, ...] = (),
                 events: Tamper | None = None) -> None:  # fmt: skip
        self.upstream, self.tamper, self.refuse, self.events = upstream, tamper, refuse, events
        self.hits: list[str] = []
        self.bodies: list[tuple[str, Any]] = []

    async def handle(self, request: web.Request) -> web.StreamResponse:
        import aiohttp

        self.hits.append(request.path)
        raw = await request.read()
        body = json.loads(raw) if raw else None
        self.bodies.append((request.path, body))
        if request.path in self.refuse:  # a route this server does not have
            return web.json_response({"error": {"message": "Not Found"}}, status=404)
        async with aiohttp.ClientSession() as s, s.request(
            request.method, self.upstream.url + request.path, data=raw,
            headers={"Content-Type": request.headers.get("Content-Type", "application/json")},
        ) as r:  # fmt: skip
            status, data = r.status, await r.read()
        if status == 200 and r.content_type == "application/json":
            out = self.tamper(request.path, body, json.loads(data))
            data = out if isinstance(out, RAW) else json.dumps(out).encode()
        elif status == 200 and r.content_type == "text/event-stream" and self.events is not None:
            events = self.events  # each `data:` event's JSON rewritten, `[DONE]` kept
            data = b"".join(
                b"data: " + (e if e == b"[DONE]" else json.dumps(events(request.path, body, json.loads(e))).encode())
                + b"\n\n" for e in (part.removeprefix(b"data: ") for part in data.split(b"\n\n") if part.strip())
            )  # fmt: skip
            return web.Response(body=data, status=status, content_type="text/event-stream")
        return web.Response(body=data, status=status, content_type="application/json")


@pytest.fixture
def proxy(server: EmbeddedServer) -> Iterator[Callable[..., tuple[Proxy, str]]]:
    """`proxy(tamper, refuse=(routes,), events=tamper)` -> (the proxy, its base URL); stopped after the
    test. `events` rewrites each event of a streamed reply, as `tamper` rewrites a JSON one."""
    loop = asyncio.new_event_loop()
    thread = threading.Thread(target=loop.run_forever, daemon=True)
    thread.start()
    runners: list[web.AppRunner] = []

    def start(tamper: Tamper, refuse: tuple[str, ...] = (), events: Tamper | None = None) -> tuple[Proxy, str]:
        p = Proxy(server, tamper, refuse, events)
        app = web.Application(client_max_size=64 << 20)
        app.router.add_route("*", "/{tail:.*}", p.handle)
        runner = web.AppRunner(app)

        async def up() -> int:
            await runner.setup()
            site = web.TCPSite(runner, "127.0.0.1", 0)
            await site.start()
            return int(runner.addresses[0][1])

        port = asyncio.run_coroutine_threadsafe(up(), loop).result(10)
        runners.append(runner)
        return p, f"http://127.0.0.1:{port}/v1"

    try:
        yield start
    finally:
        for runner in runners:
            asyncio.run_coroutine_threadsafe(runner.cleanup(), loop).result(10)
        loop.call_soon_threadsafe(loop.stop)
        thread.join(10)


def on(path: str, change: Callable[[Any, Any], Any]) -> Tamper:
    """A tamper that rewrites the replies of one route with `change(request, reply)`."""
    return lambda p, req, rep: change(req, rep) if p == path else rep


GENERATE = "/inference/v1/generate"


# --- §1 what the agent sends ---------------------------------------------------------------


@pytest.mark.parametrize("is_async", [False, True])
def test_sdk_sentinels_are_absent_parameters_in_both_modes(server: EmbeddedServer, is_async: bool) -> None:
    """Wrappers (the OpenAI Agents SDK) pass NOT_GIVEN / omit for every unset parameter."""
    sentinels = {"temperature": openai.NOT_GIVEN, "max_tokens": openai.NOT_GIVEN, "top_p": openai.omit,
                 "tools": openai.NOT_GIVEN, "tool_choice": openai.omit, "stop": openai.NOT_GIVEN,
                 "response_format": openai.NOT_GIVEN, "stream_options": openai.omit,
                 "reasoning_effort": openai.NOT_GIVEN, "logprobs": openai.NOT_GIVEN}  # fmt: skip
    runs = {m: episode(server.base_url, m, is_async=is_async, max_completion_tokens=4, **sentinels)
            for m in ("off", "auto")}  # fmt: skip
    on, off = runs["auto"][0], runs["off"][0]
    assert [c.sent_as for c in on.calls] == ["messages", "tokens", "tokens"], [c.fallback for c in on.calls]
    assert_same_where_prompts_match(runs["auto"], runs["off"], logprobs=False)
    for call in (*on.calls, *off.calls):
        assert not any(type(v).__name__ in ("NotGiven", "Omit") for v in call.request.values())


@pytest.mark.parametrize("mode", ["off", "auto"])
def test_a_record_is_a_snapshot_of_the_call_in_both_modes(server: EmbeddedServer, mode: str) -> None:
    """Later in-place edits by the agent (nested ones too) never rewrite an earlier record."""
    recorder, client, _ = recording(server.base_url, token_mode=mode)
    tools = copy.deepcopy(TOOLS)
    question = {"role": "user", "content": [{"type": "text", "text": "What is 2 + 3?"}]}
    messages: list[Any] = [SYSTEM, question]
    with recorder.episode("t") as ep:
        first = client.chat.completions.create(model="tiny", messages=messages, tools=tools, max_tokens=3, seed=1)
        before = json.dumps(ep.calls[0].request, sort_keys=True)
        messages += [as_message(first), user("Again.")]
        client.chat.completions.create(model="tiny", messages=messages, tools=tools, max_tokens=3, seed=2)
        second = json.dumps(ep.calls[1].request, sort_keys=True)
        # The agent edits its own objects in place: a content part, a tool's schema, the tools list.
        question["content"][0]["text"] = "What is 9 + 9?"
        tools[0]["function"]["parameters"]["properties"]["a"] = {"type": "number"}
        tools.append({"type": "function", "function": {"name": "mul", "parameters": {"type": "object"}}})
    assert json.dumps(ep.calls[0].request, sort_keys=True) == before
    assert json.dumps(ep.calls[1].request, sort_keys=True) == second
    assert ep.calls[0].request["messages"][1]["content"][0]["text"] == "What is 2 + 3?"
    assert [t["function"]["name"] for t in ep.calls[0].request["tools"]] == ["add"]
    assert "a" not in ep.calls[0].request["tools"][0]["function"]["parameters"]["properties"]


def test_a_tool_appended_to_the_same_list_is_a_changed_tools_list(server: EmbeddedServer) -> None:
    """The stitched prompt must list every tool the agent sends: an in-place append is a change."""
    recorder, client, _ = recording(server.base_url)
    tools = copy.deepcopy(TOOLS)
    messages: list[Any] = [SYSTEM, user("What is 2 + 3?")]
    with recorder.episode("t") as ep:
        first = client.chat.completions.create(model="tiny", messages=messages, tools=tools, max_tokens=3, seed=1)
        messages += [as_message(first), user("Again.")]
        tools.append({"type": "function", "function": {"name": "mul", "parameters": {"type": "object"}}})
        second = client.chat.completions.create(model="tiny", messages=messages, tools=tools, max_tokens=3, seed=2)
        tools[1]["function"]["description"] = "a * b"  # a nested edit is a change too
        messages += [as_message(second), user("Again.")]
        client.chat.completions.create(model="tiny", messages=messages, tools=tools, max_tokens=3, seed=3)
        messages += [as_message(second), user("Again.")]
    assert [c.parent for c in ep.calls] == [None, 0, 1]
    assert [c.fallback for c in ep.calls[1:]] == [TOOLS_CHANGED, TOOLS_CHANGED]
    assert [c.sent_as for c in ep.calls] == ["messages"] * 3


def _parent_then_child(
    url: str, first: dict[str, Any], child: Callable[[list[Any], Any], tuple[list[Any], dict[str, Any]]],
    policy_server: EmbeddedServer | None = None,
) -> Episode:
    recorder, client, _ = recording(url)
    messages: list[Any] = [SYSTEM, user("What is 2 + 3?")]
    with recorder.episode("t") as ep:
        reply = client.chat.completions.create(model="tiny", messages=messages, max_tokens=3, seed=1, **first)
        history, kwargs = child([*messages, as_message(reply)], reply)
        client.chat.completions.create(model="tiny", messages=[*history, user("Again.")], max_tokens=3, seed=2,
                                       **kwargs)  # fmt: skip
    recorder.close()
    return ep


@pytest.mark.parametrize(
    ("first", "edit", "reason"),
    [
        ({}, lambda h: ([h[0], {**h[1], "name": "bob"}, h[2]], {}), "message 1 differs from the parent call's (name)"),
        ({"response_format": {"type": "json_object"}}, lambda h: (h, {}), "'response_format' changed"),
        ({"extra_body": {"chat_template_kwargs": {"enable_thinking": False}}}, lambda h: (h, {}),
         "extra_body['chat_template_kwargs'] changed"),
        ({}, lambda h: (h, {"extra_body": {"chat_template_kwargs": {"enable_thinking": True}}}),
         "extra_body['chat_template_kwargs'] changed"),
        ({"extra_body": {"chat_template_kwargs": {"bos_token": "<s>"}}}, lambda h: (h, {}),
         "extra_body['chat_template_kwargs'] changed"),  # a name shaped like a credential's
        ({"tools": TOOLS, "tool_choice": "none"}, lambda h: (h, {"tools": TOOLS}), "'tool_choice' changed"),
        ({}, lambda h: ([*h[:2], {**h[2], "name": "helper"}], {}), "the parent's reply differs"),
    ],
    ids=["name", "response_format", "ctk-dropped", "ctk-added", "ctk-bos_token-dropped", "tool_choice", "reply-name"],
)
def test_whatever_the_template_renders_must_match_the_parent(
    server: EmbeddedServer, first: dict[str, Any], edit: Callable[[list[Any]], Any], reason: str
) -> None:
    """The prefix table matches role, content and tool calls; a stitched prompt must also carry the
    history's names, tool-call ids and the request fields that change the rendering."""
    ep = _parent_then_child(server.base_url, first, lambda h, _r: edit(h))
    child = ep.calls[1]
    assert child.sent_as == "messages" and child.parent == 0
    assert reason in (child.fallback or ""), child.fallback


def test_an_unchanged_template_option_named_like_a_credential_still_stitches_and_is_recorded(
    server: EmbeddedServer,
) -> None:
    """`bos_token` is rendered into the prompt, not a credential: the record keeps it, and the same
    option on the next call is no change (it was dropped, and every later call fell back)."""
    body = {"extra_body": {"chat_template_kwargs": {"bos_token": "<s>"}}}
    ep = _parent_then_child(server.base_url, body, lambda h, _r: (h, body))
    assert ep.calls[0].request["extra_body"]["chat_template_kwargs"] == {"bos_token": "<s>"}
    assert ep.calls[1].sent_as == "tokens", ep.calls[1].fallback


def test_unchanged_fields_spelt_differently_still_stitch(server: EmbeddedServer) -> None:
    """Defaults spelt out (tool_choice="auto" with tools, None-valued keys) are no change."""
    def child(h: list[Any], reply: Any) -> tuple[list[Any], dict[str, Any]]:
        return [{**h[0], "name": None}, h[1], reply.choices[0].message], {"tools": TOOLS, "tool_choice": "auto"}

    ep = _parent_then_child(server.base_url, {"tools": TOOLS}, child)
    assert ep.calls[1].sent_as == "tokens", ep.calls[1].fallback


def test_a_renamed_tool_call_id_stitches_with_a_note() -> None:
    """Tool-call ids are handles a framework may rename (AutoGen and LangChain rebuild them):
    the turn still stitches exactly, and the record notes the re-shaping."""
    from tests.integration.test_token_mode import forced_tool_policy

    with EmbeddedServer(policy=forced_tool_policy(), seed=0) as srv:
        def child(h: list[Any], reply: Any) -> tuple[list[Any], dict[str, Any]]:
            call = dict(h[2]["tool_calls"][0], id="call_0")
            tool = {"role": "tool", "tool_call_id": "call_0", "content": "5"}
            return [*h[:2], {**h[2], "tool_calls": [call]}, tool], {"tools": TOOLS}

        ep = _parent_then_child(srv.base_url, {"tools": TOOLS}, child)
    assert ep.calls[0].choices[0].message["tool_calls"]
    child = ep.calls[1]
    assert child.sent_as == "tokens" and child.fallback is None and child.parent == 0
    assert any("re-shaped" in n for n in child.notes), child.notes


def test_a_bridge_that_renders_no_new_tokens_is_a_fallback(proxy: Callable[..., tuple[Proxy, str]]) -> None:
    """A template that drops the new messages must not give a stitched prompt without them."""

    alone: dict[str, list[int]] = {}

    def drop_new(req: Any, rep: Any) -> Any:
        messages = req.get("messages", [])
        key = json.dumps(messages[:1])
        if len(messages) == 1:
            alone[key] = rep["tokens"]
        elif key in alone:  # the placeholder turn + the new messages: only the placeholder's ids
            rep["tokens"] = alone[key]
        return rep

    _, url = proxy(on("/tokenize", drop_new))
    ep, _ = episode(url, "auto")
    assert [c.sent_as for c in ep.calls] == ["messages"] * 3
    assert all("bridge" in (c.fallback or "") for c in ep.calls[1:]), [c.fallback for c in ep.calls]


@pytest.mark.parametrize("bad", [{"tokens": None}, {"tokens": ["x"]}, [], RAW(b"[[[")])
def test_a_bridge_render_that_fails_is_a_fallback(proxy: Callable[..., tuple[Proxy, str]], bad: Any) -> None:
    _, url = proxy(on("/tokenize", lambda req, rep: bad))
    ep, _ = episode(url, "auto")
    assert [c.sent_as for c in ep.calls] == ["messages"] * 3
    for call in ep.calls[1:]:
        assert "render" in (call.fallback or "") or "tokenize" in (call.fallback or ""), call.fallback


# --- §2 what the server replies ------------------------------------------------------------


def finishing(reason: Any) -> Tamper:
    """Every generate and chat reply finishes with `reason` (vLLM sends "abort" for aborted requests)."""

    def tamper(path: str, req: Any, rep: Any) -> Any:
        if path in (GENERATE, "/v1/chat/completions") and isinstance(rep, dict):
            for c in rep.get("choices", []):
                c["finish_reason"] = reason
        return rep

    return tamper


@pytest.mark.parametrize("is_async", [False, True])
def test_an_aborted_reply_reaches_the_agent_as_in_messages_mode(
    proxy: Callable[..., tuple[Proxy, str]], is_async: bool
) -> None:
    _, url = proxy(finishing("abort"))
    runs = {m: episode(url, m, is_async=is_async) for m in ("off", "auto")}
    on = runs["auto"][0]
    assert [c.sent_as for c in on.calls] == ["messages", "tokens", "tokens"], [c.fallback for c in on.calls]
    assert [r.choices[0].finish_reason for r in runs["auto"][1]] == ["abort"] * 3
    assert_same_where_prompts_match(runs["auto"], runs["off"], logprobs=False)
    assert [c.choices[0].finish_reason for c in on.calls] == ["abort"] * 3


def test_an_aborted_reply_streams_as_in_messages_mode(proxy: Callable[..., tuple[Proxy, str]]) -> None:
    _, url = proxy(finishing("abort"))
    recorder, client, _ = recording(url)
    with recorder.episode("t") as ep:
        first = client.chat.completions.create(model="tiny", messages=[SYSTEM, user("2 + 3?")], max_tokens=3)
        stream = client.chat.completions.create(
            model="tiny", messages=[SYSTEM, user("2 + 3?"), as_message(first), user("Again.")], max_tokens=3,
            stream=True, stream_options={"include_usage": True},
        )  # fmt: skip
        reasons = [c.choices[0].finish_reason for c in stream if c.choices and c.choices[0].finish_reason]
    assert ep.calls[1].sent_as == "tokens" and reasons == ["abort"]


def test_an_unknown_finish_reason_is_mapped_and_kept_raw_in_the_record(
    proxy: Callable[..., tuple[Proxy, str]],
) -> None:
    _, url = proxy(on(GENERATE, lambda req, rep: finishing("cancelled")(GENERATE, req, rep)))
    ep, replies = episode(url, "auto")
    assert [c.sent_as for c in ep.calls] == ["messages", "tokens", "tokens"]
    assert [r.choices[0].finish_reason for r in replies[1:]] == ["stop", "stop"]
    openai.types.chat.ChatCompletion.model_validate(replies[1].model_dump())  # a valid reply
    assert [c.choices[0].finish_reason for c in ep.calls[1:]] == ["cancelled", "cancelled"]
    assert all(any("'cancelled'" in n for n in c.notes) for c in ep.calls[1:])


DEEP = RAW(b'{"choices": ' + b"[" * 100_000 + b"]" * 100_000 + b"}")
MALFORMED = {
    "choice-not-object": (GENERATE, {"choices": [42]}),
    "choices-not-list": (GENERATE, {"choices": "x"}),
    "no-choices": (GENERATE, {"choices": []}),
    "null-index": (GENERATE, {"choices": [{"index": None, "token_ids": [1, 2]}]}),
    "bool-ids": (GENERATE, {"choices": [{"index": 0, "token_ids": [True]}]}),
    "deep": (GENERATE, DEEP),
    "derender-choice-null": (DERENDER, {"choices": [None]}),
    "derender-null-index": (DERENDER, {"choices": [{"index": None, "message": {}}]}),
    "derender-content-list": (DERENDER,
                              {"choices": [{"index": 0, "message": {"content": [{"x": 1}]}}]}),
    "derender-bad-calls": (DERENDER,
                           {"choices": [{"index": 0, "message": {"content": "", "tool_calls": [1]}}]}),
    "derender-deep": (DERENDER, DEEP),
}  # fmt: skip


@pytest.mark.parametrize("is_async", [False, True])
@pytest.mark.parametrize("case", sorted(MALFORMED))
def test_a_malformed_token_route_reply_is_a_fallback_with_its_reason(
    proxy: Callable[..., tuple[Proxy, str]], case: str, is_async: bool
) -> None:
    route, bad = MALFORMED[case]
    _, url = proxy(on(route, lambda req, rep: bad))
    ep, replies = episode(url, "auto", is_async=is_async)
    assert all(isinstance(r, openai.types.chat.ChatCompletion) for r in replies)
    assert [c.sent_as for c in ep.calls] == ["messages"] * 3
    for call in ep.calls[1:]:
        assert (call.fallback or "").startswith("token route failed: "), call.fallback
    assert "failed_calls" not in ep.metadata


def test_a_cancelled_call_leaves_the_same_trace_in_both_modes() -> None:
    """An agent framework cancels a call (its own timeout): the episode says so, in either mode."""

    async def run(url: str, mode: str) -> Episode:
        recorder, _, client = recording(url, token_mode=mode)
        async with recorder.episode("t") as ep:
            messages: list[Any] = [SYSTEM, user("What is 2 + 3?")]
            first = await client.chat.completions.create(model="tiny", messages=messages, max_tokens=2, seed=1)
            messages += [as_message(first), user("Again.")]
            task = asyncio.ensure_future(
                client.chat.completions.create(model="tiny", messages=messages, max_tokens=2, seed=2)
            )
            await asyncio.sleep(0.5)  # the request is at the server, which takes 2 s per call
            task.cancel()
            with pytest.raises(asyncio.CancelledError):
                await task
        await recorder.aclose()
        return ep

    with EmbeddedServer(seed=0, latency_s=2.0) as slow:
        traces = {mode: asyncio.run(run(slow.base_url, mode)) for mode in ("off", "auto")}
    for ep in traces.values():
        assert len(ep.calls) == 1
    assert traces["auto"].metadata["failed_calls"] == traces["off"].metadata["failed_calls"]
    assert traces["auto"].metadata["failed_calls"][0]["error"].startswith("CancelledError")


@pytest.mark.parametrize("bad", [None, math.nan], ids=["null", "nan"])
def test_null_and_nan_logprobs_are_flagged_and_kept_out_of_training_in_both_modes(
    proxy: Callable[..., tuple[Proxy, str]], bad: Any
) -> None:
    """As `rollout.reply_ids` does for a messages-mode reply: a note, and no logprobs for training."""

    def tamper(path: str, req: Any, rep: Any) -> Any:
        if path in (GENERATE, "/v1/chat/completions"):
            rep["choices"][0]["logprobs"]["content"][-1]["logprob"] = bad
        return rep

    _, url = proxy(tamper, refuse=(DERENDER,))  # without derender: the client reads the generate reply
    runs = {m: episode(url, m) for m in ("off", "auto")}
    assert [c.sent_as for c in runs["auto"][0].calls] == ["messages", "tokens", "tokens"], [c.fallback for c in runs["auto"][0].calls]
    for mode, (ep, _) in runs.items():
        for call in ep.calls:
            assert call.choices[0].logprobs is None, mode
            n = len(call.choices[0].ids)
            assert f"choice 0: 1 of {n} logprobs are null or NaN; logprobs dropped" in call.notes, (mode, call.notes)
    # strict=True: a TokenRecordError after the call, in token mode as in messages mode.
    _, url = proxy(lambda path, req, rep: tamper(path, req, rep) if path == GENERATE else rep, refuse=(DERENDER,))
    strict = Recorder(request_token_ids=True, request_logprobs=True, strict=True)
    client = strict.wrap(openai.OpenAI(base_url=url, api_key="unused", max_retries=0))
    with strict.episode("t") as ep:
        messages: list[Any] = [SYSTEM, user("2 + 3?")]
        first = client.chat.completions.create(model="tiny", messages=messages, max_tokens=4)
        with pytest.raises(TokenRecordError, match="null or NaN"):
            client.chat.completions.create(model="tiny", messages=[*messages, as_message(first), user("Again.")],
                                           max_tokens=4)  # fmt: skip
    assert len(ep.calls) == 1 and len(ep.metadata["failed_calls"]) == 1
    assert "null or NaN" in ep.metadata["failed_calls"][0]["error"]


def _second_turn(url: str, seed: int, **kw: Any) -> tuple[Episode, Any]:
    """A messages-mode first call, then a stitched second one with `kw`; (episode, second reply)."""
    recorder, client, _ = recording(url)
    messages: list[Any] = [SYSTEM, user("What is 2 + 3?")]
    with recorder.episode("t") as ep:
        first = client.chat.completions.create(model="tiny", messages=messages, max_tokens=4, seed=1)
        second = client.chat.completions.create(model="tiny", messages=[*messages, as_message(first), user("Again.")],
                                                seed=seed, **kw)  # fmt: skip
    recorder.close()
    assert ep.calls[1].sent_as == "tokens", ep.calls[1].fallback
    return ep, second


def test_text_ends_where_the_servers_own_parse_ends_it(proxy: Callable[..., tuple[Proxy, str]],
                                                       server: EmbeddedServer) -> None:  # fmt: skip
    """Without derender the client detokenizes: a stop string's ids are text (cut where the string
    starts), only a stop token (EOS, a stop_token_ids match) is left out, as the server's parse does."""
    _, bare = proxy(lambda path, req, rep: rep, refuse=(DERENDER,))
    checked = {"stop string": 0, "eos": 0, "stop token": 0}
    for seed in range(12):
        _, free = _second_turn(server.base_url, seed, max_tokens=16)
        text = free.choices[0].message.content or ""
        # A stop string: a character whose first occurrence is not at the start.
        stops = [ch for i, ch in enumerate(text) if i > 0 and text.find(ch) == i and ch.strip()]
        cases: list[tuple[str, dict[str, Any]]] = [("eos", {"max_tokens": 16})]
        if stops:
            cases.append(("stop string", {"max_tokens": 16, "stop": [stops[-1]]}))
        ep_free, _ = _second_turn(server.base_url, seed, max_tokens=16)
        ids = ep_free.calls[1].choices[0].ids.tolist()
        if len(ids) > 2:
            cases.append(("stop token", {"max_tokens": 16, "extra_body": {"stop_token_ids": [ids[1]]}}))
        for name, kw in cases:
            ep_a, ref = _second_turn(server.base_url, seed, **kw)  # the server's derender
            ep_b, got = _second_turn(bare, seed, **kw)  # the client's own parse
            if name == "eos" and ref.choices[0].finish_reason != "stop":
                continue
            assert ref.choices[0].finish_reason == "stop", name
            assert (got.choices[0].message.content, got.choices[0].finish_reason) == (
                ref.choices[0].message.content, ref.choices[0].finish_reason), (name, seed)  # fmt: skip
            assert ep_b.calls[1].choices[0].ids.tolist() == ep_a.calls[1].choices[0].ids.tolist()
            checked[name] += 1
    assert all(checked.values()), checked


def _without_max_model_len(path: str, req: Any, rep: Any) -> Any:
    if path == "/tokenize" and isinstance(rep, dict):
        rep.pop("max_model_len", None)
    return rep


def test_a_call_without_max_tokens_gets_the_rest_of_the_context(
    proxy: Callable[..., tuple[Proxy, str]], server: EmbeddedServer
) -> None:
    """As the chat endpoint gives it, when /tokenize does not say the context length: the model card does."""
    seen_by, url = proxy(_without_max_model_len)
    runs = {m: episode(url, m, max_tokens=None) for m in ("off", "auto")}
    on = runs["auto"][0]
    assert [c.sent_as for c in on.calls] == ["messages", "tokens", "tokens"], [c.fallback for c in on.calls]
    limit = server.state.max_model_len
    generated = [b for p, b in seen_by.bodies if p == GENERATE]
    assert [g["sampling_params"]["max_tokens"] for g in generated] == [limit - len(g["token_ids"]) for g in generated]
    assert all(c.choices[0].finish_reason == "stop" for c in on.calls)  # not cut at 16 tokens
    assert_same_where_prompts_match(runs["auto"], runs["off"], logprobs=False)


def test_a_server_that_reports_no_context_length_sends_such_calls_as_messages(
    proxy: Callable[..., tuple[Proxy, str]],
) -> None:
    def tamper(path: str, req: Any, rep: Any) -> Any:
        if path == "/v1/models":
            for card in rep["data"]:
                card.pop("max_model_len", None)
        return _without_max_model_len(path, req, rep)

    _, url = proxy(tamper)
    ep, _ = episode(url, "auto", max_tokens=None)
    assert [c.sent_as for c in ep.calls] == ["messages"] * 3
    assert all("context length" in (c.fallback or "") for c in ep.calls[1:]), [c.fallback for c in ep.calls]
    ep, _ = episode(url, "auto", max_tokens=3)  # with max_tokens, nothing to ask
    assert [c.sent_as for c in ep.calls] == ["messages", "tokens", "tokens"]


@pytest.mark.parametrize("derender", [True, False], ids=["derender", "client-parse"])
@pytest.mark.parametrize(
    "ask",
    [{"logprobs": True}, {"logprobs": True, "top_logprobs": 3},
     {"logprobs": True, "top_logprobs": 2, "extra_body": {"return_tokens_as_token_ids": True}}],
    ids=["logprobs", "top3", "as-ids"],
)  # fmt: skip
def test_the_agent_sees_the_logprobs_messages_mode_shows(
    proxy: Callable[..., tuple[Proxy, str]], derender: bool, ask: dict[str, Any]
) -> None:
    """Token text, bytes and top_logprobs, not `token_id:N` (unless the agent asked for those)."""
    _, url = proxy(lambda path, req, rep: rep, refuse=() if derender else (DERENDER,))
    runs = {m: episode(url, m, turns=4, **ask) for m in ("off", "auto")}
    assert [c.sent_as for c in runs["auto"][0].calls] == ["messages"] + ["tokens"] * 3
    assert assert_same_where_prompts_match(runs["auto"], runs["off"], logprobs=True) >= 2
    for reply in runs["auto"][1]:
        entries = reply.choices[0].logprobs.content
        assert entries and all(len(e.top_logprobs) == ask.get("top_logprobs", 0) for e in entries)
        as_ids = "extra_body" in ask
        assert all(e.token.startswith("token_id:") == as_ids for e in entries)
