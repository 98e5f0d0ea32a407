"""Assembly: turning an episode's calls into training samples (token rows).

A `Sample` is one row a trainer consumes: the token sequence, a loss mask that
is 1 exactly on sampled tokens (not on ids a tokenizer re-encoded without
checking them against the server's tokens), and per-token behaviour logprobs and policy
versions. `assemble` builds samples in two modes:

- ``individual``: one sample per (call, choice): prompt + completion.
- ``concat``: multi-turn calls are merged into one sample when, and only when,
  a call's prompt ids start exactly with an existing sample's full token
  sequence; the tokens in between are observations (mask 0). This is the
  exact-token version of AReaL's "concat" export (which merged on message
  prefixes and silently reused masks when tokens drifted, AReaL issue 1551).

A call that names a `parent` but does not extend any sample token-exactly is
*drift* (retokenization or a re-applied chat template changed the history):
it starts a new sample and is reported with the first differing position, so
it never corrupts a merged row.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import Literal

import numpy as np

from rollout.call_record import NO_VERSION, CallRecord, ChoiceRecord, TokenSource
from rollout.episode import Episode, EpisodeStatus

AssemblyMode = Literal["concat", "individual"]

FAILED_STATUSES = frozenset({EpisodeStatus.ERROR, EpisodeStatus.TIMEOUT})
"""Episodes in these states are skipped unless `include_failed=True`."""


@dataclass(slots=True, eq=False)
class Sample:
    """One training row: tokens plus per-token mask, logprobs and versions.

    Arrays are numpy (int32 ids, bool mask, float32 logprobs, int32 versions)
    so packing many samples into a batch is a handful of vector copies. Lists
    or other dtypes are converted on construction; arrays that already have
    the right dtype are kept as they are.
    """

    tokens: np.ndarray
    loss_mask: np.ndarray
    logprobs: np.ndarray
    versions: np.ndarray
    prompt_len: int
    reward: float = 0.0
    episode_id: str = ""
    task_id: str = ""
    sample: int = 0
    calls: list[tuple[int, int]] = field(default_factory=list)
    exact: bool = True
    has_logprobs: bool = True

    def __post_init__(self) -> None:
        self.tokens = np.ascontiguousarray(np.asarray(self.tokens, dtype=np.int32))
        self.versions = np.ascontiguousarray(np.asarray(self.versions, dtype=np.int32))
        self.loss_mask = np.ascontiguousarray(np.asarray(self.loss_mask).astype(bool, copy=False))
        self.logprobs = np.ascontiguousarray(np.asarray(self.logprobs, dtype=np.float32))
        n = len(self.tokens)
        for name in ("loss_mask", "logprobs", "versions"):
            if len(getattr(self, name)) != n:
                raise ValueError(
                    f"sample {name} has {len(getattr(self, name))} entries for {n} tokens"
                )
        if not 0 <= self.prompt_len <= n:
            raise ValueError(f"prompt_len {self.prompt_len} outside [0, {n}]")

    def __len__(self) -> int:
        return len(self.tokens)

    @property
    def num_sampled(self) -> int:
        return int(np.count_nonzero(self.loss_mask))

    @property
    def uid(self) -> str:
        """rLLM-style `task_id:sample` key of the episode this row came from."""
        return f"{self.task_id}:{self.sample}"


@dataclass(frozen=True, slots=True)
class Drift:
    """A call whose prompt does not token-extend its parent's prompt + reply.

    `position` is the first index where `call`'s prompt differs from the
    parent's prompt + completion ids of parent choice `choice` (the choice
    sharing the longest prefix); `got` is None when the prompt is shorter.
    """

    episode_id: str
    call: int
    choice: int
    parent: int
    position: int
    expected: int
    got: int | None


@dataclass
class AssemblyResult:
    """Samples plus what assembly noticed; iterating it yields the samples."""

    samples: list[Sample] = field(default_factory=list)
    drift: list[Drift] = field(default_factory=list)
    num_merged: int = 0  # calls whose first choice continued an existing row
    skipped_episodes: list[str] = field(default_factory=list)  # failed, not included

    @property
    def num_drift(self) -> int:
        return len(self.drift)

    def __iter__(self) -> Iterator[Sample]:
        return iter(self.samples)

    def __len__(self) -> int:
        return len(self.samples)

    def __getitem__(self, i: int) -> Sample:
        return self.samples[i]


@dataclass
class _Branch:
    """A sample under construction; `full` is every token so far."""

    full: np.ndarray
    prompt_len: int
    segments: list[tuple[int, ChoiceRecord]]  # (start position, sampled choice)
    calls: list[tuple[int, int]]
    last_call: CallRecord
    exact: bool


def _branch_extend(base: _Branch | None, pos: int, call: CallRecord, choice: ChoiceRecord) -> _Branch:
    prompt = call.prompt_ids
    full = np.concatenate([prompt, choice.ids]) if len(choice.ids) else prompt
    exact = call.prompt_source.exact and choice.exact
    if base is None:
        return _Branch(
            full, len(prompt), [(len(prompt), choice)], [(pos, choice.index)], call, exact
        )
    return _Branch(
        full,
        base.prompt_len,
        [*base.segments, (len(prompt), choice)],
        [*base.calls, (pos, choice.index)],
        call,
        base.exact and exact,
    )


def _extends(prompt: np.ndarray, seq: np.ndarray) -> bool:
    n = len(seq)
    return 0 < n <= len(prompt) and bool(np.array_equal(prompt[:n], seq))


def _finish(branch: _Branch, episode: Episode) -> Sample:
    n = len(branch.full)
    mask = np.zeros(n, dtype=bool)
    logprobs = np.zeros(n, dtype=np.float32)
    versions = np.full(n, NO_VERSION, dtype=np.int32)
    has_logprobs = True
    for start, choice in branch.segments:
        end = start + len(choice.ids)
        # Ids a tokenizer re-encoded, unchecked against the server's tokens, are context only.
        mask[start:end] = choice.source is not TokenSource.TOKENIZER
        versions[start:end] = choice.versions.to_array()
        if choice.logprobs is None:
            has_logprobs = has_logprobs and len(choice.ids) == 0
        else:
            logprobs[start:end] = choice.logprobs
    reward = branch.last_call.reward
    if reward is None:
        reward = episode.reward if episode.reward is not None else 0.0
    return Sample(
        tokens=branch.full,
        loss_mask=mask,
        logprobs=logprobs,
        versions=versions,
        prompt_len=branch.prompt_len,
        reward=float(reward),
        episode_id=episode.id,
        task_id=episode.task_id,
        sample=episode.sample,
        calls=branch.calls,
        exact=branch.exact,
        has_logprobs=has_logprobs,
    )


def _first_difference(a: np.ndarray, b: np.ndarray) -> int:
    """Index of the first position where a and b differ (min length if one is a prefix)."""
    n = min(len(a), len(b))
    diff = np.flatnonzero(a[:n] != b[:n])
    return int(diff[0]) if diff.size else n


def _drift(episode: Episode, call: CallRecord, pos: int) -> Drift | None:
    """Drift report for call `pos` against its parent, or None if it is not drift."""
    parent_idx = call.parent
    if parent_idx is None or not 0 <= parent_idx < pos:
        return None
    parent = episode.calls[parent_idx]
    best: tuple[int, int, np.ndarray] | None = None
    for choice in parent.choices or [ChoiceRecord()]:
        seq = np.concatenate([parent.prompt_ids, choice.ids])
        at = _first_difference(call.prompt_ids, seq)
        if best is None or at > best[0]:
            best = (at, choice.index, seq)
    assert best is not None
    at, choice_index, seq = best
    if at >= len(seq):
        return None  # the prompt does extend the parent; nothing sampled to merge into
    got = int(call.prompt_ids[at]) if at < len(call.prompt_ids) else None
    return Drift(
        episode_id=episode.id,
        call=pos,
        choice=choice_index,
        parent=parent_idx,
        position=at,
        expected=int(seq[at]),
        got=got,
    )


def _concat(episode: Episode, result: AssemblyResult) -> None:
    # Every branch state is kept (a tree, like AReaL's interaction tree); the
    # leaves, i.e. branches nothing extended, become samples. A call merges only
    # into a leaf: merging into a branch another call already extended would put
    # that branch's sampled tokens, with loss_mask 1, into two rows. Such a call
    # starts a row of its own, the shared tokens its prompt (as rLLM does,
    # rllm-org/rllm@9beb6e0 rllm/trainer/verl/transform.py:394-398).
    branches: list[_Branch] = []
    extended: list[bool] = []
    for pos, call in enumerate(episode.calls):
        if not call.choices:
            continue
        base_idx: int | None = None
        for i in range(len(branches) - 1, -1, -1):  # most recent first
            if not extended[i] and _extends(call.prompt_ids, branches[i].full):
                base_idx = i
                break
        if base_idx is None:
            report = _drift(episode, call, pos)
            if report is not None:
                result.drift.append(report)
            base = None
        else:
            base = branches[base_idx]
            extended[base_idx] = True
            result.num_merged += 1
        for choice in call.choices:
            branches.append(_branch_extend(base, pos, call, choice))
            extended.append(False)
            base = None  # n > 1: the other choices start rows of their own, base as prompt
    result.samples.extend(
        _finish(b, episode) for b, ext in zip(branches, extended, strict=True) if not ext
    )


def _individual(episode: Episode, result: AssemblyResult) -> None:
    for pos, call in enumerate(episode.calls):
        for choice in call.choices:
            result.samples.append(_finish(_branch_extend(None, pos, call, choice), episode))


def assemble(
    episodes: Episode | Iterable[Episode],
    mode: AssemblyMode = "concat",
    *,
    include_failed: bool = False,
) -> AssemblyResult:
    """Build training samples from episodes.

    Failed episodes (status error/timeout) are skipped, and listed in
    `result.skipped_episodes`, unless `include_failed=True`: a crashed run's
    partial trajectory usually should not be trained on.
    """
    if mode not in ("concat", "individual"):
        raise ValueError(f"unknown assembly mode {mode!r}; use 'concat' or 'individual'")
    eps: Sequence[Episode] = [episodes] if isinstance(episodes, Episode) else list(episodes)
    result = AssemblyResult()
    build = _concat if mode == "concat" else _individual
    for ep in eps:
        if ep.status in FAILED_STATUSES and not include_failed:
            result.skipped_episodes.append(ep.id)
            continue
        build(ep, result)
    return result


def as_samples(
    data: AssemblyResult | Iterable[Sample] | Iterable[Episode] | Episode,
) -> list[Sample]:
    """Samples from samples, an `AssemblyResult`, or episodes (assembled in concat mode)."""
    if isinstance(data, AssemblyResult):
        return data.samples
    if isinstance(data, Episode):
        return assemble(data).samples
    items = list(data)
    if items and all(isinstance(x, Episode) for x in items):
        return assemble(items).samples  # type: ignore[arg-type]
    for x in items:
        if not isinstance(x, Sample):
            raise TypeError(f"expected Sample or Episode items, got {type(x).__name__}")
    return items  # type: ignore[return-value]
