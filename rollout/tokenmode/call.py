"""Sending one stitched turn, and what comes back: the record's choices and the agent's reply.

The recorder decides nothing here: it asks `plan_turn` whether a call can
go as tokens, hands the `StitchedTurn` to a `TokenCall`, and records what
`deliver` returns. A token route that fails (down, overloaded, refusing, a
malformed reply) makes the call go as messages after all, with the reason:
the SDK then raises its own typed error if the server is really failing,
as the agent expects.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from rollout.call_record import (
    NO_VERSION,
    ChoiceRecord,
    TokenRecordError,
    Versions,
    as_ids,
    as_logprobs,
)
from rollout.reply_ids import message_dict
from rollout.tokenmode.plan import Generation, adrive, drive
from rollout.tokenmode.reply import (
    AsyncReplayStream,
    ReplayStream,
    chat_completion,
    chunks,
    sdk_object,
)
from rollout.tokenmode.stitch import StitchedTurn, Unavailable
from rollout.tokenmode.transport import HttpError

FALLBACK_ERRORS = (Unavailable, HttpError, ValueError, RecursionError)
"""What sends a token-mode call as messages instead (ValueError: a malformed token-route reply,
`MalformedReply`; RecursionError: JSON nested too deeply to decode)."""


class TokenCall:
    """One call on its way as token ids."""

    __slots__ = ("asked_logprobs", "fallback", "kwargs", "notes", "turn", "views")

    def __init__(self, turn: StitchedTurn, kwargs: dict[str, Any], *, asked_logprobs: bool) -> None:
        self.turn = turn
        self.kwargs = kwargs
        self.asked_logprobs = asked_logprobs
        self.fallback: str | None = None  # why it went as messages after all
        self.notes: list[str] = []  # for the record: what was odd about the reply
        self.views: dict[int, list[Any]] = {}  # choice index -> logprobs.content the agent gets

    def send(self) -> Generation | None:
        """The generation, or None when the call must go as messages (`fallback` says why)."""
        try:
            gen, self.views = drive(self.turn.plan(), self.turn.server.http)
        except FALLBACK_ERRORS as exc:
            self._fall_back(exc)
            return None
        return gen

    async def asend(self) -> Generation | None:
        """The async twin of `send`."""
        try:
            gen, self.views = await adrive(self.turn.plan(), self.turn.server.http)
        except FALLBACK_ERRORS as exc:
            self._fall_back(exc)
            return None
        return gen

    def _fall_back(self, exc: Exception) -> None:
        if isinstance(exc, Unavailable):
            self.fallback = str(exc)
        elif isinstance(exc, RecursionError):
            self.fallback = "token route failed: reply JSON nested too deeply"
        else:
            self.fallback = f"token route failed: {exc}"

    def deliver(
        self, gen: Generation, policy_version: int | None, *, strict: bool = False
    ) -> tuple[list[ChoiceRecord], dict[str, Any]]:
        """The record's choices and the reply (ChatCompletion as a dict) for `gen`;
        what was odd about it goes to `notes` (`strict`: raises `TokenRecordError`)."""
        dialect = self.turn.server.dialect
        assert dialect is not None  # a turn ran, so the server was probed
        reply = chat_completion(gen, str(self.kwargs.get("model") or ""),
                                logprobs=self.views if self.asked_logprobs else None)  # fmt: skip
        version = gen.weight_version if gen.weight_version is not None else policy_version
        choices = []
        for c, wire in zip(gen.choices, reply["choices"], strict=True):
            n = len(c.token_ids)
            if wire["finish_reason"] != c.finish_reason:
                self.notes.append(f"choice {c.index}: finish_reason {c.finish_reason!r} is not one a chat "
                                  f"endpoint sends; the agent got {wire['finish_reason']!r}")  # fmt: skip
            versions = (
                Versions.from_array(c.versions)
                if c.versions is not None
                else Versions.constant(NO_VERSION if version is None else version, n)
            )
            logprobs = None if c.logprobs is None else as_logprobs(c.logprobs)
            if logprobs is not None and np.isnan(logprobs).any():  # never pass NaN off as a logprob
                msg = (f"choice {c.index}: {int(np.isnan(logprobs).sum())} of {n} logprobs are null or NaN; "
                       "logprobs dropped")  # fmt: skip
                if strict:
                    raise TokenRecordError(msg)
                self.notes.append(msg)
                logprobs = None
            choices.append(
                ChoiceRecord(
                    index=c.index,
                    ids=as_ids(c.token_ids),
                    logprobs=logprobs,
                    versions=versions,
                    finish_reason=c.finish_reason,
                    message=message_dict(wire["message"]),
                    source=dialect.source,
                )
            )
        return choices, reply

    def agent_reply(self, reply: dict[str, Any], *, is_async: bool) -> Any:
        """What the agent's call returns: a `ChatCompletion`, or a replayed stream of it."""
        if self.kwargs.get("stream"):
            options = self.kwargs.get("stream_options") or {}
            items = chunks(reply, include_usage=bool(options.get("include_usage")))
            return AsyncReplayStream(items) if is_async else ReplayStream(items)
        from openai.types.chat import ChatCompletion

        return sdk_object(ChatCompletion, reply)
