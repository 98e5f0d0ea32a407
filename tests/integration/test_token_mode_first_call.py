"""`token_mode="all"`: an episode's first call goes as token ids too (issue 23, the lean path).

The server renders the first call's messages (`/tokenize`) and generates from
those ids, so the client never builds the SDK's objects for it and its prompt
ids are the server's own rendering. It is an option, not the default: these
tests are the differential evidence that the agent sees what the chat route
gives it, through the real openai SDK against the embedded server.
"""

from __future__ import annotations

import asyncio
from typing import Any

import openai
import pytest

from rollout import Recorder, TokenSource, assemble
from rollout.collection import ConfigError, load_config
from rollout.embedded import EmbeddedServer
from tests.integration.test_token_mode import (
    TOOLS,
    assert_on_policy,
    forced_tool_policy,
    reply_message,
)
from tests.integration.test_token_mode_parity import (
    GENERATE,
    SYSTEM,
    assert_same_where_prompts_match,
    episode,
    proxy,  # noqa: F401  (fixture)
    seen,
    user,
)


@pytest.mark.parametrize("is_async", [False, True])
@pytest.mark.parametrize("turns", [1, 3])
def test_the_agent_sees_what_the_chat_route_gives_it(server: EmbeddedServer, is_async: bool, turns: int) -> None:
    lean = episode(server.base_url, "all", turns, is_async=is_async)
    chat = episode(server.base_url, "off", turns, is_async=is_async)
    # The server rendered the first call's messages to the same ids its chat route did.
    assert lean[0].calls[0].prompt_ids.tolist() == chat[0].calls[0].prompt_ids.tolist()
    # The agent asked for no logprobs (the recorder adds them for its record): compared without.
    assert assert_same_where_prompts_match(lean, chat, logprobs=False) >= 1
    first = lean[0].calls[0]
    assert (first.sent_as, first.fallback, first.parent) == ("tokens", None, None)
    assert first.prompt_source is TokenSource.TOKEN_IN
    assert [c.sent_as for c in lean[0].calls] == ["tokens"] * turns
    assert_on_policy(server, lean[0])
    assert len(assemble([lean[0]])) == 1


def test_auto_still_sends_first_calls_as_messages(server: EmbeddedServer) -> None:
    ep, _ = episode(server.base_url, "auto", 2)
    assert [c.sent_as for c in ep.calls] == ["messages", "tokens"]


@pytest.mark.parametrize("ask", [{"logprobs": True}, {"logprobs": True, "top_logprobs": 2}], ids=["logprobs", "top2"])
def test_logprobs_the_agent_asks_for_are_the_chat_routes(server: EmbeddedServer, ask: dict[str, Any]) -> None:
    lean = episode(server.base_url, "all", 2, **ask)
    chat = episode(server.base_url, "off", 2, **ask)
    assert lean[0].calls[0].sent_as == "tokens"
    assert assert_same_where_prompts_match(lean, chat, logprobs=True) >= 1


def test_a_streamed_tool_calling_first_call_replies_alike() -> None:
    """Tools rendered by the server, the tool call parsed, the stream replayed: as the chat route."""
    with EmbeddedServer(policy=forced_tool_policy(), seed=0) as srv:
        out = {}
        for mode in ("all", "off"):
            recorder = Recorder(request_token_ids=True, request_logprobs=True, token_mode=mode)
            client = recorder.wrap(openai.OpenAI(base_url=srv.base_url, api_key="unused", max_retries=0))
            with recorder.episode("tools") as ep:
                plain = client.chat.completions.create(
                    model="tiny", messages=[SYSTEM, user("Use add on 2 and 3.")], tools=TOOLS, max_tokens=3, seed=1
                )
            with recorder.episode("stream") as streamed_ep:
                stream = client.chat.completions.create(
                    model="tiny", messages=[SYSTEM, user("What is 1 + 1?")], max_tokens=3, seed=2,
                    stream=True, stream_options={"include_usage": True},
                )  # fmt: skip
                chunks = [(c.choices[0].delta.content, c.choices[0].finish_reason) if c.choices else c.usage.total_tokens
                          for c in stream]  # fmt: skip
            recorder.close()
            out[mode] = (ep, plain, streamed_ep, chunks)
        (lean, lean_reply, lean_stream, lean_chunks), (chat, chat_reply, chat_stream, chat_chunks) = out["all"], out["off"]
        assert lean.calls[0].sent_as == "tokens" and lean_stream.calls[0].sent_as == "tokens"
        assert lean.calls[0].prompt_ids.tolist() == chat.calls[0].prompt_ids.tolist()
        assert seen(lean_reply, logprobs=False) == seen(chat_reply, logprobs=False)
        assert lean_reply.choices[0].message.tool_calls
        assert reply_message(lean_reply)["tool_calls"][0]["function"] == reply_message(chat_reply)["tool_calls"][0]["function"]
        assert lean_stream.calls[0].prompt_ids.tolist() == chat_stream.calls[0].prompt_ids.tolist()
        assert "".join(c[0] or "" for c in lean_chunks if isinstance(c, tuple)) == "".join(
            c[0] or "" for c in chat_chunks if isinstance(c, tuple))  # fmt: skip
        assert lean_chunks[-1] == chat_chunks[-1]  # the usage chunk


def test_repeated_first_calls_are_rendered_once(proxy: Any) -> None:  # noqa: F811
    """Samples of one task start from the same messages: the server renders them once."""
    p, url = proxy(lambda path, req, rep: rep)
    recorder = Recorder(request_token_ids=True, request_logprobs=True, token_mode="all")
    client = recorder.wrap(openai.OpenAI(base_url=url, api_key="unused", max_retries=0))
    replies = []
    for k in range(4):
        with recorder.episode("t", sample=k):
            replies.append(client.chat.completions.create(
                model="tiny", messages=[SYSTEM, user("What is 2 + 3?")], max_tokens=4, seed=k))  # fmt: skip
    recorder.close()
    assert p.hits.count("/tokenize") == 1
    assert p.hits.count(GENERATE) == 4 and "/v1/chat/completions" not in p.hits
    assert len({r.choices[0].message.content for r in replies}) >= 1


def test_a_server_that_cannot_render_sends_the_first_call_as_messages(proxy: Any) -> None:  # noqa: F811
    p, url = proxy(lambda path, req, rep: rep, refuse=("/tokenize",))
    recorder = Recorder(request_token_ids=True, request_logprobs=True, token_mode="all")
    client = recorder.wrap(openai.AsyncOpenAI(base_url=url, api_key="unused", max_retries=0))

    async def run() -> Any:
        async with recorder.episode("t") as ep:
            reply = await client.chat.completions.create(model="tiny", messages=[SYSTEM, user("Hi")], max_tokens=3)
        await recorder.aclose()
        return ep, reply

    ep, reply = asyncio.run(run())
    assert isinstance(reply, openai.types.chat.ChatCompletion)
    call = ep.calls[0]
    assert call.sent_as == "messages" and "cannot render messages" in (call.fallback or ""), call.fallback
    assert call.prompt_source is TokenSource.VLLM  # the chat route's own ids, still exact
    assert "/v1/chat/completions" in p.hits


def test_the_config_accepts_all_and_names_the_choices_otherwise(tmp_path: Any) -> None:
    path = tmp_path / "c.yaml"
    path.write_text("tasks: [{prompt: x}]\nbackend:\n  token_mode: all\n")
    assert load_config(path).backend.token_mode == "all"
    path.write_text("tasks: [{prompt: x}]\nbackend:\n  token_mode: first\n")
    with pytest.raises(ConfigError, match="all"):
        load_config(path)
    with pytest.raises(ValueError, match="'auto', 'all' or 'off'"):
        Recorder(token_mode="first")  # type: ignore[arg-type]
