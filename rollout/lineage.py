"""Which earlier call a new call continues: the episode's prefix table.

AReaL's interaction tree by another route: each recorded call's messages +
reply are keyed, so a new call whose messages extend them finds its parent
with one hash per assistant message. Token mode stitches onto that parent;
sample assembly merges along it.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from typing import Any

from rollout.episode import Episode
from rollout.record import CallRecord, Choice


def _message_key(m: Any) -> tuple[Any, ...]:
    """What identifies a message for prefix matching (ignores None-valued fields)."""
    if hasattr(m, "model_dump"):
        m = m.model_dump(exclude_none=True)
    if not isinstance(m, dict):
        return (repr(m),)
    calls = tuple(
        (c.get("function", {}).get("name"), c.get("function", {}).get("arguments"))
        for c in (m.get("tool_calls") or [])
        if isinstance(c, dict)
    )
    content = m.get("content")
    if isinstance(content, list):
        content = repr(content)
    return (m.get("role"), content or None, calls, m.get("tool_call_id"))


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
        self._prefixes: dict[tuple[Any, ...], tuple[int, int]] = {}  # -> (call, choice)
        self.copies: dict[int, dict[str, Any]] | None = {} if closes else None
        self._open: list[Callable[[], Any]] = []

    def append(self, call: CallRecord, messages: list[Any]) -> None:
        """Add `call` to the episode, with its index and parent."""
        keys = tuple(_message_key(m) for m in messages)
        with self._lock:
            call.index = len(self.episode.calls)
            found = self._find_parent(keys)
            call.parent = None if found is None else found[0][0]
            self.episode.calls.append(call)
            for choice in call.choices:  # children will look this call up by prefix
                with_reply = (*keys, _message_key(choice.message))
                self._prefixes[with_reply] = (call.index, choice.index)

    def parent_of(self, messages: list[Any]) -> tuple[CallRecord, Choice, int] | None:
        """The recorded call and choice whose messages + reply the longest prefix of
        `messages` is, and that prefix's length (so `messages[end:]` is what is new)."""
        keys = tuple(_message_key(m) for m in messages)
        with self._lock:
            found = self._find_parent(keys)
            if found is None:
                return None
            (index, choice_index), end = found
            call = self.episode.calls[index]
        choice = next(c for c in call.choices if c.index == choice_index)
        return call, choice, end

    def _find_parent(self, keys: tuple[Any, ...]) -> tuple[tuple[int, int], int] | None:
        """((call, choice), prefix length) of the longest recorded messages + reply prefix of `keys`."""
        for end in range(len(keys), 0, -1):
            if keys[end - 1][0] == "assistant":
                found = self._prefixes.get(keys[:end])
                if found is not None:
                    return found, end
        return None

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
