"""Token mode with the chat template on the client (`Recorder(local_template=...)`, issue 23).

The client renders and parses, the server only generates: one request per
call. These are the differential tests (through the real openai SDK,
against the embedded server over HTTP) that the agent sees what the chat
route gives it, and the tests that a template which is not the server's is
caught before it is used.
"""

from __future__ import annotations

import asyncio
import random
from typing import Any

import openai
import pytest

from rollout import Recorder, TokenSource, assemble
from rollout.embedded import ClientTemplate, EmbeddedServer
from rollout.tokenmode.local_template import VERIFY_RENDERS, LocalTemplate
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

DERENDER = "/v1/chat/completions/derender"


@pytest.fixture(autouse=True)
def no_rechecks(monkeypatch: pytest.MonkeyPatch) -> None:
    """Re-checks of trusted kinds come at random gaps, the first possibly at the first trusted call:
    tests that count the checks see none (those about re-checks set their own gaps)."""
    import rollout.tokenmode.local_template as local_template

    monkeypatch.setattr(local_template, "RECHECK_EVERY", 10**9)


def local(**extra: Any) -> dict[str, Any]:
    return {"local_template": ClientTemplate(), **extra}


class OffByOne(ClientTemplate):
    """A template that is not the server's: it adds a token after the generation prompt."""

    def render(
        self, messages: list[Any], tools: Any, chat_template_kwargs: Any, *, generation_prompt: bool
    ) -> list[int]:
        ids = super().render(
            messages, tools, chat_template_kwargs, generation_prompt=generation_prompt
        )
        return [*ids, 220] if generation_prompt else ids


class OffOnToolResults(ClientTemplate):
    """A template that is the server's except on tool results (as an older template file might be)."""

    def render(self, messages: list[Any], tools: Any, chat_template_kwargs: Any, *, generation_prompt: bool) -> list[int]:
        ids = super().render(messages, tools, chat_template_kwargs, generation_prompt=generation_prompt)
        return [*ids, 220] if any(m.get("role") == "tool" for m in messages) else ids


class Refusing(ClientTemplate):
    def render(
        self, messages: list[Any], tools: Any, chat_template_kwargs: Any, *, generation_prompt: bool
    ) -> list[int]:
        raise KeyError("this template has no tool role")


class BadDecoder(ClientTemplate):
    def decode(self, ids: list[int], *, skip_special_tokens: bool) -> str:
        raise RuntimeError("Already borrowed")  # a fast tokenizer used from two threads at once


def test_a_template_that_cannot_decode_sends_the_call_as_messages(server: EmbeddedServer) -> None:
    """The agent still gets its reply (the chat route's), the record says why, the run goes on."""
    ep, replies = episode(server.base_url, "all", 2, recorder_options={"local_template": BadDecoder()})
    assert all(isinstance(r.choices[0].message.content, str) for r in replies)
    assert [c.sent_as for c in ep.calls] == ["messages", "messages"]
    assert "could not decode" in (ep.calls[0].fallback or "") and "RuntimeError" in (ep.calls[0].fallback or "")
    assert all(c.exact for c in ep.calls)


def test_the_embedded_template_is_a_local_template() -> None:
    assert isinstance(ClientTemplate(), LocalTemplate)


@pytest.mark.parametrize("is_async", [False, True])
@pytest.mark.parametrize("turns", [1, 3])
def test_the_agent_sees_what_the_chat_route_gives_it(
    server: EmbeddedServer, is_async: bool, turns: int
) -> None:
    lean = episode(server.base_url, "all", turns, is_async=is_async, recorder_options=local())
    chat = episode(server.base_url, "off", turns, is_async=is_async)
    assert lean[0].calls[0].prompt_ids.tolist() == chat[0].calls[0].prompt_ids.tolist()
    assert assert_same_where_prompts_match(lean, chat, logprobs=False) >= 1
    assert [(c.sent_as, c.fallback) for c in lean[0].calls] == [("tokens", None)] * turns
    assert lean[0].calls[0].prompt_source is TokenSource.TOKEN_IN
    assert_on_policy(server, lean[0])
    assert len(assemble([lean[0]])) == 1


def test_auto_with_a_template_matches_auto_without_one(server: EmbeddedServer) -> None:
    """The later calls' bridges, rendered here, are the ids the server's /tokenize gives."""
    lean = episode(server.base_url, "auto", 3, recorder_options=local())
    served = episode(server.base_url, "auto", 3)
    assert [c.sent_as for c in lean[0].calls] == ["messages", "tokens", "tokens"]
    assert [c.prompt_ids.tolist() for c in lean[0].calls] == [
        c.prompt_ids.tolist() for c in served[0].calls
    ]
    assert assert_same_where_prompts_match(lean, served, logprobs=False) == 3


@pytest.mark.parametrize(
    "ask", [{"logprobs": True}, {"logprobs": True, "top_logprobs": 2}], ids=["logprobs", "top2"]
)
def test_logprobs_the_agent_asks_for_are_the_chat_routes(
    server: EmbeddedServer, ask: dict[str, Any]
) -> None:
    lean = episode(server.base_url, "all", 2, recorder_options=local(), **ask)
    chat = episode(server.base_url, "off", 2, **ask)
    assert [c.sent_as for c in lean[0].calls] == ["tokens", "tokens"]
    assert assert_same_where_prompts_match(lean, chat, logprobs=True) >= 1


def test_once_checked_each_call_is_one_generate_request(proxy: Any) -> None:  # noqa: F811
    p, url = proxy(lambda path, req, rep: rep)
    recorder = Recorder(
        request_token_ids=True,
        request_logprobs=True,
        token_mode="all",
        local_template=ClientTemplate(),
    )
    client = recorder.wrap(openai.AsyncOpenAI(base_url=url, api_key="unused", max_retries=0))

    async def run(k: int) -> Any:
        async with recorder.episode("t", sample=k) as ep:
            messages: list[Any] = [SYSTEM, user(f"What is {k} + 3?")]
            for turn in range(3):
                reply = await client.chat.completions.create(
                    model="tiny", messages=messages, max_tokens=3, seed=turn
                )
                messages = [*messages, reply_message(reply), user(f"Again ({k}, {turn}).")]
        return ep

    async def main() -> list[Any]:
        eps = [await run(k) for k in range(6)]
        await recorder.aclose()
        return eps

    eps = asyncio.run(main())
    calls = [c for ep in eps for c in ep.calls]
    assert [c.sent_as for c in calls] == ["tokens"] * 18, [c.fallback for c in calls]
    assert p.hits.count(GENERATE) == 18
    # The checks, then never again: VERIFY_RENDERS of each kind rendered here, the end-of-turn
    # placeholders (an assistant turn alone), first calls (system + user), bridges (assistant + user);
    # and of the one kind of reply (plain text, no tools) parsed here.
    assert p.hits.count("/tokenize") == 3 * VERIFY_RENDERS
    assert p.hits.count(DERENDER) == VERIFY_RENDERS
    assert "/detokenize" not in p.hits and "/v1/chat/completions" not in p.hits
    last = max(i for i, path in enumerate(p.hits) if path in ("/tokenize", DERENDER))
    assert p.hits[last + 1 :].count(GENERATE) >= 12 and set(p.hits[last + 1 :]) == {GENERATE}


def test_a_template_that_is_not_the_servers_is_never_used(proxy: Any) -> None:  # noqa: F811
    """Its first render differs from the server's: no generate is sent from its ids, this call and
    every later one go as messages with the reason, and the episode stays exact (the chat route's ids)."""
    p, url = proxy(lambda path, req, rep: rep)
    recorder = Recorder(
        request_token_ids=True, request_logprobs=True, token_mode="all", local_template=OffByOne()
    )
    client = recorder.wrap(openai.OpenAI(base_url=url, api_key="unused", max_retries=0))
    eps = []
    for k in range(2):
        with recorder.episode("t", sample=k) as ep:
            messages: list[Any] = [SYSTEM, user("What is 2 + 3?")]
            for turn in range(2):
                reply = client.chat.completions.create(
                    model="tiny", messages=messages, max_tokens=3, seed=turn
                )
                messages = [*messages, reply_message(reply), user("Again.")]
        eps.append(ep)
    recorder.close()
    calls = [c for ep in eps for c in ep.calls]
    assert all(
        c.sent_as == "messages" and "differs from the server" in (c.fallback or "") for c in calls
    ), [(c.sent_as, c.fallback) for c in calls]
    assert GENERATE not in p.hits
    assert all(c.prompt_source is TokenSource.VLLM for c in calls)


def test_a_template_that_refuses_sends_the_call_as_messages(server: EmbeddedServer) -> None:
    ep, replies = episode(
        server.base_url, "all", 2, recorder_options={"local_template": Refusing()}
    )
    assert all(r.choices[0].message.content is not None for r in replies)
    assert [c.sent_as for c in ep.calls] == ["messages", "messages"]
    assert "local template cannot render" in (ep.calls[0].fallback or "") and "KeyError" in (
        ep.calls[0].fallback or ""
    )


def test_a_server_without_tokenize_trusts_the_template(proxy: Any) -> None:  # noqa: F811
    """Nothing to check against: the template the user gave is used, one generate per call."""
    p, url = proxy(lambda path, req, rep: rep, refuse=("/tokenize", DERENDER))
    ep, _ = episode(url, "all", 3, recorder_options=local())
    assert [c.sent_as for c in ep.calls] == ["tokens"] * 3, [c.fallback for c in ep.calls]
    assert p.hits.count(GENERATE) == 3 and p.hits.count("/tokenize") == 1


def test_a_streamed_tool_call_is_parsed_here_as_the_chat_route_parses_it() -> None:
    with EmbeddedServer(policy=forced_tool_policy(), seed=0) as srv:
        out = {}
        for mode, options in (("all", local()), ("off", {})):
            recorder = Recorder(
                request_token_ids=True, request_logprobs=True, token_mode=mode, **options
            )  # type: ignore[arg-type]
            client = recorder.wrap(
                openai.OpenAI(base_url=srv.base_url, api_key="unused", max_retries=0)
            )
            with recorder.episode("tools") as ep:
                plain = client.chat.completions.create(
                    model="tiny",
                    messages=[SYSTEM, user("Use add on 2 and 3.")],
                    tools=TOOLS,
                    max_tokens=3,
                    seed=1,
                )
            with recorder.episode("stream") as streamed:
                stream = client.chat.completions.create(
                    model="tiny", messages=[SYSTEM, user("Use add on 2 and 3.")], tools=TOOLS, max_tokens=3, seed=1,
                    stream=True,
                )  # fmt: skip
                deltas = [c.choices[0].delta for c in stream if c.choices]
            recorder.close()
            out[mode] = (ep, plain, deltas, streamed)
        (lean, lean_reply, lean_deltas, lean_streamed), (chat, chat_reply, _, _) = (
            out["all"],
            out["off"],
        )
        assert [c.sent_as for c in lean.calls + lean_streamed.calls] == ["tokens", "tokens"]
        assert lean.calls[0].prompt_ids.tolist() == chat.calls[0].prompt_ids.tolist()
        assert seen(lean_reply, logprobs=False) == seen(chat_reply, logprobs=False)
        assert lean_reply.choices[0].finish_reason == "tool_calls"
        assert (
            reply_message(lean_reply)["tool_calls"][0]["function"]
            == reply_message(chat_reply)["tool_calls"][0]["function"]
        )
        streamed = [t.function.arguments for d in lean_deltas for t in d.tool_calls or []]
        assert streamed == [lean_reply.choices[0].message.tool_calls[0].function.arguments]


def test_the_recorder_names_what_a_template_lacks() -> None:
    with pytest.raises(TypeError, match="parse"):
        Recorder(local_template=object())  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="token_mode"):
        Recorder(token_mode="off", local_template=ClientTemplate())


def test_a_config_names_the_template_and_collection_uses_it(proxy: Any) -> None:  # noqa: F811
    """`backend.local_template: embedded`: a collection run's calls each go as one generate."""
    from rollout.collection import collect
    from tests.integration.test_collect import two_turns

    p, url = proxy(lambda path, req, rep: rep)
    seen: list[Any] = []
    # One episode at a time: concurrent first renders of a kind are each checked until one passed.
    collect(agent=two_turns, tasks=[{"id": f"t{i}"} for i in range(6)], on_episode=seen.append, output={"path": None},
            progress=False, concurrency=1, backend={"kind": "remote", "urls": [url], "token_mode": "all", "local_template": "embedded"})  # fmt: skip
    calls = [c for ep in seen for c in ep.calls]
    assert len(seen) == 6 and len(calls) == 12
    assert p.hits.count(GENERATE) == 12 and p.hits.count("/tokenize") <= 3 * VERIFY_RENDERS
    assert p.hits.count(DERENDER) <= VERIFY_RENDERS and "/v1/chat/completions" not in p.hits
    assert all(c.sent_as == "tokens" and c.prompt_source is TokenSource.TOKEN_IN for c in calls), [c.fallback for c in calls]
    assert all(len(assemble([ep])) == 1 for ep in seen)  # each episode one exact row


def test_bad_template_configs_are_named(tmp_path: Any) -> None:
    from rollout.collection import ConfigError, load_config

    path = tmp_path / "c.yaml"
    path.write_text("tasks: [{prompt: x}]\nbackend:\n  token_mode: all\n  local_template: embedded\n")
    assert load_config(path).backend.local_template == "embedded"
    path.write_text("tasks: [{prompt: x}]\nbackend:\n  local_template: qwen\n")
    with pytest.raises(ConfigError, match="'embedded' or 'hf:<name or path>'"):
        load_config(path)
    path.write_text("tasks: [{prompt: x}]\nbackend:\n  token_mode: off\n  local_template: embedded\n")
    with pytest.raises(ConfigError, match="needs token_mode"):
        load_config(path)
    assert isinstance(Recorder(local_template="embedded").local_template, ClientTemplate)


def test_a_template_that_differs_only_on_tool_results_is_caught_at_the_first(proxy: Any) -> None:  # noqa: F811
    """Many renders of user turns pass the check; the first tool result, a kind not seen before, is
    checked too: it goes as messages with the reason, and no generate is sent from the wrong ids."""
    p, url = proxy(lambda path, req, rep: rep)
    recorder = Recorder(request_token_ids=True, request_logprobs=True, local_template=OffOnToolResults())
    client = recorder.wrap(openai.OpenAI(base_url=url, api_key="unused", max_retries=0))
    with recorder.episode("t") as ep:
        messages: list[Any] = [SYSTEM, user("What is 2 + 3?")]
        for turn in range(10):  # more user turns than a per-server budget of checks would cover
            reply = client.chat.completions.create(model="tiny", messages=messages, max_tokens=3, seed=turn)
            messages = [*messages, reply_message(reply), user(f"Again ({turn}).")]
        messages[-1] = {"role": "tool", "tool_call_id": "call_1", "content": "5"}
        reply = client.chat.completions.create(model="tiny", messages=messages, max_tokens=3, seed=9)
        messages = [*messages, reply_message(reply), user("And 1 + 1?")]
        client.chat.completions.create(model="tiny", messages=messages, max_tokens=3, seed=10)
    recorder.close()
    sent = [(c.sent_as, c.fallback) for c in ep.calls]
    assert [s for s, _ in sent[1:10]] == ["tokens"] * 9, sent
    assert sent[10][0] == "messages" and "differs from the server" in (sent[10][1] or ""), sent
    assert sent[11][0] == "messages" and "differs from the server" in (sent[11][1] or ""), sent  # retired
    assert p.hits.count(GENERATE) == 9


class NoToolParser(ClientTemplate):
    """The server's template, but a parser that never finds a tool call (another model's parser)."""

    def parse(self, text: str, *, tools: list[Any] | None) -> dict[str, Any]:
        return {"content": text}


@pytest.mark.parametrize("is_async", [False, True])
def test_a_parser_that_is_not_the_servers_is_caught_and_the_agent_gets_the_servers_message(is_async: bool) -> None:
    """Renders match, so only the parse can tell: the first tool-call reply is parsed by the
    server too (its derender); the agent gets the server's tool call, as the chat route gives it,
    and the template is not used again."""
    with EmbeddedServer(policy=forced_tool_policy(), seed=0) as srv:
        ask = {"tools": TOOLS, "max_tokens": 3}
        lean = episode(srv.base_url, "all", 2, is_async=is_async, recorder_options={"local_template": NoToolParser()}, **ask)
        chat = episode(srv.base_url, "off", 2, is_async=is_async, **ask)
    first = lean[0].calls[0]
    assert (first.sent_as, first.fallback) == ("tokens", None)
    assert seen(lean[1][0], logprobs=False) == seen(chat[1][0], logprobs=False)
    assert lean[1][0].choices[0].message.tool_calls and first.choices[0].message.get("tool_calls")
    second = lean[0].calls[1]
    assert second.sent_as == "messages" and "parse differs from the server" in (second.fallback or ""), second.fallback


class OffOnAKeyword(ClientTemplate):
    """The server's template except where a message mentions "magic" (a content-dependent branch)."""

    def render(self, messages: list[Any], tools: Any, chat_template_kwargs: Any, *, generation_prompt: bool) -> list[int]:
        ids = super().render(messages, tools, chat_template_kwargs, generation_prompt=generation_prompt)
        return [*ids, 220] if any("magic" in str(m.get("content")) for m in messages) else ids


def test_a_template_wrong_only_on_some_content_is_caught_by_the_later_rechecks(
    proxy: Any, monkeypatch: pytest.MonkeyPatch  # noqa: F811
) -> None:
    """The first checks of the bridge kind see ordinary turns and pass; the kind is trusted, yet
    renders are still re-checked at gaps of at most 2 * RECHECK_EVERY - 1, so the content it differs
    on is found within that many calls, and no call after it goes as tokens."""
    import rollout.tokenmode.local_template as local_template

    monkeypatch.setattr(local_template, "RECHECK_EVERY", 4)
    monkeypatch.setattr(local_template, "_RNG", random.Random(0))
    _, url = proxy(lambda path, req, rep: rep)
    recorder = Recorder(request_token_ids=True, request_logprobs=True, local_template=OffOnAKeyword())
    client = recorder.wrap(openai.OpenAI(base_url=url, api_key="unused", max_retries=0))
    with recorder.episode("t") as ep:
        messages: list[Any] = [SYSTEM, user("What is 2 + 3?")]
        for turn in range(12):
            reply = client.chat.completions.create(model="tiny", messages=messages, max_tokens=3, seed=turn)
            messages = [*messages, reply_message(reply), user(f"Again ({turn})." if turn < 2 else f"A magic number ({turn})?")]
    recorder.close()
    sent = [(c.sent_as, c.fallback) for c in ep.calls]
    caught = next(i for i, (_, why) in enumerate(sent) if why and "differs from the server" in why)
    assert [s for s, _ in sent[1:3]] == ["tokens", "tokens"], sent  # checked and equal
    assert 3 <= caught <= 2 + 7, sent  # within 2 * RECHECK_EVERY - 1 trusted renders of the first "magic"
    assert all(s == "messages" for s, _ in sent[caught:]), sent


def test_content_that_comes_at_a_fixed_period_cannot_always_fall_between_two_rechecks(
    proxy: Any, monkeypatch: pytest.MonkeyPatch  # noqa: F811
) -> None:
    """The word "magic" comes every other call, on the trusted renders a fixed every-4th re-check never
    lands on (the 1st, 3rd, 5th, ...): the random gaps land on one, and the template is retired."""
    import rollout.tokenmode.local_template as local_template

    monkeypatch.setattr(local_template, "RECHECK_EVERY", 4)
    monkeypatch.setattr(local_template, "_RNG", random.Random(0))
    _, url = proxy(lambda path, req, rep: rep)
    recorder = Recorder(request_token_ids=True, request_logprobs=True, local_template=OffOnAKeyword())
    client = recorder.wrap(openai.OpenAI(base_url=url, api_key="unused", max_retries=0))
    with recorder.episode("t") as ep:
        messages: list[Any] = [SYSTEM, user("What is 2 + 3?")]
        for turn in range(40):  # call c renders turn c - 1's user message: "magic" on odd calls from 3
            reply = client.chat.completions.create(model="tiny", messages=messages, max_tokens=3, seed=turn)
            said = f"A magic number ({turn})?" if turn >= 2 and turn % 2 == 0 else f"Again ({turn})."
            messages = [*messages, reply_message(reply), user(said)]
    recorder.close()
    sent = [(c.sent_as, c.fallback) for c in ep.calls]
    caught = [i for i, (_, why) in enumerate(sent) if why and "differs from the server" in why]
    assert caught and caught[0] % 2 == 1, sent  # found on a "magic" call
    assert all(s == "messages" for s, _ in sent[caught[0]:]), sent
    assert all(s == "tokens" for s, _ in sent[1:caught[0]]), sent


def test_a_template_found_wrong_is_not_used_again_through_the_render_cache(
    server: EmbeddedServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A trusted kind's render of "magic" is the template's own, unchecked, and cached. Once another
    kind shows the template is not the server's, that cached render must not send "magic" as tokens
    again: every later call goes as messages (it was still sent as tokens, marked exact)."""
    import rollout.tokenmode.local_template as local_template

    monkeypatch.setattr(local_template, "RECHECK_EVERY", 10**6)  # no re-check lands in this run
    monkeypatch.setattr(local_template, "_RNG", random.Random(0))
    recorder = Recorder(request_token_ids=True, request_logprobs=True, token_mode="all", local_template=OffOnAKeyword())
    client = recorder.wrap(openai.OpenAI(base_url=server.base_url, api_key="unused", max_retries=0))

    def first_call(messages: list[Any]) -> Any:
        with recorder.episode("t") as ep:
            client.chat.completions.create(model="tiny", messages=messages, max_tokens=2, seed=1)
        return ep.calls[0]

    checked = [first_call([user(text)]) for text in ("hello", "hi")]  # the user-only kind: checked, equal
    trusted = first_call([user("magic")])  # trusted: the template's render, not asked of the server
    caught = first_call([SYSTEM, user("magic")])  # a new kind: checked, and found to differ
    again = first_call([user("magic")])  # the trusted render is in the cache
    recorder.close()
    assert [c.sent_as for c in (*checked, trusted)] == ["tokens"] * 3
    assert caught.sent_as == "messages" and "differs from the server" in (caught.fallback or ""), caught.fallback
    assert again.sent_as == "messages" and "differs from the server" in (again.fallback or ""), again.fallback
