"""Frameworks re-send history in their own shape: the same turn still finds its parent.

Against the embedded server over HTTP, through the real openai SDK: the agent
re-sends the model's reply compacted, without its `tool_calls`, with new tool
call ids, as text parts, or as the SDK's pydantic object. Each still
continues its parent in token mode, the stitched prompt is exactly the
parent's prompt + sampled ids + the new turn (what the model saw), and the
record notes how the history was re-shaped wherever a messages-mode call
would have rendered it differently. A changed turn matches nothing.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator
from typing import Any

import openai
import pytest

from rollout import Episode, Recorder, assemble
from rollout.embedded import END_ID, ChatTemplate, EmbeddedServer
from rollout.tokenmode import AMBIGUOUS_PARENT, BRANCH, EDITED_HISTORY
from tests.integration.test_token_mode import TOOLS, forced_tool_policy

T = ChatTemplate()
SYSTEM = {"role": "system", "content": "Answer with the number only."}


def user(text: str) -> dict[str, Any]:
    return {"role": "user", "content": text}


def new_turn_ids(messages: list[dict[str, Any]]) -> list[int]:
    ids: list[int] = []
    for m in messages:
        ids += T.render_message(m)
    return ids + T.generation_prompt


@pytest.fixture(scope="module")
def tool_server() -> Iterator[EmbeddedServer]:
    """A server whose model always calls the `add` tool."""
    with EmbeddedServer(policy=forced_tool_policy(), seed=0) as srv:
        yield srv


def recording(server: EmbeddedServer, mode: str = "auto") -> tuple[Recorder, openai.OpenAI]:
    rec = Recorder(request_token_ids=True, request_logprobs=True, token_mode=mode)  # type: ignore[arg-type]
    return rec, rec.wrap(openai.OpenAI(base_url=server.base_url, api_key="unused", max_retries=0))


def assert_stitched_exactly(ep: Episode, child: int, parent: int, new: list[dict[str, Any]]) -> None:
    """The child's prompt is the parent's prompt + sampled ids + join + the new turn: what the model saw."""
    p, c = ep.calls[parent], ep.calls[child]
    assert c.sent_as == "tokens" and c.parent == parent and c.fallback is None
    sampled = p.choices[0].ids.tolist()
    join = [] if sampled[-1] == END_ID else [END_ID]
    assert c.prompt_ids.tolist() == [*p.prompt_ids.tolist(), *sampled, *join, *new_turn_ids(new)]


def compact(m: dict[str, Any]) -> dict[str, Any]:
    calls = [{**c, "function": {**c["function"], "arguments": json.dumps(json.loads(c["function"]["arguments"]),
                                                                       separators=(",", ":"))}}
             for c in m["tool_calls"]]  # fmt: skip
    return {**m, "tool_calls": calls}


def drop_tool_calls(m: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in m.items() if k != "tool_calls"}


def as_sdk_object(m: Any) -> Any:
    return m  # the SDK's ChatCompletionMessage itself: refusal, audio, annotations... all None


def with_none_fields(m: Any) -> dict[str, Any]:
    """A dict with None-valued fields around the SDK's own tool-call objects."""
    return {"role": "assistant", "content": None, "tool_calls": list(m.tool_calls), "name": None, "refusal": None,
            "audio": None, "function_call": None}  # fmt: skip


SHAPES: dict[str, tuple[Callable[[Any], Any], str | None]] = {
    # shape -> (re-send the reply, what the note must say; None: no note, nothing a template renders changed)
    "compacted tool-call JSON": (lambda m: compact(m.model_dump(exclude_none=True)), "tool-call arguments re-serialised"),
    "tool_calls dropped": (lambda m: drop_tool_calls(m.model_dump(exclude_none=True)), "tool_calls dropped"),
    "the SDK's pydantic message": (as_sdk_object, None),
    "None-valued fields, pydantic tool calls": (with_none_fields, None),
}


@pytest.mark.parametrize("shape", list(SHAPES))
def test_a_re_shaped_tool_call_turn_still_stitches_exactly(tool_server: EmbeddedServer, shape: str) -> None:
    reshape, note = SHAPES[shape]
    rec, client = recording(tool_server)
    with rec.episode("t") as ep:
        messages: list[Any] = [SYSTEM, user("Use add on 2 and 3.")]
        first = client.chat.completions.create(model="tiny", messages=messages, tools=TOOLS, max_tokens=6, seed=1)
        reply = first.choices[0].message
        assert reply.tool_calls
        tool = {"role": "tool", "tool_call_id": reply.tool_calls[0].id, "content": "5"}
        client.chat.completions.create(model="tiny", messages=[*messages, reshape(reply), tool], tools=TOOLS,
                                       max_tokens=6, seed=2)  # fmt: skip
    assert not ep.metadata.get("failed_calls")
    assert_stitched_exactly(ep, 1, 0, [tool])
    notes = ep.calls[1].notes
    if note is None:
        assert notes == []
    else:
        (text,) = notes
        assert note in text and "message 2 (assistant)" in text and "messages-mode" in text
    result = assemble([ep])
    assert len(result) == 1 and result.num_drift == 0


def test_changed_tool_call_ids_in_older_turns_still_match(tool_server: EmbeddedServer) -> None:
    """A framework that mints its own tool call ids re-sends every earlier tool turn with them."""
    rec, client = recording(tool_server)
    with rec.episode("t") as ep:
        messages: list[Any] = [SYSTEM, user("Use add on 2 and 3.")]
        renamed: list[Any] = list(messages)
        for turn in range(3):
            reply = client.chat.completions.create(model="tiny", messages=renamed, tools=TOOLS, max_tokens=6,
                                                   seed=turn).choices[0].message  # fmt: skip
            sent = reply.model_dump(exclude_none=True)
            ours = f"lc_{turn}"  # the framework's own id for this call
            sent["tool_calls"] = [{**sent["tool_calls"][0], "id": ours}]
            tool = {"role": "tool", "tool_call_id": ours, "content": str(turn)}
            renamed = [*renamed, sent, tool]
    assert [c.sent_as for c in ep.calls] == ["messages", "tokens", "tokens"]
    assert [c.parent for c in ep.calls] == [None, 0, 1]
    for child in (1, 2):
        assert_stitched_exactly(ep, child, child - 1, [{"role": "tool", "tool_call_id": "x", "content": str(child - 1)}])
        assert "tool call ids changed" in " ".join(ep.calls[child].notes)
    assert len(assemble([ep])) == 1


def test_text_sent_back_as_content_parts_still_stitches(server: EmbeddedServer) -> None:
    rec, client = recording(server)
    with rec.episode("t") as ep:
        messages: list[Any] = [SYSTEM, user("What is 2 + 3?")]
        text = client.chat.completions.create(model="tiny", messages=messages, max_tokens=4, seed=1).choices[0].message.content
        parts = {"role": "assistant", "content": [{"type": "text", "text": text}]}
        client.chat.completions.create(model="tiny", messages=[*messages, parts, user("Again.")], max_tokens=4, seed=2)
    assert_stitched_exactly(ep, 1, 0, [user("Again.")])
    assert "text sent as content parts" in ep.calls[1].notes[0]


@pytest.mark.parametrize("edit", ["tool arguments changed", "tool name changed", "a tool call added"])
def test_a_changed_turn_matches_nothing(tool_server: EmbeddedServer, edit: str) -> None:
    rec, client = recording(tool_server)
    with rec.episode("t") as ep:
        messages: list[Any] = [SYSTEM, user("Use add on 2 and 3.")]
        reply = client.chat.completions.create(model="tiny", messages=messages, tools=TOOLS, max_tokens=6,
                                               seed=1).choices[0].message.model_dump(exclude_none=True)  # fmt: skip
        call = reply["tool_calls"][0]
        if edit == "tool arguments changed":
            call = {**call, "function": {**call["function"], "arguments": json.dumps({"arg": "edited"})}}
            reply["tool_calls"] = [call]
        elif edit == "tool name changed":
            reply["tool_calls"] = [{**call, "function": {**call["function"], "name": "sub"}}]
        else:
            reply["tool_calls"] = [call, {**call, "id": "extra"}]
        tool = {"role": "tool", "tool_call_id": call["id"], "content": "5"}
        client.chat.completions.create(model="tiny", messages=[*messages, reply, tool], tools=TOOLS, max_tokens=6,
                                       seed=2)  # fmt: skip
    second = ep.calls[1]
    assert (second.sent_as, second.fallback, second.parent) == ("messages", EDITED_HISTORY, None)
    assert any("matches no recorded call" in n for n in second.notes)


def test_an_older_or_shorter_parent_is_never_silent(server: EmbeddedServer) -> None:
    """A call that continues a turn another call already continued, or skips an edited reply, says so:
    a note on the record, and in token mode a `branch` fallback (it cannot stay in its parent's row)."""
    rec, client = recording(server)
    with rec.episode("t") as ep:
        base: list[Any] = [SYSTEM, user("What is 2 + 3?")]
        r0 = client.chat.completions.create(model="tiny", messages=base, max_tokens=4, seed=1).choices[0].message
        h1 = [*base, {"role": "assistant", "content": r0.content}, user("Again.")]
        r1 = client.chat.completions.create(model="tiny", messages=h1, max_tokens=4, seed=2).choices[0].message
        # a retry from turn 0: call 0 was already continued by call 1
        client.chat.completions.create(model="tiny", messages=[*h1[:3], user("Once more.")], max_tokens=4, seed=3)
        # call 1's reply edited by the agent: only call 0 matches, the edited reply is context
        edited = {"role": "assistant", "content": f"{r1.content} (edited)"}
        client.chat.completions.create(model="tiny", messages=[*h1, edited, user("Sure?")], max_tokens=4, seed=4)
    retry, skip = ep.calls[2], ep.calls[3]
    assert (retry.parent, skip.parent) == (0, 0)
    assert any("which call(s) [1] had already continued" in n for n in retry.notes)
    assert any("assistant message(s) [4]" in n and "not sampled ids" in n for n in skip.notes)
    assert any("which call(s) [1, 2] had already continued" in n for n in skip.notes)
    # Each starts a new row whichever way it goes: token mode sends it as messages, naming the branch.
    assert retry.sent_as == "messages" and retry.fallback == f"{BRANCH}: continues call 0, which call(s) [1] had already continued"
    assert skip.sent_as == "messages" and (skip.fallback or "").startswith(f"{BRANCH}: continues call 0")


def test_in_messages_mode_a_re_shaped_turn_links_its_parent_and_the_drift_is_counted(tool_server: EmbeddedServer) -> None:
    """Without token mode the server renders the re-shaped history: the parent link stays, and sample
    assembly counts the drift instead of merging (the row would not be what the model saw)."""
    rec, client = recording(tool_server, mode="off")
    with rec.episode("t") as ep:
        messages: list[Any] = [SYSTEM, user("Use add on 2 and 3.")]
        reply = client.chat.completions.create(model="tiny", messages=messages, tools=TOOLS, max_tokens=6, seed=1)
        message = reply.choices[0].message
        tool = {"role": "tool", "tool_call_id": message.tool_calls[0].id, "content": "5"}
        resent = drop_tool_calls(message.model_dump(exclude_none=True))
        client.chat.completions.create(model="tiny", messages=[*messages, resent, tool], tools=TOOLS, max_tokens=6,
                                       seed=2)  # fmt: skip
    assert ep.calls[1].parent == 0 and "tool_calls dropped" in ep.calls[1].notes[0]
    result = assemble([ep])
    assert result.num_drift == 1 and len(result) == 2


@pytest.mark.parametrize("mode", ["auto", "off"])
def test_two_choices_that_read_alike_with_other_ids_are_never_stitched_onto_a_guess(server: EmbeddedServer, mode: str) -> None:
    """With n=2, a stop string and an end of turn can leave both choices reading "" while their ids
    differ. The agent continues choice 0; its history cannot say which choice that was, so token
    mode sends the next call as messages (it once stitched choice 1's ids, marked exact), and no
    row puts a choice's ids before a call that did not see them."""
    rec, client = recording(server, mode)
    base: list[Any] = [SYSTEM, user("q")]
    for seed in range(400):
        with rec.episode("t", sample=seed) as ep:
            kw: dict[str, Any] = {"model": "tiny", "n": 2, "max_tokens": 2, "seed": seed, "stop": ["\n", " "]}
            a, b = client.chat.completions.create(messages=base, **kw).choices
            same = a.message.content == b.message.content and ep.calls[0].choices[0].ids.tolist() != ep.calls[0].choices[1].ids.tolist()
            if same:
                history = [*base, {"role": "assistant", "content": a.message.content}, user("again")]
                client.chat.completions.create(model="tiny", messages=history, max_tokens=2, seed=1)
        if same:
            break
    else:
        pytest.fail("no seed gave two choices that read alike with other ids")
    first, second = ep.calls
    assert second.parent == 0 and any("sampled as other ids" in n for n in second.notes), second.notes
    if mode == "auto":
        assert second.sent_as == "messages" and (second.fallback or "").startswith(AMBIGUOUS_PARENT), second.fallback
    for sample in assemble([ep]).samples:  # a merged row holds the ids the later call's prompt holds
        if len(sample.calls) > 1:
            (_, k), (c, _) = sample.calls[0], sample.calls[1]
            head = [*first.prompt_ids.tolist(), *first.choices[k].ids.tolist()]
            assert ep.calls[c].prompt_ids.tolist()[: len(head)] == head
