"""Token-by-token generation for the server: stop strings, streaming holdback.

The HTTP layer drives :class:`Generation` one step at a time (so it can sleep
for artificial latency and flush SSE chunks between steps); all choices of a
request advance in lockstep, like one batched decode step of a real server.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field

import numpy as np

from .policy import Distribution
from .policy_api import ServedPolicy
from .protocol import SamplingRequest
from .template import TOOL_CALL_PREFIX, parse_tool_call, token_bytes

YIELD_EVERY_S = 0.002
"""Longest a generation runs before letting other requests (and /health) in."""


@dataclass
class ChoiceState:
    """Progress of one choice; ``text`` is the visible (stop-trimmed) text."""

    index: int
    prompt: list[int]
    context: list[int]
    rng: np.random.Generator | None
    """None for a choice rebuilt from a reply (derender), which samples nothing."""
    token_ids: list[int] = field(default_factory=list)
    logprobs: list[float] = field(default_factory=list)
    dists: list[Distribution] = field(default_factory=list)
    raw: bytes = b""
    text: str = ""
    emitted: int = 0
    finish_reason: str | None = None
    stop_reason: int | str | None = None
    """What stopped it, as vLLM reports it: the stop token id or stop string; None for EOS."""
    tool_arg: str | None = None


@dataclass(frozen=True)
class Piece:
    """A run of one choice's tokens, ``choice.token_ids[start:]``, and the text it releases.

    Streaming sends one piece per step (the newest token and its releasable
    text); a whole reply is one piece per choice from ``start=0`` with the
    full visible text. The payload builders take either.
    """

    choice: ChoiceState
    start: int
    text: str


def choice_rng(seed: int, index: int) -> np.random.Generator:
    """Per-choice stream: same seed + same choice index -> same tokens."""
    return np.random.default_rng([seed & 0xFFFFFFFFFFFFFFFF, index])


class Generation:
    """All choices of one request, advanced together by :meth:`step`."""

    def __init__(
        self,
        policy: ServedPolicy,
        prompt_ids: Sequence[int],
        params: SamplingRequest,
        max_tokens: int,
        seed: int,
        tool_mode: bool = False,
        first_index: int = 0,
    ) -> None:
        self.policy = policy
        self.params = params
        self.max_tokens = max_tokens
        self.tool_mode = tool_mode
        prompt = list(prompt_ids)
        self.choices = [
            ChoiceState(first_index + i, prompt, list(prompt), choice_rng(seed, i))
            for i in range(params.n)
        ]
        self._max_stop = max((len(s) for s in params.stop), default=0)
        self._active = params.n

    @property
    def done(self) -> bool:
        return self._active == 0

    def step(self) -> list[Piece]:
        """Sample one token for every unfinished choice; the pieces to stream (none if not)."""
        p = self.params
        out: list[Piece] = []
        for c in self.choices:
            if c.finish_reason is not None:
                continue
            assert c.rng is not None
            tok, lp, dist = self.policy.sample_next(c.context, c.rng, p.temperature, p.top_p)
            c.context.append(tok)
            c.token_ids.append(tok)
            c.logprobs.append(lp)
            if p.logprobs:
                c.dists.append(dist)
            # As vLLM: EOS stops unless ignored, then a stop token (its text left out).
            if tok == self.policy.end_id and not p.ignore_eos:
                c.finish_reason = "stop"
            elif tok in p.stop_token_ids:
                c.finish_reason, c.stop_reason = "stop", tok
            elif tok != self.policy.end_id or not p.skip_special_tokens:
                self._extend_text(c, tok)
            if c.finish_reason is None and len(c.token_ids) >= self.max_tokens:
                c.finish_reason = "length"
            if c.finish_reason is not None:
                self._active -= 1
                if self.tool_mode:
                    c.tool_arg = parse_tool_call(c.text)
                    if c.tool_arg is not None:
                        c.finish_reason = "tool_calls"
            if p.stream:
                out.append(Piece(c, len(c.token_ids) - 1, self._release(c)))
        return out

    def _extend_text(self, c: ChoiceState, tok: int) -> None:
        before = len(c.text)
        piece = token_bytes(tok)
        if piece.isascii():  # ASCII never continues a UTF-8 sequence: earlier text stays as is
            c.text += piece.decode("ascii")
        else:  # a multi-byte character may span tokens: decode the whole reply again
            c.text = (c.raw + piece).decode("utf-8", errors="replace")
        c.raw += piece
        if not self.params.stop:
            return
        start = max(0, before - self._max_stop + 1)
        hits = [(i, s) for s in self.params.stop if (i := c.text.find(s, start)) >= 0]
        if hits:
            at, stop = min(hits)
            c.text = c.text[:at]
            c.finish_reason, c.stop_reason = "stop", stop

    def _release(self, c: ChoiceState) -> str:
        """Text safe to stream now: never a possible stop or tool-call prefix."""
        end = len(c.text)
        if c.finish_reason is None:
            if self.tool_mode and (
                c.text.startswith(TOOL_CALL_PREFIX) or TOOL_CALL_PREFIX.startswith(c.text)
            ):
                return ""
            for s in self.params.stop:
                for k in range(min(len(s) - 1, end), 0, -1):
                    if c.text.endswith(s[:k]):
                        end = min(end, len(c.text) - k)
                        break
        elif c.tool_arg is not None:
            return ""
        delta = c.text[c.emitted : end]
        c.emitted = max(c.emitted, end)
        return delta


async def drive(
    gen: Generation,
    latency_s: float,
    latency_per_token_s: float,
    on_step: Callable[[list[Piece]], Awaitable[bool]] | None = None,
) -> None:
    """Run a generation on the event loop, with artificial latency.

    Without per-token latency it still yields every couple of milliseconds,
    so concurrent requests interleave and none stalls the loop. ``on_step``
    gets each step's pieces; it returns False to stop (the client is gone).
    """
    if latency_s > 0:
        await asyncio.sleep(latency_s)
    clock = time.perf_counter
    next_yield = clock() + YIELD_EVERY_S
    while not gen.done:
        pieces = gen.step()
        if latency_per_token_s > 0:
            await asyncio.sleep(latency_per_token_s)
        elif clock() >= next_yield:
            await asyncio.sleep(0)
            next_yield = clock() + YIELD_EVERY_S
        if on_step is not None and not await on_step(pieces):
            return
