"""What every agent-framework test checks, shared by the frameworks' tiers.

Each framework runs the same kind of agent twice against the embedded server,
through a recorder-wrapped client: with token mode on (`"auto"`) and off. The
checks (`sent_as_tokens`, `one_row_each`, `messages_only`, `compare`):

- no call crashes in either mode (the framework's run returns, and the agent
  used its tool and answered);
- with token mode on, every call after an episode's first goes as token ids, or
  its record names why not (`fallback`);
- an episode without a fallback assembles into one exact row;
- differential: at temperature 0, a call whose prompt ids are the same in both
  modes gives the agent the same reply (content, tool calls, finish reason,
  logprobs, usage counts), as the record holds it and as the framework itself
  reports it; and at least one call is compared.

`DifferentialTier` holds these checks as tests: a framework's test module
subclasses it (as `Test<Framework>`) and gives `run_mode`, the agent run for one
mode; each check is its own test, so one failing leaves the others' verdicts.

The server's policy is `ToolPolicy`: the embedded random policy, made to call
the first tool a fixed number of times after each user message and then
answer with one number, so every framework's agent loop runs several turns
with real tool calls and ends by itself.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pytest

from rollout import Episode, Recorder, assemble
from rollout.embedded import EmbeddedServer, Policy
from rollout.embedded.template import (
    END_OF_PROMPT,
    FIM_MIDDLE,
    FIM_PREFIX,
    TOOL_CALL_PREFIX,
    encode_text,
    token_bytes,
)
from rollout.tokenmode import FIRST_CALL

MODES = ("auto", "off")
"""Token mode on, then off: the same agent, the same tasks, in this order."""

TOOL_TURNS = 2
"""Tool calls the policy makes after each user message before it answers."""

FORCE = 50.0
"""Added to the logits of the tokens the script allows: far above the random policy's spread."""

ARG_SCHEMA = {"type": "object", "properties": {"arg": {"type": "string"}}, "required": ["arg"]}
"""The embedded server puts a tool call's text in an `arg` argument of the first tool."""


def bump(arg: str) -> str:
    """The tool the agents call: `arg` plus one (the text back when it is not a number)."""
    try:
        return str(int(arg.strip()) + 1)
    except ValueError:
        return f"not a number: {arg!r}"


class ToolPolicy(Policy):
    """The seeded random policy, scripted into a tool-using agent's replies.

    After each user message it replies `CALL <number>` (a tool call, which the
    server turns into `tool_calls`) `tool_turns` times, one per tool result,
    and then `<number>`. Which number is the random policy's greedy (or
    sampled) choice; only the shape is forced, by adding `FORCE` to the logits
    of the allowed tokens, so logprobs stay the policy's own.
    """

    def __init__(self, tool_turns: int = TOOL_TURNS, seed: int = 0) -> None:
        super().__init__(seed=seed)
        self.tool_turns = tool_turns
        enc = encode_text
        self._call = self._column(enc(TOOL_CALL_PREFIX))
        self._space = self._column(enc(" "))
        self._numbers = np.asarray(
            [i for i, t in enumerate(self.vocab_ids.tolist()) if _is_number(t)], dtype=np.int64
        )
        self._end = self._column([self.end_id])
        self._user = enc("user")
        self._tool = enc("tool")

    def _column(self, ids: list[int]) -> int:
        assert len(ids) == 1, ids
        index = self.vocab_index(ids[0])
        assert index is not None, ids
        return index

    def copy(self) -> ToolPolicy:
        """The server's snapshot keeps the script (Policy.copy would return a plain Policy)."""
        other = ToolPolicy.__new__(ToolPolicy)
        other.__dict__.update(self.__dict__)
        other.W = self.W.copy()
        other.b = self.b.copy()
        return other

    def logits(self, context_ids: Sequence[int]) -> np.ndarray:
        out = super().logits(context_ids).copy()
        ids = [int(t) for t in context_ids]
        starts = [i for i, t in enumerate(ids) if t == FIM_PREFIX]
        if not starts:
            return out
        reply = ids[_header_end(ids, starts[-1]) + 1 :]
        roles = [ids[s + 1 : _role_end(ids, s)] for s in starts]
        after_user = roles[max((i for i, r in enumerate(roles) if r == self._user), default=-1) + 1 :]
        tools_done = sum(1 for r in after_user if r == self._tool)
        allowed: list[int] | np.ndarray
        if not reply:
            allowed = [self._call] if tools_done < self.tool_turns else self._numbers
        elif reply[0] == self.vocab_ids[self._call] and len(reply) == 1:
            allowed = [self._space]
        elif reply[0] == self.vocab_ids[self._call] and len(reply) == 2:
            allowed = self._numbers
        else:
            allowed = [self._end]
        out[allowed] += FORCE
        return out


def _is_number(token_id: int) -> bool:
    return token_bytes(token_id).decode("utf-8", "replace").isdigit()


def _role_end(ids: list[int], start: int) -> int:
    for j in range(start + 1, len(ids)):
        if ids[j] in (FIM_MIDDLE, END_OF_PROMPT):
            return j
    return len(ids)


def _header_end(ids: list[int], start: int) -> int:
    for j in range(start + 1, len(ids)):
        if ids[j] == FIM_MIDDLE:
            return j
    return len(ids)


@contextmanager
def tool_server(tool_turns: int = TOOL_TURNS) -> Iterator[EmbeddedServer]:
    """The embedded server (seed 0) serving `ToolPolicy`."""
    with EmbeddedServer(ToolPolicy(tool_turns)) as srv:
        yield srv


def recorder(mode: str) -> Recorder:
    """The recorder every framework test uses: exact ids, logprobs, token mode `mode`."""
    return Recorder(request_token_ids=True, request_logprobs=True, token_mode=mode)  # type: ignore[arg-type]


@dataclass
class Run:
    """One mode's episodes, and per episode what the framework handed its agent per call."""

    mode: str
    episodes: list[Episode] = field(default_factory=list)
    seen: list[list[dict[str, Any]]] = field(default_factory=list)


def reply_view(call: Any) -> dict[str, Any]:
    """What the record says the agent got back: message, finish reason, logprobs, usage."""
    choices = []
    for c in call.choices:
        message = c.message or {}
        choices.append({
            "content": message.get("content") or None,
            "tool_calls": [
                (t.get("function", {}).get("name"), _args(t.get("function", {}).get("arguments")))
                for t in message.get("tool_calls") or []
            ],
            "finish_reason": c.finish_reason,
            "ids": c.ids.tolist(),
            "logprobs": None if c.logprobs is None else c.logprobs.tolist(),
        })  # fmt: skip
    usage = call.usage or {}
    return {
        "choices": choices,
        "usage": (usage.get("prompt_tokens"), usage.get("completion_tokens")),
    }


def _args(arguments: Any) -> Any:
    """Tool-call arguments as data (frameworks and modes may space the JSON differently)."""
    if isinstance(arguments, str):
        try:
            return json.loads(arguments)
        except ValueError:
            return arguments
    return arguments


def sent_as_tokens(run: Run) -> dict[str, int]:
    """Token mode on: every call after an episode's first goes as tokens or names its fallback."""
    assert run.mode == "auto"
    figures = {"episodes": len(run.episodes), "calls": 0, "tokens": 0, "fallbacks": 0}
    for ep in run.episodes:
        assert ep.calls, f"episode {ep.task_id}/{ep.sample}: no call was recorded"
        first, *later = ep.calls
        assert (first.sent_as, first.fallback) == ("messages", FIRST_CALL), _describe(first)
        for call in later:
            if call.sent_as != "tokens":
                assert call.sent_as == "messages" and call.fallback, _describe(call)
                figures["fallbacks"] += 1
        figures["calls"] += len(ep.calls)
        figures["tokens"] += sum(1 for c in ep.calls if c.sent_as == "tokens")
    return figures


def one_row_each(run: Run) -> dict[str, int]:
    """Token mode on: an episode whose calls name no fallback (after the first) is one exact row."""
    assert run.mode == "auto"
    figures = {"episodes": len(run.episodes), "without_fallback": 0, "rows": 0}
    for ep in run.episodes:
        assert ep.calls, f"episode {ep.task_id}/{ep.sample}: no call was recorded"
        result = assemble([ep], mode="concat")
        figures["rows"] += len(result)
        if any(c.fallback for c in ep.calls[1:]):
            continue
        figures["without_fallback"] += 1
        assert len(result) == 1, f"{ep.task_id}: {len(result)} rows, no fallback: {_calls(ep)}"
        assert result[0].exact and result.num_drift == 0, _calls(ep)
    assert figures["without_fallback"] > 0, "every episode has a fallback: nothing was checked"
    return figures


def messages_only(run: Run) -> dict[str, int]:
    """Token mode off: every call goes as messages, with the server's exact ids."""
    assert run.mode == "off"
    figures = {"episodes": len(run.episodes), "calls": 0, "rows": 0}
    for ep in run.episodes:
        assert ep.calls, f"episode {ep.task_id}/{ep.sample}: no call was recorded"
        for call in ep.calls:
            assert call.sent_as == "messages" and call.exact, _describe(call)
        figures["calls"] += len(ep.calls)
        figures["rows"] += len(assemble([ep], mode="concat"))
    return figures


def compare(on: Run, off: Run) -> int:
    """Pair calls by position; where prompt ids match, the replies must too. Returns how many."""
    assert len(on.episodes) == len(off.episodes), (len(on.episodes), len(off.episodes))
    compared = 0
    for e, (a, b) in enumerate(zip(on.episodes, off.episodes, strict=True)):
        for run, ep in ((on, a), (off, b)):
            if run.seen:
                assert len(run.seen[e]) == len(ep.calls), (
                    f"{run.mode} episode {e}: the framework reported {len(run.seen[e])} "
                    f"model replies for {len(ep.calls)} recorded calls"
                )
        for i, (x, y) in enumerate(zip(a.calls, b.calls, strict=False)):
            if len(x.prompt_ids) == 0 or not np.array_equal(x.prompt_ids, y.prompt_ids):
                continue
            where = f"episode {e} call {i}"
            assert reply_view(x) == reply_view(y), (
                f"{where}: the records differ:\n on  {reply_view(x)}\n off {reply_view(y)}"
            )
            if on.seen and off.seen:
                assert on.seen[e][i] == off.seen[e][i], (
                    f"{where}: the agent saw different replies:\n on  {on.seen[e][i]}\n"
                    f" off {off.seen[e][i]}"
                )
            compared += 1
    assert compared > 0, "no call had the same prompt ids in both modes: nothing was compared"
    return compared


def _describe(call: Any) -> str:
    return f"call {call.index}: sent_as={call.sent_as!r} fallback={call.fallback!r} exact={call.exact}"


def _calls(ep: Episode) -> str:
    return "; ".join(_describe(c) for c in ep.calls)


class DifferentialTier:
    """The checks above as tests; subclass as `Test<Framework>` and define `run_mode`."""

    calls_per_mode = 12
    """2 episodes x 2 user turns x (2 tool calls + an answer), as every framework's test runs."""

    @staticmethod
    async def run_mode(base_url: str, mode: str) -> Run:
        """Run the framework's agent on every task with token mode `mode`; raise if it fails."""
        raise NotImplementedError

    @pytest.fixture(scope="class")
    @classmethod
    def tools_server(cls) -> Iterator[EmbeddedServer]:
        with tool_server() as srv:
            yield srv

    @pytest.fixture(scope="class")
    @classmethod
    def on(cls, tools_server: EmbeddedServer) -> Run:
        """Token mode on: the framework's run must not crash."""
        return asyncio.run(cls.run_mode(tools_server.base_url, "auto"))

    @pytest.fixture(scope="class")
    @classmethod
    def off(cls, tools_server: EmbeddedServer) -> Run:
        """Token mode off: the framework's run must not crash."""
        return asyncio.run(cls.run_mode(tools_server.base_url, "off"))

    def test_token_mode_off_sends_every_call_as_messages(self, off: Run) -> None:
        figures = messages_only(off)
        print(f"off: {figures}")
        assert figures["calls"] == self.calls_per_mode

    def test_token_mode_on_sends_later_calls_as_tokens_or_names_why_not(self, on: Run) -> None:
        figures = sent_as_tokens(on)
        print(f"on: {figures}")
        assert figures["calls"] == self.calls_per_mode

    def test_token_mode_on_episode_without_fallback_is_one_exact_row(self, on: Run) -> None:
        print(f"on: {one_row_each(on)}")

    def test_same_prompt_ids_give_the_agent_the_same_reply_in_both_modes(
        self, on: Run, off: Run
    ) -> None:
        print(f"compared: {compare(on, off)}")
