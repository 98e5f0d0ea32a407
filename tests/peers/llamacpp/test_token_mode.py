"""Token mode and exact ids against the real llama-server: an episode is one exact row.

The first call goes as messages to llama.cpp's chat route: its sampled ids are
the `id` of each logprob entry, its prompt ids the server's own
`/apply-template` + `/tokenize` on the same request. Every later call goes to
`/completion` as token ids. Each check is on what the server generated from:
re-sending a recorded prompt at temperature 0 regenerates the recorded ids.
"""

from __future__ import annotations

import asyncio
from typing import Any

import openai
import pytest

from rollout import Episode, Recorder, TokenSource, assemble
from rollout.tokenizers import ServerTokenizer
from rollout.tokenmode import FIRST_CALL
from rollout.tokenmode.transport import JsonHttp
from tests.peers.llamacpp.conftest import MODEL_NAME, LlamaServer
from tests.peers.llamacpp.test_wire import eos_id

pytestmark = pytest.mark.peers

SYSTEM = {"role": "system", "content": "Answer in one short sentence."}
QUESTION = {"role": "user", "content": "What is the capital of France?"}
AGAIN = {"role": "user", "content": "Wrong. Try again."}


def recording(llama: LlamaServer, **options: Any) -> tuple[Recorder, openai.OpenAI, openai.AsyncOpenAI]:
    recorder = Recorder(request_logprobs=True, tokenizer="server", **options)
    sync = recorder.wrap(openai.OpenAI(base_url=llama.base_url, api_key="unused", max_retries=0))
    async_ = recorder.wrap(openai.AsyncOpenAI(base_url=llama.base_url, api_key="unused", max_retries=0))
    return recorder, sync, async_


def three_turns(client: openai.OpenAI, max_tokens: int = 64) -> list[Any]:
    messages: list[dict[str, Any]] = [SYSTEM, QUESTION]
    replies = []
    for _ in range(3):
        reply = client.chat.completions.create(
            model=MODEL_NAME, messages=messages, max_tokens=max_tokens, temperature=0
        )
        replies.append(reply)
        messages = [*messages, reply.choices[0].message.model_dump(exclude_none=True), AGAIN]
    return replies


def regenerated(llama: LlamaServer, prompt: list[int], n: int) -> list[int]:
    reply = llama.post("/completion", {"prompt": prompt, "n_predict": n, "temperature": 0, "return_tokens": True})
    return list(reply["tokens"])


def assert_one_exact_row(llama: LlamaServer, ep: Episode) -> None:
    first, *later = ep.calls
    assert (first.sent_as, first.fallback) == ("messages", FIRST_CALL)
    assert first.prompt_source is TokenSource.SERVER_RENDER, first.notes
    assert first.choices[0].source is TokenSource.LOGPROB_IDS, first.notes
    assert later and all(c.sent_as == "tokens" and c.prompt_source is TokenSource.TOKEN_IN for c in later)
    assert all(c.choices[0].source is TokenSource.LLAMACPP for c in later)
    assert all(c.exact for c in ep.calls), [c.notes for c in ep.calls]
    assert all(c.choices[0].logprobs is not None for c in ep.calls)
    eos = eos_id(llama)
    for parent, child in zip(ep.calls, later, strict=False):
        sampled = parent.choices[0].ids.tolist()
        head = [*parent.prompt_ids.tolist(), *sampled]
        assert child.prompt_ids.tolist()[: len(head)] == head
        # A parent that ended on the end-of-turn token is not given it twice.
        assert child.prompt_ids.tolist()[len(head) : len(head) + 1] != [eos] or sampled[-1] != eos
    # What the server generated from: the recorded prompt regenerates the recorded ids.
    for call in ep.calls:
        ids = call.choices[0].ids.tolist()
        assert regenerated(llama, call.prompt_ids.tolist(), len(ids)) == ids
    result = assemble([ep])
    assert len(result) == 1 and result.num_drift == 0 and result.num_merged == len(later)


def test_sync_episode_is_one_exact_row(llama: LlamaServer) -> None:
    recorder, client, _ = recording(llama)
    with recorder.episode("t") as ep:
        replies = three_turns(client)
    assert len(ep.calls) == 3
    assert_one_exact_row(llama, ep)
    for reply, call in zip(replies, ep.calls, strict=True):
        assert isinstance(reply, openai.types.chat.ChatCompletion)
        assert reply.choices[0].message.content == call.choices[0].message["content"]
    recorder.close()


def test_async_episode_is_one_exact_row(llama: LlamaServer) -> None:
    recorder, _, client = recording(llama)

    async def run() -> tuple[Episode, list[str]]:
        texts = []
        async with recorder.episode("t") as ep:
            messages: list[dict[str, Any]] = [SYSTEM, {"role": "user", "content": "What colour is the sky?"}]
            for _ in range(3):
                reply = await client.chat.completions.create(
                    model=MODEL_NAME, messages=messages, max_tokens=64, temperature=0
                )
                texts.append(reply.choices[0].message.content or "")
                messages = [*messages, {"role": "assistant", "content": texts[-1]}, AGAIN]
        await recorder.aclose()
        return ep, texts

    ep, texts = asyncio.run(run())
    assert len(ep.calls) == 3
    assert_one_exact_row(llama, ep)
    assert [c.choices[0].message["content"] for c in ep.calls] == texts


def test_a_streamed_chat_reply_is_not_exact_and_says_why(llama: LlamaServer) -> None:
    """A streamed chat reply carries a token's logprob only in a chunk with new text
    (server-task.cpp 1111-1150): the end-of-turn token has none, so its ids are not all
    the sampled ids, and the record says so."""
    recorder, _, client = recording(llama, token_mode="off")

    async def run() -> Episode:
        async with recorder.episode("t") as ep:
            stream = await client.chat.completions.create(
                model=MODEL_NAME, messages=[SYSTEM, QUESTION], max_tokens=64, temperature=0, stream=True,
                stream_options={"include_usage": True},
            )  # fmt: skip
            async for _ in stream:
                pass
        await recorder.aclose()
        return ep

    (call,) = asyncio.run(run()).calls
    assert call.prompt_source is TokenSource.SERVER_RENDER and call.choices[0].finish_reason == "stop"
    assert not call.choices[0].exact
    n = call.usage["completion_tokens"] if call.usage else None
    assert any(f"its logprobs name {n - 1} of the {n} sampled tokens" in x for x in call.notes), call.notes


def test_a_call_cut_by_max_tokens_is_joined_with_the_end_of_turn(llama: LlamaServer) -> None:
    recorder, client, _ = recording(llama)
    with recorder.episode("t") as ep:
        three_turns(client, max_tokens=2)
    assert all(c.choices[0].finish_reason == "length" for c in ep.calls)
    eos = eos_id(llama)
    for parent, child in zip(ep.calls, ep.calls[1:], strict=False):
        head = [*parent.prompt_ids.tolist(), *parent.choices[0].ids.tolist()]
        assert child.prompt_ids.tolist()[: len(head) + 1] == [*head, eos]
    assert_one_exact_row(llama, ep)


def test_token_mode_sends_the_prompt_the_chat_route_renders(llama: LlamaServer) -> None:
    """Differential: the same conversation as messages (token mode off, prompts rendered
    by the server) and as tokens gets the same prompt ids, call by call."""
    prompts = {}
    for mode in ("off", "auto"):
        recorder, client, _ = recording(llama, token_mode=mode)
        with recorder.episode("t") as ep:
            three_turns(client)
        assert all(c.exact for c in ep.calls), [c.notes for c in ep.calls]
        prompts[mode] = [c.prompt_ids.tolist() for c in ep.calls]
        sent = [c.sent_as for c in ep.calls]
        assert sent == (["messages"] * 3 if mode == "off" else ["messages", "tokens", "tokens"])
    assert prompts["off"] == prompts["auto"]


def test_a_chat_reply_cut_by_a_stop_string_is_not_exact(llama: LlamaServer) -> None:
    """llama.cpp's logprobs leave out a stop string's tokens: the ids they name are not all
    the sampled ids, so the record says so instead of passing them off as exact."""
    recorder, client, _ = recording(llama, token_mode="off")
    plain = openai.OpenAI(base_url=llama.base_url, api_key="unused", max_retries=0)
    messages = [QUESTION]
    text = plain.chat.completions.create(model=MODEL_NAME, messages=messages, temperature=0,
                                         max_tokens=32).choices[0].message.content  # fmt: skip
    assert text and len(text.split()) > 2
    stop = text.split()[2]
    with recorder.episode("t") as ep:
        client.chat.completions.create(model=MODEL_NAME, messages=messages, temperature=0, max_tokens=32,
                                       stop=[stop])  # fmt: skip
    (call,) = ep.calls
    assert call.prompt_source is TokenSource.SERVER_RENDER
    assert not call.choices[0].exact
    assert any("logprob ids not taken as exact" in n for n in call.notes), call.notes


def test_server_tokenizer_speaks_llamacpp_and_refuses_an_empty_answer(llama: LlamaServer) -> None:
    http = JsonHttp(llama.root)
    tok = ServerTokenizer(http, MODEL_NAME)
    ids = tok.completion_ids("Hello world")
    assert tok.kind == "llamacpp" and ids == llama.post("/tokenize", {"content": "Hello world"})["tokens"]
    assert tok.decode(ids) == b"Hello world"
    # vLLM's body gets a 200 with no tokens from llama.cpp: an error, never an empty list.
    vllm_layout = ServerTokenizer(http, MODEL_NAME)
    vllm_layout._kind = "vllm"
    with pytest.raises(ValueError, match="no tokens for non-empty input"):
        vllm_layout.completion_ids("Hello world")
    http.close()
