"""The prefix table finds a turn in whatever shape a framework re-sends it, and only that turn.

`EpisodeLog` directly, with records as the recorder makes them: the shapes
LangChain, CAMEL and hand-written agents send back (the end-to-end token-mode
checks are in tests/integration/test_history_shapes.py).
"""

from __future__ import annotations

from typing import Any

import pytest

from rollout import Episode
from rollout.call_record import CallRecord, ChoiceRecord
from rollout.lineage import EpisodeLog

SYSTEM = {"role": "system", "content": "s"}
ASK = {"role": "user", "content": "add 2 and 3"}
REPLY = {"role": "assistant", "content": "", "tool_calls": [
    {"id": "call_1", "type": "function", "function": {"name": "add", "arguments": '{"a": 2, "b": 3}'}}]}  # fmt: skip
TEXT_REPLY = {"role": "assistant", "content": "five"}


def logged(reply: dict[str, Any]) -> EpisodeLog:
    log = EpisodeLog(Episode(task_id="t"))
    log.append(CallRecord(request={"messages": [SYSTEM, ASK]}, choices=[ChoiceRecord(message=reply)]), [SYSTEM, ASK])
    return log


def with_args(args: str) -> dict[str, Any]:
    return {**REPLY, "tool_calls": [{**REPLY["tool_calls"][0], "function": {"name": "add", "arguments": args}}]}


MATCHES = {
    # shape -> (the reply as re-sent, what the note says; None: nothing a template renders changed)
    "compacted JSON": (REPLY, with_args('{"a":2,"b":3}'), "tool-call arguments re-serialised"),
    "JSON keys reordered": (REPLY, with_args('{"b": 3, "a": 2}'), "tool-call arguments re-serialised"),
    "tool_calls dropped": (REPLY, {"role": "assistant", "content": None}, "tool_calls dropped"),
    "tool call id changed": (REPLY, {**REPLY, "tool_calls": [{**REPLY["tool_calls"][0], "id": "lc_0"}]},
                             "tool call ids changed"),
    "one text part": (TEXT_REPLY, {"role": "assistant", "content": [{"type": "text", "text": "five"}]},
                      "text sent as content parts"),
}


@pytest.mark.parametrize("shape", list(MATCHES))
def test_the_same_turn_in_another_shape_finds_its_parent(shape: str) -> None:
    recorded, resent, note = MATCHES[shape]
    log = logged(recorded)
    new = {"role": "tool", "tool_call_id": "x", "content": "5"}
    found = log.parent_of([SYSTEM, ASK, resent, new])
    assert found is not None and found[0].index == 0 and found[2] == 3
    child = CallRecord(request={"messages": [SYSTEM, ASK, resent, new]})
    log.append(child, [SYSTEM, ASK, resent, new])
    assert child.parent == 0
    (text,) = child.notes
    assert note in text and "message 2 (assistant)" in text


CHANGED = {
    "argument value changed": (REPLY, with_args('{"a": 2, "b": 4}')),
    "another tool": (REPLY, {**REPLY, "tool_calls": [{**REPLY["tool_calls"][0],
                                                     "function": {"name": "sub", "arguments": '{"a": 2, "b": 3}'}}]}),
    "a tool call added": (REPLY, {**REPLY, "tool_calls": [*REPLY["tool_calls"], *REPLY["tool_calls"]]}),
    "text changed": (TEXT_REPLY, {"role": "assistant", "content": "six"}),
    "text split in two parts": (TEXT_REPLY, {"role": "assistant", "content": [{"type": "text", "text": "fi"},
                                                                              {"type": "text", "text": "ve"}]}),
}  # fmt: skip


@pytest.mark.parametrize("edit", list(CHANGED))
def test_a_changed_turn_finds_no_parent_and_says_so(edit: str) -> None:
    recorded, resent = CHANGED[edit]
    log = logged(recorded)
    messages = [SYSTEM, ASK, resent, {"role": "user", "content": "and now?"}]
    assert log.parent_of(messages) is None
    child = CallRecord(request={"messages": messages})
    log.append(child, messages)
    assert child.parent is None
    assert child.notes == ["history matches no recorded call + reply (edited, or another agent's): no parent"]


def _two_choices(first: Any, second: Any, ids: tuple[list[int], list[int]]) -> EpisodeLog:
    """One call with n=2: replies `first` and `second`, sampled as `ids`."""
    log = EpisodeLog(Episode(task_id="t"))
    call = CallRecord(
        request={"messages": [SYSTEM, ASK]},
        choices=[
            ChoiceRecord(index=k, message=m, ids=i, versions=[0] * len(i))
            for k, (m, i) in enumerate(zip((first, second), ids, strict=True))
        ],
    )
    log.append(call, [SYSTEM, ASK])
    return log


def test_a_reply_two_choices_read_alike_with_other_ids_is_an_ambiguous_parent() -> None:
    """The agent's history names the message, not the choice: with two choices that read alike but
    were sampled as other ids, the parent is reported with its rival, and the child's record says so."""
    log = _two_choices(TEXT_REPLY, TEXT_REPLY, ([5, 9], [5, 7, 9]))
    messages = [SYSTEM, ASK, TEXT_REPLY, {"role": "user", "content": "and now?"}]
    found = log.parent_of(messages)
    assert found is not None and found.rivals == ((0, 0),) and (found.call.index, found.choice.index) == (0, 1)
    child = CallRecord(request={"messages": messages})
    log.append(child, messages)
    assert child.parent == 0
    assert any("call 0 choice 1 and call 0 choice 0, sampled as other ids" in n for n in child.notes), child.notes


def test_choices_that_read_alike_with_the_same_ids_are_one_parent() -> None:
    log = _two_choices(TEXT_REPLY, TEXT_REPLY, ([5, 9], [5, 9]))
    found = log.parent_of([SYSTEM, ASK, TEXT_REPLY, {"role": "user", "content": "and now?"}])
    assert found is not None and found.rivals == ()


def test_a_reply_sent_back_without_its_tool_calls_is_ambiguous_where_two_choices_differ_only_in_them() -> None:
    """Choices 0 and 1 call different tools with the same text; a framework that drops tool_calls
    sends the text back: it could be either. Sent back with its tool call, each is itself."""
    other = with_args('{"a": 2, "b": 4}')
    log = _two_choices(REPLY, other, ([5, 9], [5, 8]))
    tool = {"role": "tool", "tool_call_id": "x", "content": "5"}
    loose = log.parent_of([SYSTEM, ASK, {"role": "assistant", "content": ""}, tool])
    assert loose is not None and (loose.choice.index, loose.rivals) == (0, ((0, 1),))
    for k, sent in enumerate((REPLY, other)):
        exact = log.parent_of([SYSTEM, ASK, sent, tool])
        assert exact is not None and (exact.choice.index, exact.rivals) == (k, ())
