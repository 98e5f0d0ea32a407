"""Token mode against the embedded server over real HTTP: an episode is one exact row.

Every test drives the real openai SDK, wrapped by the recorder, against the
embedded server's vLLM-format routes. The checks are on what the server
actually generated from: a stitched prompt is the parent's prompt + sampled
ids + the template's join + the new turn, and the server's own policy
reproduces every recorded logprob on it.
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from typing import Any

import numpy as np
import openai
import pytest
from aiohttp import web

from rollout import Episode, Recorder, TokenSource, assemble
from rollout.embedded import END_ID, ChatTemplate, EmbeddedServer, Policy
from rollout.embedded.template import TOOL_CALL_PREFIX, encode_text
from rollout.tokenmode import EDITED_HISTORY, FIRST_CALL, TOOLS_CHANGED

T = ChatTemplate()
SYSTEM = {"role": "system", "content": "Answer with the number only."}
TOOLS = [{"type": "function", "function": {"name": "add", "description": "a + b",
                                           "parameters": {"type": "object"}}}]  # fmt: skip


def user(text: str) -> dict[str, Any]:
    return {"role": "user", "content": text}


def recording(server: EmbeddedServer, **options: Any) -> tuple[Recorder, openai.OpenAI, openai.AsyncOpenAI]:
    recorder = Recorder(request_token_ids=True, request_logprobs=True, **options)
    sync = recorder.wrap(openai.OpenAI(base_url=server.base_url, api_key="unused", max_retries=0))
    async_ = recorder.wrap(openai.AsyncOpenAI(base_url=server.base_url, api_key="unused", max_retries=0))
    return recorder, sync, async_


def reply_message(reply: Any) -> dict[str, Any]:
    return reply.choices[0].message.model_dump(exclude_none=True)


def assert_on_policy(server: EmbeddedServer, episode: Episode, temperature: float = 1.0) -> None:
    """Every recorded logprob is the server policy's logprob of that id on that prompt."""
    for call in episode.calls:
        for choice in call.choices:
            recomputed = server.policy.logprobs(call.prompt_ids.tolist(), choice.ids.tolist(), temperature)
            assert choice.logprobs is not None
            np.testing.assert_allclose(recomputed, choice.logprobs, rtol=0, atol=1e-5)


def new_turn_ids(messages: list[dict[str, Any]], tools: Any = None) -> list[int]:
    """The template's ids for messages that follow an assistant turn, generation prompt included."""
    ids: list[int] = []
    for m in messages:
        ids += T.render_message(m)
    return ids + T.generation_prompt


def three_turns(client: openai.OpenAI, max_tokens: int = 4, seed: int = 0, **extra: Any) -> list[Any]:
    messages: list[dict[str, Any]] = [SYSTEM, user("What is 2 + 3?")]
    replies = []
    for turn in range(3):
        reply = client.chat.completions.create(
            model="tiny", messages=messages, max_tokens=max_tokens, seed=seed * 10 + turn, **extra
        )
        replies.append(reply)
        messages = [*messages, reply_message(reply), user("Wrong. What is 2 + 3?")]
    return replies


def test_later_calls_go_as_token_ids_and_the_episode_is_one_exact_row(server: EmbeddedServer) -> None:
    recorder, client, _ = recording(server)
    with recorder.episode("t") as ep:
        replies = three_turns(client)
    first, second, third = ep.calls
    assert (first.sent_as, first.fallback) == ("messages", FIRST_CALL)
    assert [c.sent_as for c in (second, third)] == ["tokens", "tokens"]
    assert second.prompt_source is TokenSource.TOKEN_IN and second.parent == 0 and third.parent == 1
    for parent, child in ((first, second), (second, third)):
        sampled = parent.choices[0]
        full = [*parent.prompt_ids.tolist(), *sampled.ids.tolist()]
        # A parent cut off by max_tokens gets the template's end-of-turn token as context.
        join = [] if sampled.ids[-1] == END_ID else [END_ID]
        assert child.prompt_ids.tolist() == full + join + new_turn_ids([user("Wrong. What is 2 + 3?")])
    # The agent got normal ChatCompletions, with the content the record holds.
    for reply, call in zip(replies, ep.calls, strict=True):
        assert isinstance(reply, openai.types.chat.ChatCompletion)
        assert reply.choices[0].message.content == call.choices[0].message["content"]
    assert_on_policy(server, ep)
    result = assemble([ep])
    assert len(result) == 1 and result.num_drift == 0 and result.num_merged == 2
    row = result[0]
    assert row.num_sampled == sum(len(c.choices[0].ids) for c in ep.calls)
    assert row.tokens.tolist()[: len(third.prompt_ids)] == third.prompt_ids.tolist()


def test_async_twin_and_streamed_calls(server: EmbeddedServer) -> None:
    recorder, _, client = recording(server)

    async def run() -> tuple[Episode, list[str]]:
        texts = []
        async with recorder.episode("t") as ep:
            messages: list[dict[str, Any]] = [SYSTEM, user("What is 4 + 4?")]
            for turn in range(3):
                stream = await client.chat.completions.create(
                    model="tiny", messages=messages, max_tokens=3, seed=turn, stream=True,
                    stream_options={"include_usage": True},
                )  # fmt: skip
                parts = [c.choices[0].delta.content or "" async for c in stream if c.choices]
                texts.append("".join(parts))
                messages = [*messages, {"role": "assistant", "content": texts[-1]}, user("Again.")]
        await recorder.aclose()
        return ep, texts

    ep, texts = asyncio.run(run())
    assert [c.sent_as for c in ep.calls] == ["messages", "tokens", "tokens"]
    assert [c.choices[0].message["content"] for c in ep.calls] == texts
    assert all(c.usage and c.usage["completion_tokens"] == len(c.choices[0].ids) for c in ep.calls)
    assert_on_policy(server, ep)
    assert len(assemble([ep])) == 1


def test_the_same_episodes_drift_as_messages_and_not_as_tokens(server: EmbeddedServer) -> None:
    """Re-rendering sampled replies (multi-token numbers, cut-off turns) is not a prefix extension."""
    results = {}
    for mode in ("off", "auto"):
        recorder, client, _ = recording(server, token_mode=mode)
        for seed in range(8):
            with recorder.episode("t", sample=seed):
                three_turns(client, seed=seed)
        episodes = recorder.episodes()
        sent = {c.sent_as for e in episodes for c in e.calls[1:]}
        assert sent == ({"messages"} if mode == "off" else {"tokens"})
        results[mode] = assemble(episodes)
    assert results["off"].num_drift > 0 and len(results["off"]) > 8
    assert results["auto"].num_drift == 0 and len(results["auto"]) == 8


def test_fallbacks_say_why(server: EmbeddedServer) -> None:
    recorder, client, _ = recording(server)
    with recorder.episode("t") as ep:
        r1 = client.chat.completions.create(model="tiny", messages=[SYSTEM, user("1 + 1?")], max_tokens=2)
        history = [SYSTEM, user("1 + 1?"), reply_message(r1)]
        edited = [SYSTEM, user("1 + 2?"), reply_message(r1), user("again")]
        client.chat.completions.create(model="tiny", messages=edited, max_tokens=2)
        client.chat.completions.create(model="tiny", messages=[*history, user("tools?")], max_tokens=2,
                                       tools=TOOLS)  # fmt: skip
        client.chat.completions.create(model="tiny", messages=[*history, user("json?")], max_tokens=2,
                                       response_format={"type": "json_object"})  # fmt: skip
    fallbacks = [c.fallback for c in ep.calls]
    assert fallbacks[:3] == [FIRST_CALL, EDITED_HISTORY, TOOLS_CHANGED]
    assert "response_format" in (fallbacks[3] or "")
    assert all(c.sent_as == "messages" for c in ep.calls)


def forced_tool_policy(seed: int = 0) -> Policy:
    """A policy that always starts its reply with `CALL`: the embedded tool-call format."""
    policy = Policy(seed=seed)
    weights = policy.get_weights()
    call_id = policy.vocab_index(encode_text(TOOL_CALL_PREFIX)[0])
    assert call_id is not None
    weights["b"][call_id] = 30.0
    policy.set_weights(weights)
    return policy


def test_a_tool_calling_episode_round_trips_exact_ids() -> None:
    with EmbeddedServer(policy=forced_tool_policy(), seed=0) as srv:
        recorder, client, _ = recording(srv)
        with recorder.episode("tools") as ep:
            messages: list[dict[str, Any]] = [SYSTEM, user("Use add on 2 and 3.")]
            first = client.chat.completions.create(model="tiny", messages=messages, tools=TOOLS,
                                                   max_tokens=3, seed=1)  # fmt: skip
            call = first.choices[0].message.tool_calls[0]
            messages += [reply_message(first), {"role": "tool", "tool_call_id": call.id, "content": "5"}]
            second = client.chat.completions.create(model="tiny", messages=messages, tools=TOOLS,
                                                    max_tokens=3, seed=2)  # fmt: skip
        assert first.choices[0].finish_reason == "tool_calls"
        assert second.choices[0].message.tool_calls  # derendered by the server's own parser
        parent, child = ep.calls
        assert (parent.sent_as, child.sent_as) == ("messages", "tokens")
        tool = {"role": "tool", "tool_call_id": call.id, "content": "5"}
        join = [] if parent.choices[0].ids[-1] == END_ID else [END_ID]
        expected = [*parent.prompt_ids.tolist(), *parent.choices[0].ids.tolist(), *join, *new_turn_ids([tool])]
        assert child.prompt_ids.tolist() == expected
        assert_on_policy(srv, ep)
        assert len(assemble([ep])) == 1


def test_n_choices_each_branch_stitches_onto_its_own_choice(server: EmbeddedServer) -> None:
    recorder, client, _ = recording(server)
    with recorder.episode("t") as ep:
        messages = [SYSTEM, user("What is 7 + 1?")]
        first = client.chat.completions.create(model="tiny", messages=messages, max_tokens=3, n=2, seed=3)
        for choice in first.choices:
            msg = choice.message.model_dump(exclude_none=True)
            client.chat.completions.create(model="tiny", messages=[*messages, msg, user("again")],
                                           max_tokens=2, seed=4)  # fmt: skip
    parent = ep.calls[0]
    for child, choice in zip(ep.calls[1:], parent.choices, strict=True):
        assert child.sent_as == "tokens"
        base = [*parent.prompt_ids.tolist(), *choice.ids.tolist()]
        assert child.prompt_ids.tolist()[: len(base)] == base
    result = assemble([ep])
    assert len(result) == 2 and result.num_drift == 0
    assert_on_policy(server, ep)


# --- a server whose token routes fail ------------------------------------------------------


class Broken:
    """A proxy in front of the embedded server that breaks one route."""

    def __init__(self, upstream: EmbeddedServer, route: str, status: int) -> None:
        self.upstream, self.route, self.status = upstream, route, status
        self.hits: list[str] = []

    async def handle(self, request: web.Request) -> web.StreamResponse:
        self.hits.append(request.path)
        if request.path == self.route:
            return web.json_response({"error": {"message": "broken on purpose"}}, status=self.status)
        import aiohttp

        async with aiohttp.ClientSession() as s, s.request(
            request.method, self.upstream.url + request.path, data=await request.read(),
            headers={"Content-Type": request.headers.get("Content-Type", "application/json")},
        ) as r:  # fmt: skip
            return web.Response(body=await r.read(), status=r.status, content_type="application/json")


@pytest.fixture
def broken(server: EmbeddedServer, request: pytest.FixtureRequest) -> Iterator[tuple[Broken, str]]:
    route, status = request.param
    proxy = Broken(server, route, status)
    app = web.Application()
    app.router.add_route("*", "/{tail:.*}", proxy.handle)
    loop = asyncio.new_event_loop()
    runner = web.AppRunner(app)
    loop.run_until_complete(runner.setup())
    site = web.TCPSite(runner, "127.0.0.1", 0)
    loop.run_until_complete(site.start())
    port = runner.addresses[0][1]
    import threading

    thread = threading.Thread(target=loop.run_forever, daemon=True)
    thread.start()
    try:
        yield proxy, f"http://127.0.0.1:{port}/v1"
    finally:
        asyncio.run_coroutine_threadsafe(runner.cleanup(), loop).result(10)
        loop.call_soon_threadsafe(loop.stop)
        thread.join(10)


@pytest.mark.parametrize(
    ("broken", "reason"),
    [
        (("/tokenize", 404), "cannot render messages"),
        (("/inference/v1/generate", 500), "token route failed"),
    ],
    indirect=["broken"],
)
def test_a_failing_token_route_falls_back_to_messages(broken: tuple[Broken, str], reason: str) -> None:
    proxy, url = broken
    recorder = Recorder(request_token_ids=True, request_logprobs=True)
    client = recorder.wrap(openai.OpenAI(base_url=url, api_key="unused", max_retries=0))
    with recorder.episode("t") as ep:
        replies = three_turns(client)
    assert all(isinstance(r, openai.types.chat.ChatCompletion) for r in replies)
    assert [c.sent_as for c in ep.calls] == ["messages"] * 3
    assert reason in (ep.calls[1].fallback or ""), ep.calls[1].fallback
    assert "/v1/chat/completions" in proxy.hits


@pytest.mark.parametrize("broken", [("/nothing-is-broken", 500)], indirect=True)
def test_a_repeated_new_turn_is_rendered_by_the_server_once(
    broken: tuple[Broken, str], monkeypatch: pytest.MonkeyPatch
) -> None:
    proxy, url = broken

    def episodes(recorder: Recorder) -> list[Episode]:
        client = recorder.wrap(openai.OpenAI(base_url=url, api_key="unused", max_retries=0))
        out = []
        for k in range(3):
            with recorder.episode("t", sample=k) as ep:
                three_turns(client, seed=k)
            out.append(ep)
        return out

    cached = episodes(Recorder(request_token_ids=True, request_logprobs=True))
    # The join (two placeholder turns) and "Wrong. What is 2 + 3?" once; 6 later turns stitched.
    assert proxy.hits.count("/tokenize") == 3
    assert [c.sent_as for e in cached for c in e.calls].count("tokens") == 6
    # The same ids as a recorder that has the server render every bridge.
    monkeypatch.setattr("rollout.tokenmode.server.RENDER_CACHE_KEY_CHARS", -1)
    fresh = episodes(Recorder(request_token_ids=True, request_logprobs=True))
    assert proxy.hits.count("/tokenize") == 3 + 2 + 6
    for a, b in zip(cached, fresh, strict=True):
        for x, y in zip(a.calls, b.calls, strict=True):
            assert x.prompt_ids.tolist() == y.prompt_ids.tolist()
            assert x.choices[0].ids.tolist() == y.choices[0].ids.tolist()


def test_main_job_runs_in_token_mode_with_no_drift(tmp_path: Any) -> None:
    from rollout.collection import collect
    from rollout.export import read_jsonl

    out = tmp_path / "eps.jsonl"
    summary = collect("configs/local.yaml", output={"path": str(out)}, progress=False, limit=6)
    episodes = read_jsonl(out)
    assert summary.finished == len(episodes) == 24
    result = assemble(episodes)
    assert len(result) == len(episodes) and result.num_drift == 0
    later = [c for e in episodes for c in e.calls if c.index > 0]
    assert later and all(c.sent_as == "tokens" for c in later)
    assert summary.check() is None  # trainable tokens, not every episode failed


def test_the_config_switch_turns_token_mode_off_even_unquoted_in_yaml(tmp_path: Any) -> None:
    """`backend.token_mode=off` on the command line is YAML's False: it means off."""
    from rollout.collection import collect

    summary = collect(
        "configs/local.yaml", overrides=["backend.token_mode=off", "limit=2"], output={"path": None}, progress=False
    )
    calls = [c for e in summary.episodes or [] for c in e.calls]
    assert calls and all(c.sent_as == "messages" and c.fallback is None for c in calls)
