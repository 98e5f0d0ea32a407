"""Which earlier call a new call continues: the episode's prefix table.

AReaL's interaction tree by another route: each recorded call's messages +
reply are keyed, so a new call whose messages extend them finds its parent
with one hash per assistant message. Token mode stitches onto that parent;
sample assembly merges along it.

Frameworks re-send history in their own shape, so a message's key is its
meaning, not its bytes (`_message_key`): pydantic objects and dicts alike,
None-valued fields ignored, a content list of text parts read as its text,
tool-call arguments compared as parsed JSON, tool-call ids ignored. A
framework that drops `tool_calls` from the assistant message it sends back
still finds that turn, through a second table without tool calls, but only
where the re-sent message has none at all (changed calls are a changed turn).
Matching only picks the parent: a call stitched onto it in token mode sends
the parent's exact ids, so whenever the history was re-shaped, or the parent
is not where its branch had got to, the record says so in a note (a
messages-mode call would have rendered a different prompt).
"""

from __future__ import annotations

import json
import threading
from collections.abc import Callable
from typing import Any, NamedTuple

import numpy as np

from rollout.call_record import CallRecord, ChoiceRecord
from rollout.episode import Episode
from rollout.snapshot import plain

Key = tuple[Any, ...]


def message_text(content: Any) -> Any:
    """Content as matched: a list of text parts is its text (one part) or texts (several)."""
    if isinstance(content, list):
        if all(isinstance(p, dict) and p.get("type", "text") == "text" and isinstance(p.get("text"), str)
               for p in content):  # fmt: skip
            texts = tuple(p["text"] for p in content)
            return (texts[0] if len(texts) == 1 else texts) or None
        return json.dumps(content, sort_keys=True, default=str)  # multimodal: exactly as sent
    return content or None


def _arguments(args: Any) -> Any:
    """Tool-call arguments as matched: parsed JSON, however it was serialised."""
    if isinstance(args, str):
        try:
            args = json.loads(args)
        except ValueError:
            return args
    try:
        return json.dumps(args, sort_keys=True, separators=(",", ":"))
    except (TypeError, ValueError):
        return repr(args)


def call_signatures(m: dict[str, Any]) -> tuple[Any, ...]:
    """Each tool call as (name, parsed arguments): ids and JSON spelling left out."""
    out = []
    for c in m.get("tool_calls") or []:
        fn = c.get("function") or {} if isinstance(c, dict) else {}
        out.append((fn.get("name"), _arguments(fn.get("arguments"))))
    return tuple(out)


def _get(x: Any, key: str) -> Any:
    return x.get(key) if isinstance(x, dict) else None


def _message_key(m: Any) -> Key:
    """What identifies a message for prefix matching: role, text, tool calls (see the module docstring)."""
    if not _is_plain(m):
        m = plain(m)
    if not isinstance(m, dict):
        return (repr(m),)
    return (m.get("role"), message_text(m.get("content")), call_signatures(m))


def _is_plain(m: Any) -> bool:
    """Whether a message is already plain data where matching reads it (most are: skip the copy)."""
    if not isinstance(m, dict):
        return False
    calls, content = m.get("tool_calls"), m.get("content")
    plain_parts = isinstance(content, list) and all(type(p) is dict and None not in p.values() for p in content)
    if content is not None and not isinstance(content, str) and not plain_parts:
        return False
    return all(type(c) is dict and not any(hasattr(v, "model_dump") for v in c.values()) for c in calls or ())


def message_keys(messages: list[Any]) -> tuple[Key, ...]:
    """Each message's key, as `EpisodeLog.parent_of` and `append` match them (compute once per call)."""
    return tuple(_message_key(m) for m in messages)


class Found(NamedTuple):
    """A new call's parent: the recorded call and choice its messages extend, how many messages
    that covers, and the other choices (call, choice) whose messages + reply are the same but
    whose sampled ids differ (n > 1, or a retry): if any, which one the agent continued is unknown."""

    call: CallRecord
    choice: ChoiceRecord
    end: int
    rivals: tuple[tuple[int, int], ...] = ()


def _twin(table: dict[tuple[Key, ...], list[tuple[int, int]]], key: tuple[Key, ...], *targets: tuple[int, int]) -> None:
    """Remember that `targets` share `key` with different ids."""
    group = table.setdefault(key, [])
    group.extend(t for t in targets if t not in group)


def _loose(keys: tuple[Key, ...]) -> tuple[Key, ...]:
    """The keys without tool calls: finds a turn whose tool_calls the framework dropped."""
    return tuple(k[:2] for k in keys)


def _only_dropped_calls(sent: tuple[Key, ...], recorded: tuple[Key, ...]) -> bool:
    """Whether `sent` differs from `recorded` only by assistant messages sent without their tool calls."""
    return all(s == r or (len(s) == 3 and s[2] == () and s[:2] == r[:2]) for s, r in zip(sent, recorded, strict=True))


_RENDERED = ("role", "content", "tool_calls", "tool_call_id", "name", "reasoning_content", "reasoning")
"""The message fields a chat template renders: a difference there would change a messages-mode prompt."""


def _reshaped(sent: Any, recorded: Any) -> list[str]:
    """How the re-sent message `sent` differs from `recorded` in what a template would render."""
    a, b = plain(sent), plain(recorded)
    if not (isinstance(a, dict) and isinstance(b, dict)):
        return [] if a == b else ["differs"]
    what = []
    if (a.get("content") or None) != (b.get("content") or None):  # "" and None render alike
        if isinstance(a.get("content"), list):
            what.append("text sent as content parts")
        elif isinstance(b.get("content"), list):
            what.append("content parts sent as text")
    ca, cb = a.get("tool_calls") or [], b.get("tool_calls") or []
    if cb and not ca:
        what.append("tool_calls dropped")
    elif ca != cb:
        if call_signatures({"tool_calls": ca}) != call_signatures({"tool_calls": cb}):
            what.append("tool_calls changed")
        if [_get(c, "id") for c in ca] != [_get(c, "id") for c in cb]:
            what.append("tool call ids changed")
        if [_get(_get(c, "function"), "arguments") for c in ca] != [_get(_get(c, "function"), "arguments") for c in cb]:
            what.append("tool-call arguments re-serialised")
        if not what:
            what.append("tool_calls re-shaped")
    if a.get("tool_call_id") != b.get("tool_call_id"):
        what.append("tool_call_id changed")
    others = [f for f in _RENDERED[4:] if a.get(f) != b.get(f)]
    if others:
        what.append(("dropped " if all(f not in a for f in others) else "changed ") + ", ".join(others))
    return what


class EpisodeLog:
    """What the recorder keeps for one open episode while its calls arrive.

    - the prefix table: each call's messages + reply -> its index, so a new
      call finds its parent (AReaL's interaction tree) with one hash per
      assistant message;
    - the message copies shared between calls (see `scrub`);
    - how to record the episode's streams that are still open when it ends.
    """

    def __init__(self, episode: Episode, *, closes: bool = True) -> None:
        self.episode = episode
        self.closes = closes  # the unscoped bucket never ends: no memo that would only grow
        self._lock = threading.Lock()
        self._prefixes: dict[tuple[Key, ...], tuple[int, int]] = {}  # -> (call, choice)
        self._loose: dict[tuple[Key, ...], tuple[int, int, tuple[Key, ...]]] = {}  # -> (call, choice, keys)
        # keys that more than one choice, sampled as different ids, has: the parent is ambiguous
        self._twins: dict[tuple[Key, ...], list[tuple[int, int]]] = {}
        self._loose_twins: dict[tuple[Key, ...], list[tuple[int, int]]] = {}
        self._children: dict[tuple[int, int], list[int]] = {}  # (call, choice) -> calls that continued it
        self.copies: dict[int, dict[str, Any]] | None = {} if closes else None
        self._open: list[Callable[[], Any]] = []

    def append(self, call: CallRecord, messages: list[Any], keys: tuple[Key, ...] | None = None) -> None:
        """Add `call` to the episode, with its index, its parent, and notes on how it was found
        (`keys`: `message_keys(messages)`, when the caller has them)."""
        keys = message_keys(messages) if keys is None else keys
        with self._lock:
            call.index = len(self.episode.calls)
            found = self._find_parent(keys)
            call.parent = None if found is None else found[0][0]
            notes = self._notes(messages, keys, found)
            if found is not None:
                self._children.setdefault(found[0], []).append(call.index)
            self.episode.calls.append(call)
            for choice in call.choices:  # children will look this call up by prefix
                target = (call.index, choice.index)
                with_reply = (*keys, _message_key(choice.message))
                seen = self._prefixes.get(with_reply)
                if seen is not None and seen != target and not self._same_ids(seen, choice):
                    _twin(self._twins, with_reply, seen, target)
                self._prefixes[with_reply] = target
                loose = _loose(with_reply)
                first = self._loose.get(loose)
                if first is None:
                    self._loose[loose] = (*target, with_reply)
                elif first[2] != with_reply or not self._same_ids(first[:2], choice):
                    _twin(self._loose_twins, loose, (first[0], first[1]), target)
        call.notes.extend(notes)

    def _same_ids(self, target: tuple[int, int], choice: ChoiceRecord) -> bool:
        """Whether recorded choice `target` sampled the same ids as `choice` (one trajectory)."""
        other = next((c for c in self.episode.calls[target[0]].choices if c.index == target[1]), None)
        return other is not None and bool(np.array_equal(other.ids, choice.ids))

    def parent_of(self, messages: list[Any], keys: tuple[Key, ...] | None = None) -> Found | None:
        """The recorded call and choice whose messages + reply the longest prefix of
        `messages` is, that prefix's length (so `messages[end:]` is what is new), and any
        other choices that prefix matches as well (`Found.rivals`)."""
        keys = message_keys(messages) if keys is None else keys
        with self._lock:
            found = self._find_parent(keys)
            if found is None:
                return None
            (index, choice_index), end, rivals = found
            call = self.episode.calls[index]
        choice = next(c for c in call.choices if c.index == choice_index)
        return Found(call, choice, end, rivals)

    def continued(self, call: CallRecord, choice: ChoiceRecord) -> list[int]:
        """The calls that already continued this call's choice (a new child is then a branch)."""
        with self._lock:
            return list(self._children.get((call.index, choice.index), ()))

    def _find_parent(self, keys: tuple[Key, ...]) -> tuple[tuple[int, int], int, tuple[tuple[int, int], ...]] | None:
        """((call, choice), prefix length, rivals) of the longest recorded messages + reply prefix
        of `keys`; a prefix that matches only once its tool calls are set aside counts where the
        re-sent assistant messages have none (dropped by the framework), never where they differ.
        Rivals are the other choices, sampled as other ids, that the same prefix matches."""
        for end in range(len(keys), 0, -1):
            if keys[end - 1][0] != "assistant":
                continue
            prefix = keys[:end]
            found = self._prefixes.get(prefix)
            if found is not None:
                return found, end, tuple(t for t in self._twins.get(prefix, ()) if t != found)
            loose_key = _loose(prefix)
            loose = self._loose.get(loose_key)
            if loose is not None and _only_dropped_calls(prefix, loose[2]):
                target = (loose[0], loose[1])
                return target, end, tuple(t for t in self._loose_twins.get(loose_key, ()) if t != target)
        return None

    def _notes(
        self,
        messages: list[Any],
        keys: tuple[Key, ...],
        found: tuple[tuple[int, int], int, tuple[tuple[int, int], ...]] | None,
    ) -> list[str]:
        """Why the parent found is not simply the call this one continues verbatim, if it is not."""
        assistants = [i for i, k in enumerate(keys) if k[0] == "assistant"]
        if found is None:
            if assistants and self.episode.calls:
                return ["history matches no recorded call + reply (edited, or another agent's): no parent"]
            return []
        (index, choice_index), end, rivals = found
        parent = self.episode.calls[index]
        notes = []
        if rivals:
            notes.append(
                f"the history's last reply is the same message as call {index} choice {choice_index} and "
                f"{', '.join(f'call {c} choice {k}' for c, k in rivals)}, sampled as other ids: which one "
                f"it continues is unknown (parent: call {index})"
            )
        reshaped = self._reshaped(messages, parent, choice_index, end)
        if reshaped:
            notes.append(
                f"history re-shaped by the agent; matched to call {index} by normalising: {reshaped} "
                "(token mode sends the parent's exact ids; a messages-mode call would have rendered a different prompt)"
            )
        later = self._children.get((index, choice_index))
        if later:
            notes.append(
                f"continues call {index} (choice {choice_index}), which call(s) {later} had already continued: "
                "a branch from an earlier turn (a retry, or history edited after it)"
            )
        unmatched = [i for i in assistants if i >= end]
        if unmatched:
            notes.append(
                f"assistant message(s) {unmatched} after the parent's reply match no recorded reply "
                "(edited, or re-shaped past recognition): they are context, not sampled ids"
            )
        return notes

    @staticmethod
    def _reshaped(messages: list[Any], parent: CallRecord, choice_index: int, end: int) -> str:
        """How `messages[:end]` differ from the parent's messages + reply, as templates render them."""
        recorded = list(parent.request.get("messages") or [])
        choice = next((c for c in parent.choices if c.index == choice_index), None)
        if len(recorded) != end - 1 or choice is None:
            return ""  # e.g. a Responses call: its input is not chat messages
        recorded.append(choice.message)
        out = []
        for i, (sent, rec) in enumerate(zip(messages[:end], recorded, strict=True)):
            if sent is rec or sent == rec:
                continue
            what = _reshaped(sent, rec)
            if what:
                out.append(f"message {i} ({_message_key(sent)[0]}): {', '.join(what)}")
        return "; ".join(out)

    def on_end(self, finalize: Callable[[], Any]) -> None:
        """Run `finalize` when the episode ends (the unscoped bucket never does)."""
        if self.closes:
            with self._lock:
                self._open.append(finalize)

    def close(self) -> None:
        """Record what is still open; called once, when the episode ends."""
        with self._lock:
            leftovers, self._open = self._open, []
        for finalize in leftovers:  # streams nobody read to the end or closed
            finalize()
