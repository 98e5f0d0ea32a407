"""The per-call token log: what one chat-completion call sampled, token by token.

A `CallRecord` holds the exact prompt ids, and per choice the sampled ids, their
logprobs and the policy version that produced each token. Token data lives in
numpy arrays (int32 ids, float32 logprobs, int32 versions stored once per run of
equal values), so a recorded token costs about 8-12 bytes instead of the ~68 a
list of Python ints and floats would.

`TokenSource` says where the ids came from. Only the tokenizer fallback is
inexact: its ids are re-encoded text, not what the server sampled, and every
record built that way says so (`exact == False`). A server that sends
logprobs but no ids (OpenAI) still gets its logprobs and token
count kept (`ChoiceRecord.server_logprobs`); they are paired with a tokenizer's ids
only when those ids spell the server's tokens one for one
(`TokenSource.TOKENIZER_MATCHED`: inexact, but trainable). llama.cpp names each
sampled token's id in its logprobs (`LOGPROB_IDS`) but sends no prompt ids: its
own `/apply-template` + `/tokenize` on the same request give them
(`SERVER_RENDER`: the chat route's own code path, checked against the usage).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from enum import Enum
from typing import Any

import numpy as np

from rollout.errors import TokenRecordError

NO_VERSION = -1
"""Version used for tokens whose policy version is unknown, and for prompt tokens."""


class TokenSource(str, Enum):
    """Where a record's token ids came from, most trustworthy first."""

    VLLM = "vllm"  # top-level prompt_token_ids + choices[i].token_ids
    SGLANG = "sglang"  # per-choice prompt_token_ids + token_ids
    LOGPROB_TOKENS = "logprob_tokens"  # logprobs.content[j].token == "token_id:N"
    LOGPROB_IDS = "logprob_ids"  # llama.cpp: logprobs.content[j].id, one entry per sampled token
    LLAMACPP = "llamacpp"  # llama.cpp's /completion `tokens` (token mode)
    AREAL = "areal"  # client.get_interaction(id): input/output tokens
    TOKEN_IN = "token_in"  # the prompt ids we sent (token mode): exactly what the server saw
    SERVER_RENDER = "server_render"  # the server's own template + tokenizer on the same request
    TOKENIZER_MATCHED = "tokenizer_matched"  # a tokenizer's ids, each checked against the server's token
    TOKENIZER = "tokenizer"  # re-encoded text: NOT the sampled ids
    NONE = "none"  # nothing available

    @property
    def exact(self) -> bool:
        """The ids are the server's own (reported or sent by us)."""
        return self not in (TokenSource.TOKENIZER_MATCHED, TokenSource.TOKENIZER, TokenSource.NONE)

    @property
    def trainable(self) -> bool:
        """The ids are the sampled tokens: exact, or a tokenizer's checked one for one."""
        return self.exact or self is TokenSource.TOKENIZER_MATCHED


_INT32_MAX = int(np.iinfo(np.int32).max)
_INT32_MIN = int(np.iinfo(np.int32).min)


def as_ids(values: Any) -> np.ndarray:
    """Token ids as a contiguous int32 array (the one dtype used everywhere).

    Ids are integers: a float that is not a whole number, a string or a bool where a reply
    should have an id is refused (`TokenRecordError`), never truncated or parsed into one.
    """
    if isinstance(values, np.ndarray) and values.dtype == np.int32 and values.ndim == 1:
        arr = np.ascontiguousarray(values)
        if arr.size and arr.min() < 0:
            raise TokenRecordError("token ids must be non-negative")
        return arr
    try:
        found = np.asarray([] if values is None else values)
    except (OverflowError, ValueError, TypeError) as exc:  # ragged, or not numbers
        raise TokenRecordError(f"token ids must be int32 values: {exc}") from None
    if found.ndim != 1:
        raise TokenRecordError(f"token ids must be one-dimensional, got shape {found.shape}")
    if not found.size:
        return np.zeros(0, np.int32)
    if found.dtype != np.int64:  # a JSON list of ints is int64: anything else is checked first
        found = _as_int64(found)
    if found.view(np.uint64).max() > _INT32_MAX:  # one pass: a negative id reads as a huge one
        low = int(found.min())
        raise TokenRecordError("token ids must be non-negative" if low < 0 else
                               f"token ids must be int32 values: {int(found.max())} is out of range")  # fmt: skip
    return found.astype(np.int32)


def _as_int64(found: np.ndarray) -> np.ndarray:
    """Integer ids of another width, or floats that are whole numbers (7.0), as int64; the
    caller checks their range (here only what int64 itself could not hold)."""
    kind = found.dtype.kind
    whole = kind == "f" and bool(np.isfinite(found).all() and (found == np.trunc(found)).all())
    if kind not in "iu" and not whole:
        raise TokenRecordError(f"token ids must be integers, got {found.dtype} values")
    if kind != "i" and np.abs(found).max() > _INT32_MAX:
        raise TokenRecordError(f"token ids must be int32 values: {found.max()} is out of range")
    return found.astype(np.int64)


def as_logprobs(values: Any) -> np.ndarray:
    """Logprobs as a contiguous float32 array."""
    return np.ascontiguousarray(np.asarray(values if values is not None else [], dtype=np.float32))


def _no_ids() -> np.ndarray:
    return np.zeros(0, np.int32)


class Versions:
    """Per-token policy versions, run-length encoded.

    A completion is almost always produced by one policy version, so storing a
    value per token wastes 4 bytes per token; a constant is kept as one int.
    Runs keep the exact per-token information (AReaL's `output_versions` can
    change mid-generation) at a cost proportional to the number of changes.
    """

    __slots__ = ("_length", "_runs")

    def __init__(self, runs: int | np.ndarray, length: int) -> None:
        self._runs = runs  # an int (constant), or a (2, k) int32 array: starts, values
        self._length = length

    @classmethod
    def constant(cls, version: int, length: int) -> Versions:
        return cls(int(version), length)

    @classmethod
    def from_array(cls, versions: Any) -> Versions:
        if type(versions) is list and versions:  # token mode's per-token list: nearly always one version
            first = versions[0]
            if type(first) is int and _INT32_MIN <= first <= _INT32_MAX and versions.count(first) == len(versions):
                return cls(first, len(versions))
        arr = np.asarray(versions, dtype=np.int32)
        if arr.size == 0:
            return cls(NO_VERSION, 0)
        change = np.flatnonzero(np.diff(arr)) + 1
        if change.size == 0:
            return cls(int(arr[0]), int(arr.size))
        starts = np.concatenate([[0], change]).astype(np.int32)
        return cls(np.stack([starts, arr[starts]]), int(arr.size))

    def __len__(self) -> int:
        return self._length

    def to_array(self) -> np.ndarray:
        if isinstance(self._runs, int):
            return np.full(self._length, self._runs, np.int32)
        starts, values = self._runs
        counts = np.diff(np.append(starts, self._length))
        return np.repeat(values, counts).astype(np.int32)

    def runs(self) -> list[tuple[int, int]]:
        """(value, count) pairs, the form files store."""
        if self._length == 0:
            return []
        if isinstance(self._runs, int):
            return [(self._runs, self._length)]
        starts, values = self._runs
        counts = np.diff(np.append(starts, self._length))
        return [(int(v), int(c)) for v, c in zip(values, counts, strict=True)]

    @property
    def nbytes(self) -> int:
        return 0 if isinstance(self._runs, int) else int(self._runs.nbytes)

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Versions) and np.array_equal(self.to_array(), other.to_array())

    def __repr__(self) -> str:
        return f"Versions({self.to_array().tolist()!r})"


@dataclass(slots=True, eq=False)
class ChoiceRecord:
    """One sampled completion (one element of `choices`) with its token data.

    Lists, arrays of any dtype and per-token version lists are converted here,
    once; values that already have their final type pass through in O(1)
    numpy calls, so the recorder's hot path builds these with plain calls.
    """

    index: int = 0
    ids: np.ndarray = field(default_factory=_no_ids)
    logprobs: np.ndarray | None = None  # float32, len == len(ids); None if the server sent none
    versions: Versions = field(default_factory=lambda: Versions.constant(NO_VERSION, 0))
    finish_reason: str | None = None
    message: dict[str, Any] = field(default_factory=dict)  # the reply: role, content, tool_calls
    source: TokenSource = TokenSource.NONE
    # When `ids` are not the server's (it sent none): its per-token logprobs, kept but not
    # paired with `ids` (`logprobs` is then None), and how many tokens it sampled.
    server_logprobs: np.ndarray | None = None
    server_tokens: int | None = None
    mismatch: str | None = None  # why a tokenizer's ids were not paired with the server's tokens

    def __post_init__(self) -> None:
        self.ids = as_ids(self.ids)
        if self.logprobs is not None:
            self.logprobs = as_logprobs(self.logprobs)
        if self.server_logprobs is not None:
            self.server_logprobs = as_logprobs(self.server_logprobs)
            if self.server_tokens is None:
                self.server_tokens = len(self.server_logprobs)
            elif self.server_tokens != len(self.server_logprobs):
                raise TokenRecordError(
                    f"choice {self.index}: {len(self.server_logprobs)} server logprobs "
                    f"for {self.server_tokens} server tokens"
                )
        if not isinstance(self.versions, Versions):
            self.versions = Versions.from_array(self.versions)
        if not isinstance(self.source, TokenSource):
            self.source = TokenSource(self.source)
        n = len(self.ids)
        if self.logprobs is not None and len(self.logprobs) != n:
            raise TokenRecordError(
                f"choice {self.index}: {len(self.logprobs)} logprobs for {n} token ids"
            )
        if len(self.versions) != n:
            raise TokenRecordError(f"choice {self.index}: {len(self.versions)} versions for {n} token ids")

    @property
    def exact(self) -> bool:
        return self.source.exact

    @property
    def trainable(self) -> bool:
        """`ids` are the sampled tokens (loss mask 1): exact, or checked against the server's."""
        return self.source.trainable

    @property
    def num_sampled(self) -> int:
        """Tokens the server sampled: its count where `ids` are not its own, else len(ids)."""
        return len(self.ids) if self.server_tokens is None else self.server_tokens

    @property
    def nbytes(self) -> int:
        lp = 0 if self.logprobs is None else self.logprobs.nbytes
        server = 0 if self.server_logprobs is None else self.server_logprobs.nbytes
        return int(self.ids.nbytes + lp + server + self.versions.nbytes)


@dataclass(slots=True, eq=False)
class CallRecord:
    """Everything one chat-completion call put on the wire and got back.

    `request` holds the messages, tools and sampling params exactly as sent
    (never credentials). `parent` is the index, within the episode, of the call
    whose messages + reply this call's messages extend (AReaL's interaction
    tree); assembly and tree-aware discounting use it.
    """

    id: str = ""
    index: int = 0
    endpoint: str = "chat.completions"
    prompt_ids: np.ndarray = field(default_factory=_no_ids)
    prompt_source: TokenSource = TokenSource.NONE
    choices: list[ChoiceRecord] = field(default_factory=list)
    request: dict[str, Any] = field(default_factory=dict)
    usage: dict[str, Any] | None = None
    latency_s: float = 0.0
    started_at: float = 0.0
    reward: float | None = None
    parent: int | None = None
    notes: list[str] = field(default_factory=list)  # why a record is inexact, drift found, ...
    sent_as: str = "messages"  # "messages", or "tokens" (token mode: parent ids + bridge)
    fallback: str | None = None  # why token mode could not be used for this call, if it was on

    def __post_init__(self) -> None:
        self.prompt_ids = as_ids(self.prompt_ids)
        if not isinstance(self.prompt_source, TokenSource):
            self.prompt_source = TokenSource(self.prompt_source)
        for c in self.choices:
            if not isinstance(c, ChoiceRecord):
                raise TypeError(f"CallRecord.choices holds ChoiceRecord objects, got {type(c).__name__}")

    @property
    def exact(self) -> bool:
        return self.prompt_source.exact and all(c.exact for c in self.choices)

    @property
    def num_tokens(self) -> int:
        return int(len(self.prompt_ids) + sum(len(c.ids) for c in self.choices))

    @property
    def nbytes(self) -> int:
        return int(self.prompt_ids.nbytes + sum(c.nbytes for c in self.choices))
